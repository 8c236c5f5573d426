"""`nat2 search`: the NAT2 loop from the warmed-up supernets of a run directory; resumable."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from supernets import CheckpointError, Supernet
from supernets.checkpoint import check_meta, load_checkpoint
from supernets.phases import parse_phases
from supernets.train import build_teacher

from .adapt import adapt
from .archive import Archive
from .config import ConfigError
from .evaluate import Evaluator
from .factory import build_supernets
from .search import Search, SearchSettings, format_table
from .stage import open_stage
from .tf_search import TF_DIR, format_tf_table, run_tf_search
from .train import train_options, width_dir

STRATEGIES = ("nat2", "rbifa", "pfifa")
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


def trained_supernets(config: dict[str, Any], run_dir: Path, n_classes: int, space: Any,
                      device: Any) -> dict[float, Supernet]:
    """One supernet per width with the warm-up weights of this run (or `search.supernet`)."""
    supernets = build_supernets(config, space, n_classes)
    for width, supernet in supernets.items():
        path = supernet_checkpoint(config, run_dir, supernet, width)
        if not path.is_file():
            raise CheckpointError(f"no supernet checkpoint at {path}; run `nat2 train-supernet` first (warm-up) "
                                  "or set search.supernet to a checkpoint (may contain {width})")
        state = load_checkpoint(path)
        check_meta(path, state, supernet)
        supernet.load_state_dict(state["model"])
        supernet.to(device)
        log.info("width %.1f: supernet from %s", width, path)
    return supernets


def load_adapted(run_dir: Path, supernets: dict[float, Supernet]) -> None:
    """Replace the warm-up weights by the search's adapted ones where adaptation has run."""
    for width, supernet in supernets.items():
        adapted = adapt_dir(run_dir) / f"w{width:.1f}" / "last.pt"
        if adapted.exists():
            state = load_checkpoint(adapted)
            check_meta(adapted, state, supernet)
            supernet.load_state_dict(state["model"])
            log.info("width %.1f: adapted weights from %s", width, adapted)


def adapt_dir(run_dir: Path) -> Path:
    return run_dir / "search" / "adapt"


def cmd_tf_search(config: dict[str, Any], args: argparse.Namespace) -> None:
    """The training-free RB-IFA / PF-IFA search (`--strategy`), under <run>/tfsearch/."""
    stage = open_stage(config, args, TF_DIR, "search")
    supernets = None
    if config["rbifa"]["init"] == "inherited":
        supernets = trained_supernets(config, stage.run_dir, stage.splits.n_classes, stage.space, stage.ctx.device)
        load_adapted(stage.run_dir, supernets)
    rows = run_tf_search(config, stage, supernets, strategy=args.strategy, wps=args.wp)
    if stage.ctx.is_main:
        print(format_tf_table(rows))
        out = stage.run_dir / TF_DIR
        print(f"chosen subnets and front: {out / 'result.json'}; plot: {out / 'front.png'}")


def cmd_search(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Run (or resume) the NAT2 search and print the final table of front subnets."""
    if getattr(args, "strategy", "nat2") != "nat2":
        cmd_tf_search(config, args)
        return
    settings = search_settings(config)
    options = train_options(config)
    ctx, run_dir, splits, space = open_stage(config, args, "search", "search")
    supernets = trained_supernets(config, run_dir, splits.n_classes, space, ctx.device)
    teachers = {w: build_teacher(s, splits, options, ctx.device) if options.kd_ratio > 0 else None
                for w, s in supernets.items()}
    load_adapted(run_dir, supernets)
    evaluator = Evaluator(space, supernets, splits, splits.n_classes, ctx=ctx, batch_size=options.eval_batch_size,
                          calibration_batch=options.calibration_batch, num_workers=options.num_workers,
                          cache_mb=options.eval_cache_mb, bf16=options.eval_bf16)
    adapt_settings = config["search"]["adapt"]

    def adapt_fn(k: int, archive: Archive) -> None:
        adapt(supernets, teachers, space, archive, splits, options, adapt_settings, k, settings.iterations,
              adapt_dir(run_dir), ctx)
    rows = Search(space, evaluator, settings, splits.n_classes, run_dir / "search",
                  adapt_fn if adapt_settings["epochs"] > 0 else None, ctx.is_main).run()
    if ctx.is_main:
        print(format_table(rows))
        print(f"front and knees: {run_dir / 'search' / 'final.json'}; curves: {run_dir / 'search' / 'curves.png'}")

