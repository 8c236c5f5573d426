"""The `nat2` command: `nat2 <command> CONFIG_OR_RUN_DIR [--set key=value ...]`.

Only the command that runs is imported (torch and friends take seconds), so `nat2 --help` and
a mistyped flag answer at once. Every error a user can cause ends in one line on stderr (and in
the command's log of the run directory) and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from .choices import BACKENDS, FORMATS, METHODS, SPLITS, STRATEGIES

# command -> (the module that runs it, how it is called, help)
COMMANDS: dict[str, tuple[str, Callable[[Any, Any, Any, argparse.Namespace], None], str]] = {
    "sample": ("stages.sample", lambda m, c, r, a: m.run(c),
               "sample subnets from fresh supernets and print their costs"),
    "train-supernet": ("stages.train_supernet", lambda m, c, r, a: m.run(c, r, a.resume),
                       "train the supernets (EPS or the NAT2 warm-up); resumable"),
    "search": ("stages.search", lambda m, c, r, a: m.run(c, r, a.resume, a.strategy, a.wp),
               "run the NAT2 search (or a training-free RB-IFA / PF-IFA search); resumable"),
    "select": ("stages.select", lambda m, c, r, a: m.run(c, r),
               "choose the subnets to fine-tune: knee points, the front, or RB-IFA for a weight wp"),
    "finetune": ("stages.finetune", lambda m, c, r, a: m.run(c, r, a.resume),
                 "two-step fine-tuning of the selected subnets; resumable"),
    "export": ("stages.export", lambda m, c, r, a: m.run(c, r, a.subnet),
               "write each fine-tuned subnet as a standalone export (architecture, weights, .pt2, ONNX, metadata)"),
    "evaluate": ("stages.evaluate", lambda m, c, r, a: m.run(c, r, a.subnet, a.split, a.format),
                 "score an exported subnet on a split of the dataset"),
    "latency": ("stages.latency", lambda m, c, r, a: m.run(c, r, a.backend, a.batch, a.threads, a.check),
                "measure the latency table of the run's space on this machine; resumable (--check: compare it with "
                "whole subnets)"),
    "run": ("pipeline", lambda m, c, r, a: m.run(c, r),
            "the whole pipeline: train-supernet, search, select, finetune, export; run it again to resume"),
}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error of nat2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _version() -> str:
    try:
        return metadata.version("nat2")
    except metadata.PackageNotFoundError:
        return "unknown (not installed; run `make install`)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nat2", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config", metavar="CONFIG_OR_RUN_DIR",
                         help="YAML config (see configs/), or a run directory (its config.yaml is used)")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set search.iterations=10 (repeatable)")
        if name in ("train-supernet", "search", "finetune"):
            sub.add_argument("--resume", action="store_true",
                             help="continue the stage from what the run directory holds")
        if name == "search":
            sub.add_argument("--strategy", choices=STRATEGIES, default="nat2",
                             help="nat2, or a training-free rbifa / pfifa search (default: %(default)s)")
            sub.add_argument("--wp", type=float, nargs="+", metavar="WP",
                             help="RB-IFA performance weights in [0, 1] (a list gives a pseudo-Pareto front; "
                                  "default: rbifa.wp)")
        if name in ("select", "run"):
            sub.add_argument("--method", choices=METHODS, help="selection method (default: select.method)")
            sub.add_argument("--wp", type=float, help="RB-IFA performance weight in [0, 1] (default: select.wp)")
            sub.add_argument("--n", type=int, help="how many subnets RB-IFA selects (default: select.n)")
        if name == "export":
            sub.add_argument("--subnet", action="append", metavar="NAME",
                             help="export only these (repeatable; default: every fine-tuned subnet)")
        if name == "evaluate":
            sub.add_argument("--subnet", required=True, metavar="NAME_OR_FOLDER",
                             help="the name of an export of the run directory, or an export folder")
            sub.add_argument("--split", choices=SPLITS, default="val",
                             help="validation (carved from the training set) or the test set (default: %(default)s)")
            sub.add_argument("--format", choices=FORMATS, default="torch",
                             help="the rebuilt PyTorch module, the .pt2 program or onnxruntime (default: %(default)s)")
        if name == "latency":
            sub.add_argument("--backend", choices=BACKENDS,
                             help="where the subnets will run (default: latency.backend)")
            sub.add_argument("--batch", type=_positive, help="images per forward (default: latency.batch)")
            sub.add_argument("--threads", type=_positive, help="CPU threads (default: latency.threads)")
            sub.add_argument("--check", type=_positive, default=0, metavar="N",
                             help="then time N random subnets and the exports whole and compare with the table")
    return parser


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _target(args: argparse.Namespace) -> tuple[Path, Any]:
    """CONFIG_OR_RUN_DIR as a path, and its run directory when it names one (a folder, or a run
    directory's own config.yaml, which means that run)."""
    from .rundir import RunDir

    target = Path(args.config)
    if RunDir(target.parent).is_run_config(target):
        target = target.parent
    return target, RunDir(target) if target.is_dir() else None


def _load(args: argparse.Namespace, target: Path, run_dir: Any) -> tuple[Any, Any]:
    """The config of `target` and its run directory: a YAML file (run.dir, or runs/<file name>),
    or a run directory, which keeps pointing at itself; `--method/--wp/--n` of select and run are
    select.* overrides."""
    from .config import ConfigError, load_config
    from .rundir import RunDir

    overrides = list(args.set)
    if args.command in ("select", "run"):
        overrides += [f"select.{k}={getattr(args, k)}" for k in ("method", "wp", "n") if getattr(args, k) is not None]
    if run_dir is not None:
        if not run_dir.config_file.is_file():
            raise ConfigError(f"{target} is a directory without config.yaml; expected a YAML config or a run "
                              "directory written by nat2")
        config = load_config(run_dir.config_file, overrides)
        if config.run.dir is None or Path(config.run.dir).resolve() != target.resolve():
            config = config.with_run_dir(target)
        return config, run_dir
    config = load_config(target, overrides)
    run_dir = RunDir.of(config, target)
    return config.with_run_dir(run_dir.path), run_dir


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors a user's input can cause (the command's modules are loaded by now)."""
    from postprocess import ExportError, FinetuneError
    from supernets import ArchitectureError, CheckpointError, DatasetError
    from supernets.latency import LatencyError
    from supernets.phases import PhaseError
    from supernets.train import TrainingError

    from ..files import FileFormatError
    from ..search import ArchiveError
    from ..space import EncodingError
    from .config import ConfigError
    from .rundir import RunDirError
    from .stages.select import SelectionError

    return (ArchiveError, ConfigError, DatasetError, ArchitectureError, EncodingError, PhaseError, CheckpointError,
            TrainingError, SelectionError, RunDirError, FinetuneError, ExportError, FileFormatError, LatencyError)


def _one_line(err: Exception) -> str:
    text = str(err).strip()
    if "Original Traceback" in text:      # raised in a DataLoader worker: the worker's own message
        text = text.splitlines()[-1].partition(": ")[2]
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    module, call, _ = COMMANDS[args.command]
    target, run_dir = _target(args)
    try:
        config, run_dir = _load(args, target, run_dir)
        call(importlib.import_module(f".{module}", __package__), config, run_dir, args)
    except _user_errors() as err:
        from ..files import FileFormatError

        message = f"nat2 {args.command}: error: {_one_line(err)}"
        if isinstance(err, FileFormatError) and run_dir is not None:
            message += f"; {run_dir.recovery(err.path)}"
        print(message, file=sys.stderr)
        if run_dir is not None:
            run_dir.log_error(args.command, message)
        return 2
    return 0
