"""What every stage does first: join the job, claim its folder of the run directory, log, load
the data; and the supernets a stage starts from."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed

from supernets import CheckpointError, Splits, Supernet
from supernets.checkpoint import check_meta, load_checkpoint
from supernets.distributed import Dist, init_distributed
from supernets.latency import LatencyError

from ..latency import LatencyTable, identity
from ..space import SearchSpace
from .config import Config, ConfigError
from .rundir import RunDir

log = logging.getLogger(__name__)


class Stage(NamedTuple):
    ctx: Dist
    splits: Splits
    space: SearchSpace


def join(config: Config) -> Dist:
    """torchrun's job (if any) on the configured device."""
    if config.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but torch finds no CUDA device here; expected auto or cpu on "
                          "this machine")
    return init_distributed(None if config.train.device == "auto" else config.train.device)


def open_stage(config: Config, run_dir: RunDir, stage: str, command: str, resume: bool) -> Stage:
    """Join torchrun's job (if any), check that `stage` may start or resume in the run directory,
    record config and environment (rank 0), set up logging, seed torch with train.seed, load the
    data splits."""
    ctx = join(config)
    splits = config.data.load()
    most = len(splits.train) // ctx.world_size  # supernet training and adaptation drop the last partial batch
    if stage in ("supernet", "search") and config.train.batch_size > most:
        raise ConfigError(f"train.batch_size = {config.train.batch_size} on {ctx.world_size} process(es) exceeds the "
                          f"{len(splits.train)} training images of {config.data.name}; expected at most {most}")
    run_dir.prepare(config, stage, resume, write=ctx.is_main)
    if ctx.enabled:
        torch.distributed.barrier()
    setup_logging(run_dir, command, ctx.is_main)
    torch.manual_seed(config.train.seed)  # fresh supernet weights depend on nothing else
    return Stage(ctx, splits, config.supernet.search_space())


def setup_logging(run_dir: RunDir, command: str, is_main: bool) -> None:
    """INFO to the console and to logs/<command>.log on rank 0; warnings only on other ranks."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    for handler in list(root.handlers):
        if getattr(handler, "_nat2", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if is_main:
        path = run_dir.log_file(command)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    for chatty in ("onnxscript", "onnx_ir"):  # the ONNX exporter logs every optimisation pass
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._nat2 = True
        root.addHandler(handler)


def _load(path: str | Path, supernet: Supernet) -> None:
    state = load_checkpoint(path)
    check_meta(path, state, supernet)
    supernet.load_state_dict(state["model"])


def trained_supernets(config: Config, run_dir: RunDir, stage: Stage, adapted: bool = True) -> dict[float, Supernet]:
    """One supernet per width with the trained weights of this run (or `search.supernet`), and,
    with `adapted`, the search's adapted weights where adaptation has run."""
    supernets = config.supernet.build(stage.space, stage.splits.n_classes)
    for width, supernet in supernets.items():
        if config.search.supernet:
            path = config.search.supernet.format(width=width)
        else:
            path = run_dir.phase_checkpoint(width, config.train.phases(supernet)[-1].name)
        if not Path(path).is_file():
            raise CheckpointError(f"no supernet checkpoint at {path}; run `nat2 train-supernet` first (warm-up) "
                                  "or set search.supernet to a checkpoint (may contain {width})")
        _load(path, supernet)
        supernet.to(stage.ctx.device)
        log.info("width %.1f: supernet from %s", width, path)
    if adapted:
        load_adapted(run_dir, supernets)
    return supernets


def load_adapted(run_dir: RunDir, supernets: dict[float, Supernet]) -> None:
    """Replace the trained weights by the search's adapted ones where adaptation has run."""
    for width, supernet in supernets.items():
        path = run_dir.adapted(width)
        if path.exists():
            _load(path, supernet)
            log.info("width %.1f: adapted weights from %s", width, path)


def finetune_jobs(config: Config, rows: list[dict[str, Any]], space: SearchSpace) -> list[tuple[dict[str, Any], str]]:
    """(selected subnet row, variant) pairs: `aep` only for early-exit subnets with more than one exit."""
    out = []
    for row in rows:
        arch = space.decode(np.array(row["encoding"]))
        for v in config.finetune.variants:
            if v == "single" or (space.early_exits and arch.exit > 1):
                out.append((row, v))
    return out


def export_name(row: dict[str, Any], variant: str) -> str:
    """The name of a job's export: the subnet's id for the single variant, <id>_aep for AEP."""
    return row["id"] if variant == "single" else f"{row['id']}_{variant}"


def latency_table(config: Config, run_dir: RunDir) -> LatencyTable | None:
    """The run's latency table of latency.backend, checked against the run's space, when `latency`
    is an objective of the search (else None); a LatencyError names the command that builds it.
    Called before anything is written, so it reads the data set's classes itself."""
    if "latency" not in config.search.objectives:
        return None
    backend, path = config.latency.backend, run_dir.latency_table(config.latency.backend)
    if not path.is_file():
        raise LatencyError(f"search.objectives names latency, but {path} does not exist; build it on the machine the "
                           f"subnets will run on: {_measure(run_dir, backend)}")
    return run_table(config, run_dir, backend, config.data.load().n_classes)


def run_table(config: Config, run_dir: RunDir, backend: str, n_classes: int) -> LatencyTable:
    """The run's latency table of `backend`, refused (LatencyError) unless it is complete and was
    measured for this run's space, dense skips and classes."""
    path = run_dir.latency_table(backend)
    table = LatencyTable.read(path)
    try:
        table.check(identity(backend, config.supernet.search_space().space, config.supernet.dense, n_classes), path)
    except LatencyError as err:
        hint = "" if "incomplete" in str(err) else f"; measure this run's table with {_measure(run_dir, backend)}"
        raise LatencyError(f"{err}{hint}") from None
    return table


def _measure(run_dir: RunDir, backend: str) -> str:
    target = run_dir.path if run_dir.config_file.is_file() else "CONFIG (this run's config file)"
    return f"`nat2 latency {target} --backend {backend}`"
