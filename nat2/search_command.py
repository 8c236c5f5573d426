"""`nat2 search`: the NAT2 loop from the warmed-up supernets of a run directory; resumable."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from supernets import CheckpointError
from supernets.checkpoint import check_meta, load_checkpoint
from supernets.phases import parse_phases
from supernets.train import build_teacher

from .adapt import adapt
from .config import ConfigError
from .evaluate import Evaluator
from .factory import build_supernets
from .search import Search, SearchSettings, format_table
from .stage import open_stage
from .train import train_options, width_dir

log = logging.getLogger(__name__)


def search_settings(config: dict[str, Any]) -> SearchSettings:
    fields = {f.name for f in dataclasses.fields(SearchSettings)}
    try:
        return SearchSettings(**{k: v for k, v in config["search"].items() if k in fields})
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def supernet_checkpoint(config: dict[str, Any], run_dir: Path, supernet: Any, width: float) -> Path:
    """`search.supernet` (may contain {width}), or this run's last training phase's best.pt."""
    if config["search"]["supernet"]:
        return Path(str(config["search"]["supernet"]).format(width=width))
    tr = config["train"]
    phases = parse_phases(tr[tr["schedule"]], supernet.space, parallel=supernet.parallel,
                          early_exits=supernet.early_exits)
    return width_dir(run_dir, width) / phases[-1].name / "best.pt"


def cmd_search(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Run (or resume) the NAT2 search and print the final table of front subnets."""
    settings = search_settings(config)
    options = train_options(config)
    ctx, run_dir, splits, space = open_stage(config, args, "search", "search")
    supernets = build_supernets(config, space, splits.n_classes)
    teachers = {}
    for width, supernet in supernets.items():
        path = supernet_checkpoint(config, run_dir, supernet, width)
        if not path.is_file():
            raise CheckpointError(f"no supernet checkpoint at {path}; run `nat2 train-supernet` first (warm-up) "
                                  "or set search.supernet to a checkpoint (may contain {width})")
        state = load_checkpoint(path)
        check_meta(path, state, supernet)
        supernet.load_state_dict(state["model"])
        supernet.to(ctx.device)
        teachers[width] = build_teacher(supernet, splits, options, ctx.device) if options.kd_ratio > 0 else None
        adapted = run_dir / "search" / "adapt" / f"w{width:.1f}" / "last.pt"
        if adapted.exists():
            state = load_checkpoint(adapted)
            check_meta(adapted, state, supernet)
            supernet.load_state_dict(state["model"])
        log.info("width %.1f: supernet from %s%s", width, path, f", adapted ({adapted})" if adapted.exists() else "")
    evaluator = Evaluator(space, supernets, splits, splits.n_classes, ctx=ctx, batch_size=options.eval_batch_size,
                          calibration_batch=options.calibration_batch, num_workers=options.num_workers)
    adapt_settings, adapt_dir = config["search"]["adapt"], run_dir / "search" / "adapt"

    def adapt_fn(k: int, records: list[dict[str, Any]]) -> None:
        adapt(supernets, teachers, space, records, splits, options, adapt_settings, k, settings.iterations,
              adapt_dir, ctx)
    rows = Search(space, evaluator, settings, splits.n_classes, run_dir / "search",
                  adapt_fn if adapt_settings["epochs"] > 0 else None, ctx.is_main).run()
    if ctx.is_main:
        print(format_table(rows))
        print(f"front and knees: {run_dir / 'search' / 'final.json'}; curves: {run_dir / 'search' / 'curves.png'}")

