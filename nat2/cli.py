"""The `nat2` command: `nat2 <command> CONFIG [--set key=value ...]`."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np
from tqdm import tqdm

from supernets import ArchitectureError, CheckpointError, recalibrate_bn
from supernets import DatasetError, load_splits, make_loader
from supernets.phases import PhaseError
from supernets.train import TrainingError

from .archive import ArchiveError
from .config import ConfigError, load_config
from .factory import build_space, build_supernets
from .space import EncodingError
from .search_command import cmd_search
from .train import cmd_train_supernet

USER_ERRORS = (ArchiveError, ConfigError, DatasetError, ArchitectureError, EncodingError, PhaseError, CheckpointError, TrainingError)


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


COMMANDS = {"sample": cmd_sample, "train-supernet": cmd_train_supernet, "search": cmd_search}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nat2", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("config", help="YAML config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set sample.n=20")
    parser.add_argument("--resume", action="store_true",
                        help="continue the stage from the last checkpoint in the run directory")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        COMMANDS[args.command](config, args)
    except USER_ERRORS as err:
        print(f"nat2: error: {err}", file=sys.stderr)
        return 2
    return 0
