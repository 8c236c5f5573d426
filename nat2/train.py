"""`nat2 train-supernet`: EPS from scratch or the NAT2 warm-up from a source checkpoint, one
supernet per width, under runs/<name>/supernet/w<width>/<phase>/."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from supernets.checkpoint import load_source
from supernets.phases import parse_phases
from supernets.train import TrainOptions, train_supernet

from .config import ConfigError
from .factory import build_supernets
from .stage import open_stage

SCHEDULES = ("eps", "warmup")
log = logging.getLogger(__name__)


def train_options(config: dict[str, Any]) -> TrainOptions:
    tr = config["train"]
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    try:
        return TrainOptions(**{k: v for k, v in tr.items() if k in fields})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"train: {err}") from None


def source_path(source: Any, width: float) -> Path | None:
    """`train.source`: null, a path (may contain {width}), or a mapping width -> path."""
    if source is None:
        return None
    if isinstance(source, dict):
        match = [v for k, v in source.items() if float(k) == width]
        if not match:
            raise ConfigError(f"train.source has no entry for width {width}; expected keys {sorted(source)}")
        return Path(match[0])
    if isinstance(source, str):
        return Path(source.format(width=width))
    raise ConfigError(f"train.source = {source!r}; expected null, a path or a mapping width -> path")


def width_dir(run_dir: Path, width: float) -> Path:
    return run_dir / "supernet" / f"w{width:.1f}"


def cmd_train_supernet(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Train every width's supernet through the configured phase table; resumable."""
    tr, data = config["train"], config["data"]
    if tr["schedule"] not in SCHEDULES:
        raise ConfigError(f"train.schedule = {tr['schedule']!r}; expected one of {', '.join(SCHEDULES)}")
    options = train_options(config)
    ctx, run_dir, splits, space = open_stage(config, args, "supernet", "train-supernet")
    log.info("%s: %d classes, %d train / %d val images; %d process(es) on %s; run directory %s", data["name"],
             splits.n_classes, len(splits.train), len(splits.val), ctx.world_size, ctx.device, run_dir)
    results = []
    for width, supernet in build_supernets(config, space, splits.n_classes).items():
        phases = parse_phases(tr[tr["schedule"]], supernet.space, parallel=supernet.parallel,
                              early_exits=supernet.early_exits)
        out = width_dir(run_dir, width)
        source = source_path(tr["source"], width)
        if source is not None and not (out / phases[0].name / "last.pt").exists():
            log.info("width %.1f: starting from %s (%s format)", width, source, load_source(supernet, source))
        best = train_supernet(supernet, phases, splits, out, options, ctx, tb_dir=run_dir / "logs" / "tensorboard"
                              / f"w{width:.1f}")
        results.append((width, best))
    if ctx.is_main:
        for width, best in results:
            print(f"width {width:.1f}: supernet ready at {best}")
