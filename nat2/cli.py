"""The `nat2` command: `nat2 <command> CONFIG [--set key=value ...]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from supernets import ArchitectureError, CheckpointError, recalibrate_bn
from supernets import DatasetError, load_splits, make_loader
from supernets.phases import PhaseError
from supernets.train import TrainingError
from postprocess import ExportError, FinetuneError

from .archive import ArchiveError
from .config import ConfigError, load_config
from .export_command import FORMATS, SPLITS, cmd_evaluate, cmd_export
from .factory import build_space, build_supernets
from .finetune_command import cmd_finetune
from .run_command import cmd_run
from .search_command import STRATEGIES, cmd_search
from .select import METHODS, SelectionError, cmd_select
from .space import EncodingError
from .train import cmd_train_supernet

USER_ERRORS = (ArchiveError, ConfigError, DatasetError, ArchitectureError, EncodingError, PhaseError, CheckpointError,
               TrainingError, SelectionError, FinetuneError, ExportError)


def cmd_sample(config: dict, args: argparse.Namespace) -> None:
    """Build the supernets, sample subnets with the NAT2 sampler, extract each, recalibrate its
    BN on the calibration images and print its architecture, params and MACs."""
    space = build_space(config)
    data = config["data"]
    splits = load_splits(data["name"], data["root"], seed=data["seed"], calibration_size=data["calibration_size"])
    supernets = build_supernets(config, space, splits.n_classes)
    rng = np.random.default_rng(config["sample"]["seed"])
    x = np.vstack([space.min_encoding, space.sample(rng, config["sample"]["n"]), space.max_encoding])
    params, macs = space.costs(x, splits.n_classes)
    print(f"{data['name']}: {splits.n_classes} classes, {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test)} test images; variant "
          + "".join(k[0].upper() for k in ("dense", "parallel") if config["supernet"][k]) + ("EE" if config["supernet"]["early_exits"] else ""))
    rows = []
    for enc, p, m in tqdm(list(zip(x, params, macs)), desc="extract + BN recalibration", disable=not sys.stderr.isatty()):
        arch = space.decode(enc)
        subnet = supernets[arch.width].extract(arch).eval()
        splits.calibration.resolution = arch.resolution
        recalibrate_bn(subnet, make_loader(splits.calibration, config["sample"]["batch_size"], shuffle=False))
        rows.append((" ".join(map(str, enc)), str(arch), p / 1e6, m / 1e6))
    print(f"{'encoding':<70} {'params (M)':>10} {'MACs (M)':>9}  architecture")
    for enc, arch, p, m in rows:
        print(f"{enc:<70} {p:>10.3f} {m:>9.2f}  {arch}")


COMMANDS: dict[str, tuple[Callable[[dict, argparse.Namespace], None], str]] = {
    "sample": (cmd_sample, "sample subnets from fresh supernets and print their costs"),
    "train-supernet": (cmd_train_supernet, "train the supernets (EPS or the NAT2 warm-up); resumable"),
    "search": (cmd_search, "run the NAT2 search (or a training-free RB-IFA / PF-IFA search); resumable"),
    "select": (cmd_select, "choose the subnets to fine-tune: knee points, the front, or RB-IFA for a weight wp"),
    "finetune": (cmd_finetune, "two-step fine-tuning of the selected subnets; resumable"),
    "export": (cmd_export, "write final/<subnet>/ (arch.json, safetensors, .pt2, ONNX, metadata)"),
    "evaluate": (cmd_evaluate, "score an exported subnet on a split of the dataset"),
    "run": (cmd_run, "the whole pipeline: train-supernet, search, select, finetune, export"),
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
                             help="a subnet name under final/, or an export folder")
            sub.add_argument("--split", choices=SPLITS, default="val")
            sub.add_argument("--format", choices=FORMATS, default="torch")
    return parser


def _load(args: argparse.Namespace) -> dict:
    """The config of `args.config`: a YAML file, or a run directory's config.yaml with run.dir set
    to that directory; `--method/--wp/--n` of select and run are select.* overrides."""
    overrides = list(args.set)
    if args.command in ("select", "run"):
        overrides += [f"select.{k}={getattr(args, k)}" for k in ("method", "wp", "n") if getattr(args, k) is not None]
    target = Path(args.config)
    if target.is_dir():
        if not (target / "config.yaml").is_file():
            raise ConfigError(f"{target} is a directory without config.yaml; expected a YAML config or a run "
                              "directory written by nat2")
        config = load_config(target / "config.yaml", overrides)
        config["run"]["dir"] = str(target)
        return config
    return load_config(target, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _load(args)
        COMMANDS[args.command][0](config, args)
    except USER_ERRORS as err:
        print(f"nat2: error: {err}", file=sys.stderr)
        return 2
    return 0
