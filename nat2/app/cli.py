"""The `nat2` command: `nat2 <command> CONFIG [--set key=value ...]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from postprocess import ExportError, FinetuneError
from supernets import ArchitectureError, CheckpointError, DatasetError
from supernets.phases import PhaseError
from supernets.train import TrainingError

from ..search import ArchiveError
from ..space import EncodingError
from . import pipeline
from .config import METHODS, STRATEGIES, Config, ConfigError, load_config
from .rundir import RunDir, RunDirError
from .stages import evaluate, export, finetune, sample, search, select, train_supernet

USER_ERRORS = (ArchiveError, ConfigError, DatasetError, ArchitectureError, EncodingError, PhaseError, CheckpointError,
               TrainingError, select.SelectionError, RunDirError, FinetuneError, ExportError)

Command = Callable[[Config, RunDir, argparse.Namespace], None]
COMMANDS: dict[str, tuple[Command, str]] = {
    "sample": (lambda c, r, a: sample.run(c), "sample subnets from fresh supernets and print their costs"),
    "train-supernet": (lambda c, r, a: train_supernet.run(c, r, a.resume),
                       "train the supernets (EPS or the NAT2 warm-up); resumable"),
    "search": (lambda c, r, a: search.run(c, r, a.resume, a.strategy, a.wp),
               "run the NAT2 search (or a training-free RB-IFA / PF-IFA search); resumable"),
    "select": (lambda c, r, a: select.run(c, r),
               "choose the subnets to fine-tune: knee points, the front, or RB-IFA for a weight wp"),
    "finetune": (lambda c, r, a: finetune.run(c, r, a.resume),
                 "two-step fine-tuning of the selected subnets; resumable"),
    "export": (lambda c, r, a: export.run(c, r, a.subnet),
               "write each fine-tuned subnet as a standalone export (architecture, weights, .pt2, ONNX, metadata)"),
    "evaluate": (lambda c, r, a: evaluate.run(c, r, a.subnet, a.split, a.format),
                 "score an exported subnet on a split of the dataset"),
    "run": (lambda c, r, a: pipeline.run(c, r), "the whole pipeline: train-supernet, search, select, finetune, export"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nat2", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config", metavar="CONFIG_OR_RUN_DIR",
                         help="YAML config (see configs/), or a run directory (its config.yaml is used)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set search.iterations=10")
        if name in ("train-supernet", "search", "finetune"):
            sub.add_argument("--resume", action="store_true",
                             help="continue the stage from what the run directory holds")
        if name == "search":
            sub.add_argument("--strategy", choices=STRATEGIES, default="nat2",
                             help="nat2 (default), or a training-free rbifa / pfifa search")
            sub.add_argument("--wp", type=float, nargs="+", metavar="WP",
                             help="RB-IFA performance weights in [0, 1] (a list gives a pseudo-Pareto front)")
        if name in ("select", "run"):
            sub.add_argument("--method", choices=METHODS, help="selection method (config select.method)")
            sub.add_argument("--wp", type=float, help="RB-IFA performance weight in [0, 1] (config select.wp)")
            sub.add_argument("--n", type=int, help="how many subnets RB-IFA selects (config select.n)")
        if name == "export":
            sub.add_argument("--subnet", action="append", metavar="NAME", help="export only these (repeatable)")
        if name == "evaluate":
            sub.add_argument("--subnet", required=True, metavar="NAME_OR_FOLDER",
                             help="the name of an export of the run directory, or an export folder")
            sub.add_argument("--split", choices=evaluate.SPLITS, default="val")
            sub.add_argument("--format", choices=evaluate.FORMATS, default="torch")
    return parser


def _load(args: argparse.Namespace) -> tuple[Config, RunDir]:
    """The config of `args.config` and its run directory: a YAML file (run.dir, or runs/<file
    name>), or a run directory and its config.yaml; `--method/--wp/--n` of select and run are
    select.* overrides."""
    overrides = list(args.set)
    if args.command in ("select", "run"):
        overrides += [f"select.{k}={getattr(args, k)}" for k in ("method", "wp", "n") if getattr(args, k) is not None]
    target = Path(args.config)
    if target.is_dir():
        run_dir = RunDir(target)
        if not run_dir.config_file.is_file():
            raise ConfigError(f"{target} is a directory without config.yaml; expected a YAML config or a run "
                              "directory written by nat2")
        return load_config(run_dir.config_file, overrides).with_run_dir(target), run_dir
    config = load_config(target, overrides)
    return config, RunDir.of(config, target)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config, run_dir = _load(args)
        COMMANDS[args.command][0](config, run_dir, args)
    except USER_ERRORS as err:
        print(f"nat2: error: {err}", file=sys.stderr)
        return 2
    return 0
