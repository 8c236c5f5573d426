"""`nat2 search`: the NAT2 loop from the trained supernets of a run directory, or the
training-free RB-IFA / PF-IFA search (`--strategy`); resumable."""
from __future__ import annotations

from typing import Sequence

from supernets.train import build_teacher

from ...rbifa import TrainingFreeMetrics, parse_wps, training_free_search
from ...search import Archive, Evaluator, Search, adapt
from ..config import Config, ConfigError
from ..context import latency_table, load_adapted, open_stage, trained_supernets
from ..rundir import RunDir
from ..tables import cost_columns, table


def run(config: Config, run_dir: RunDir, resume: bool = False, strategy: str = "nat2",
        wps: Sequence[float] | None = None) -> None:
    """Run (or resume) the search and print the final table of its subnets."""
    if strategy == "nat2":
        _nat2(config, run_dir, resume)
    else:
        _training_free(config, run_dir, resume, strategy, wps)


def _nat2(config: Config, run_dir: RunDir, resume: bool) -> None:
    settings, options = config.search, config.train.options
    latency = latency_table(config, run_dir)
    stage = open_stage(config, run_dir, "search", "search", resume)
    ctx, splits, space = stage.ctx, stage.splits, stage.space
    supernets = trained_supernets(config, run_dir, stage, adapted=False)
    teachers = {w: build_teacher(s, splits, options, ctx.device) if options.kd_ratio > 0 else None
                for w, s in supernets.items()}
    load_adapted(run_dir, supernets)
    evaluator = Evaluator(space, supernets, splits, splits.n_classes, ctx=ctx, batch_size=options.eval_batch_size,
                          calibration_batch=options.calibration_batch, num_workers=options.num_workers,
                          cache_mb=options.eval_cache_mb, bf16=options.eval_bf16, latency=latency)
    folders = {w: run_dir.adapt(w) for w in supernets}

    def adapt_fn(k: int, archive: Archive) -> None:
        adapt(supernets, teachers, space, archive, splits, options, settings.adapt, k, settings.iterations,
              folders, ctx)
    rows = Search(space, evaluator, settings, splits.n_classes, run_dir.search,
                  adapt_fn if settings.adapt.epochs > 0 else None, ctx.is_main).run()
    if ctx.is_main:
        print(front_table(rows))
        print(f"front and knees: {run_dir.search.final}; curves: {run_dir.search.curves}")


def _training_free(config: Config, run_dir: RunDir, resume: bool, strategy: str,
                   wps: Sequence[float] | None) -> None:
    rb, sn = config.rbifa, config.supernet
    try:
        wps = parse_wps(rb.wp if wps is None else wps)
    except ValueError as err:
        raise ConfigError(f"--{err}") from None
    stage = open_stage(config, run_dir, "tfsearch", "search", resume)
    if not stage.ctx.is_main:  # the training-free search is single-process
        return
    supernets = trained_supernets(config, run_dir, stage) if rb.init == "inherited" else None
    files = run_dir.tfsearch
    try:
        scorer = TrainingFreeMetrics(
            stage.space, stage.splits, supernets=supernets, init=rb.init,
            subnet_options={k: getattr(sn, k) for k in ("dense", "dropout", "bn_momentum", "bn_eps")},
            batch_size=rb.batch_size, calibration_batch=config.train.calibration_batch, seed=rb.seed,
            device=stage.ctx.device, cache_path=files.metrics)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    rows = training_free_search(stage.space, scorer, rb.settings, files, strategy, wps, rb.warm_start)
    print(training_free_table(rows))
    print(f"chosen subnets and front: {files.result}; plot: {files.front_plot}")


def front_table(rows: Sequence[dict]) -> str:
    """The final front of a NAT2 search, knees starred."""
    columns, costs = cost_columns(rows)
    return table([("subnet", "<10"), ("knee", ">4"), ("val top-1", ">9.2f"), ("test top-1", ">10.2f"), *columns],
                 [(r["id"], "*" if r["knee"] else "", r["val_top1"], r["test_top1"], *c) for r, c in zip(rows, costs)])


def training_free_table(rows: Sequence[dict]) -> str:
    """The chosen subnets of a training-free search, one per Wp."""
    return table([("subnet", "<7"), ("wp", ">5.2f"), ("ICD", ">9.2f"), ("log10 SF", ">9.2f"), ("params (M)", ">10.3f"),
                  ("MACs (M)", ">9.2f"), ("architecture", "")],
                 [(r["id"], r["wp"], r["icd"], r["synflow"], r["params"] / 1e6, r["macs"] / 1e6, r["arch_str"])
                  for r in rows])
