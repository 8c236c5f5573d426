"""What every stage command does first: join the job, claim its run directory, log, load data."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed

from supernets import Splits, load_splits
from supernets.distributed import Dist, init_distributed

from .config import ConfigError
from .factory import build_space
from .rundir import prepare, run_dir_of, setup_logging
from .space import SearchSpace

DEVICES = ("auto", "cpu", "cuda")


class Stage(NamedTuple):
    ctx: Dist
    run_dir: Path
    splits: Splits
    space: SearchSpace


def open_stage(config: dict[str, Any], args: argparse.Namespace, folder: str, command: str,
               resume: bool | None = None) -> Stage:
    """Join torchrun's job (if any), check that `folder` of the run directory may start or resume
    (`resume` defaults to `args.resume`), record config and environment (rank 0), set up logging,
    seed torch with train.seed, load the data splits."""
    device = config["train"]["device"]
    if device not in DEVICES:
        raise ConfigError(f"train.device = {device!r}; expected one of {', '.join(DEVICES)}")
    ctx = init_distributed(None if device == "auto" else device)
    run_dir = run_dir_of(config, args.config)
    prepare(run_dir, config, folder, args.resume if resume is None else resume, write=ctx.is_main)
    if ctx.enabled:
        torch.distributed.barrier()
    setup_logging(run_dir, command, ctx.is_main)
    torch.manual_seed(config["train"]["seed"])  # fresh supernet weights depend on nothing else
    data = config["data"]
    splits = load_splits(data["name"], data["root"], seed=data["seed"], calibration_size=data["calibration_size"])
    return Stage(ctx, run_dir, splits, build_space(config))
