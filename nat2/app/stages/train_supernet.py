"""`nat2 train-supernet`: EPS from scratch or the NAT2 warm-up from a source checkpoint, one
supernet per width; resumable."""
from __future__ import annotations

import logging

from supernets.checkpoint import load_source
from supernets.train import train_supernet

from ..config import Config
from ..context import open_stage
from ..rundir import RunDir

log = logging.getLogger(__name__)


def run(config: Config, run_dir: RunDir, resume: bool = False) -> None:
    """Train every width's supernet through the configured phase table."""
    tr = config.train
    ctx, splits, space = open_stage(config, run_dir, "supernet", "train-supernet", resume)
    log.info("%s: %d classes, %d train / %d val images; %d process(es) on %s; run directory %s", config.data.name,
             splits.n_classes, len(splits.train), len(splits.val), ctx.world_size, ctx.device, run_dir.path)
    results = []
    for width, supernet in config.supernet.build(space, splits.n_classes).items():
        phases = tr.phases(supernet)
        source = tr.source_path(width)
        if source is not None and not run_dir.phase_checkpoint(width, phases[0].name, "last").exists():
            log.info("width %.1f: starting from %s (%s format)", width, source, load_source(supernet, source))
        best = train_supernet(supernet, phases, splits, run_dir.supernet(width), tr.options, ctx,
                              tb_dir=run_dir.tensorboard(width))
        results.append((width, best))
    if ctx.is_main:
        for width, best in results:
            print(f"width {width:.1f}: supernet ready at {best}")
