"""RB-IFA benchmarks on the digits supernet of configs/bench-digits.yaml, printed as JSON.

(a) Hypervolume at equal wall time of three searches on the same training-free metrics (minimise
    -ICD, -log10 Synflow and MACs of subnets inherited from the supernet, BN recalibrated): RB-IFA's
    pseudo front over a Wp grid (the time split equally over the grid), PF-IFA's front, and the
    non-dominated members of pymoo NSGA-II's final population. Each (method, seed) run gets
    `--seconds` of wall time, checked between generations, and its own metric cache (shared across
    the Wp grid inside one RB-IFA run, never between runs). The hypervolume is that of the 2-D
    projection on (-ICD, MACs), normalised by FIXED bounds: MACs from the min and max encodings (the
    exact extremes of the space), ICD from `--reference` random encodings scored before any search;
    reference point = nadir + 10 % of the range (nat2.search.archive.reference_point).
(b) Spearman rho with validation top-1 of `--subnets` random subnets from the same checkpoint: ICD,
    log10 Synflow, MACs and the RB score at each Wp of the grid (negated, so positive = agrees).

    PYTHONPATH=. python scripts/bench_rbifa.py [--seconds 30 --seeds 5 --subnets 100]

Defaults take about 10 minutes on 2 CPU cores. The checkpoint comes from
`nat2 train-supernet configs/bench-digits.yaml` (the last phase's best.pt of that run).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.problem import Problem
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.optimize import minimize
from pymoo.termination.max_time import TimeBasedTermination
from scipy.stats import spearmanr

from nat2.search.archive import hypervolume, reference_point
from nat2.search.candidates import EncodingRepair
from nat2.app.config import load_config
from nat2.app.rundir import RunDir
from nat2.search.evaluate import Evaluator
from nat2.rbifa.ifa import IFASettings, MetricCache, non_dominated, parse_wps, pf_ifa, pseudo_front, rank_score
from nat2.space import SearchSpace
from nat2.rbifa.training_free import TrainingFreeMetrics
from supernets import Splits, Supernet, load_splits
from supernets.checkpoint import load_checkpoint

from _bench import timed

CONFIG = Path("configs/bench-digits.yaml")
CHECKPOINT = RunDir.of(load_config(CONFIG), CONFIG).phase_checkpoint(1.0, "all")


class TrainingFreeProblem(Problem):
    """NSGA-II's view of the metrics: all perf and eff columns, minimised."""

    def __init__(self, space: SearchSpace, cache: MetricCache) -> None:
        super().__init__(n_var=space.n_var, n_obj=3, xl=space.xl, xu=space.xu, vtype=int)
        self.cache = cache

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        out["F"] = np.hstack(self.cache(np.asarray(X, dtype=np.int64)))


def nsga2(space: SearchSpace, cache: MetricCache, population: int, seconds: float, seed: int) -> np.ndarray:
    """The non-dominated encodings of NSGA-II's final population after `seconds` of wall time."""
    algorithm = NSGA2(pop_size=population, sampling=space.sample(np.random.default_rng(seed), population),
                      crossover=TwoPointCrossover(prob=0.9), mutation=PM(eta=1.0, vtype=float, repair=RoundingRepair()),
                      repair=EncodingRepair(space), eliminate_duplicates=True)
    X = minimize(TrainingFreeProblem(space, cache), algorithm, TimeBasedTermination(seconds), seed=seed,
                 verbose=False).pop.get("X").astype(np.int64)
    return X[non_dominated(np.hstack(cache(X)))]


def hv_2d(cache: MetricCache, X: np.ndarray, ref: np.ndarray, ideal: np.ndarray) -> float:
    perf, eff = cache(X)
    F = np.column_stack([perf[:, 0], eff[:, 0]])  # (-ICD, MACs)
    return hypervolume(F[non_dominated(F)], ref, ideal)


def part_hypervolume(space: SearchSpace, new_scorer: Any, args: argparse.Namespace) -> dict[str, Any]:
    reference = MetricCache(new_scorer())
    X0 = np.vstack([space.min_encoding, space.max_encoding,
                    space.sample(np.random.default_rng(12345), args.reference)])
    perf, eff = reference(X0)
    ref, ideal = reference_point(np.column_stack([perf[:, 0], eff[:, 0]]))  # MACs: min and max encodings
    wps = parse_wps(args.wps)
    methods: dict[str, dict[str, list]] = {m: {"hv": [], "evaluated": [], "set_size": [], "seconds": []}
                                           for m in ("rbifa", "pfifa", "nsga2")}
    for seed in range(args.seeds):
        settings = IFASettings(population=args.population, generations=10 ** 6, seed=seed)
        for method, stats in methods.items():
            cache = MetricCache(new_scorer())
            t0 = time.perf_counter()
            if method == "rbifa":
                X = pseudo_front(space, cache, wps, settings, seconds_per_wp=args.seconds / len(wps)).X
            elif method == "pfifa":
                X = pf_ifa(space, cache, settings, stop=lambda: time.perf_counter() >= t0 + args.seconds).X
            else:
                X = nsga2(space, cache, args.population, args.seconds, seed)
            stats["seconds"].append(round(time.perf_counter() - t0, 1))
            stats["hv"].append(round(hv_2d(cache, X, ref, ideal), 4))
            stats["evaluated"].append(len(cache))
            stats["set_size"].append(len(X))
    for stats in methods.values():
        stats["hv_mean"], stats["hv_std"] = round(float(np.mean(stats["hv"])), 4), round(float(np.std(stats["hv"])), 4)
    return {"objectives": ["-icd", "macs"], "searched_on": ["-icd", "-log10 synflow", "macs"],
            "ideal": ideal.tolist(), "reference_point": ref.tolist(), "seconds_per_run": args.seconds,
            "wps": wps, "population": args.population, "seeds": args.seeds, "methods": methods,
            "rbifa_over_pfifa": round(methods["rbifa"]["hv_mean"] / max(methods["pfifa"]["hv_mean"], 1e-12), 3),
            "rbifa_over_nsga2": round(methods["rbifa"]["hv_mean"] / max(methods["nsga2"]["hv_mean"], 1e-12), 3)}


def part_correlation(space: SearchSpace, scorer: TrainingFreeMetrics, evaluator: Evaluator,
                     args: argparse.Namespace) -> dict[str, Any]:
    X = space.sample(np.random.default_rng(2024), args.subnets)
    X = X[np.sort(np.unique(X, axis=0, return_index=True)[1])]
    top1_s, top1 = timed(lambda: np.array([evaluator.top1(x) for x in X]))
    training_free_s, records = timed(lambda: [scorer.record(x) for x in X])
    values = {k: np.array([r[k] for r in records], dtype=float) for k in ("icd", "synflow", "macs")}
    rho = {k: round(float(spearmanr(v, top1).statistic), 4) for k, v in values.items()}
    perf = np.column_stack([-values["icd"], -values["synflow"]])
    for wp in parse_wps(args.wps):
        rho[f"rb_wp{wp:g}"] = round(float(spearmanr(-rank_score(perf, values["macs"], wp), top1).statistic), 4)
    return {"n": len(X), "spearman_with_val_top1": rho, "val_top1_range": [float(top1.min()), float(top1.max())],
            "seconds": {"top1": round(top1_s, 1), "training_free": round(training_free_s, 1)}}


def load(args: argparse.Namespace) -> tuple[SearchSpace, Splits, dict[float, Supernet]]:
    if not args.checkpoint.is_file():
        raise SystemExit(f"no supernet checkpoint at {args.checkpoint}; train one with "
                         f"`nat2 train-supernet {CONFIG}` or pass --checkpoint")
    config = load_config(args.config)
    data = config.data
    splits = load_splits(data.name, data.root, seed=data.seed, calibration_size=args.calibration_size)
    space = config.supernet.search_space()
    supernets = config.supernet.build(space, splits.n_classes)
    if len(supernets) != 1:
        raise SystemExit(f"{args.config} has widths {sorted(supernets)}; the benchmark loads one checkpoint, "
                         "expected one width")
    next(iter(supernets.values())).load_state_dict(load_checkpoint(args.checkpoint)["model"])
    return space, splits, supernets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--seconds", type=float, default=30.0, help="wall time of each (method, seed) run")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--wps", default="0.2,0.4,0.6,0.8,1.0", help="RB-IFA's Wp grid (comma-separated)")
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--reference", type=int, default=20, help="random encodings that fix the ICD bounds")
    parser.add_argument("--subnets", type=int, default=100, help="subnets of the correlation part")
    parser.add_argument("--batch-size", type=int, default=32, help="ICD images")
    parser.add_argument("--calibration-size", type=int, default=64, help="BN calibration images")
    parser.add_argument("--parts", default="hv,correlation", help="which parts to run: hv, correlation")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (tiny subnets gain little from more; wall times stay "
                             "comparable on a busy machine)")
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"hv", "correlation"}:
        raise SystemExit(f"--parts {args.parts!r}: expected hv, correlation or both")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    space, splits, supernets = load(args)

    def new_scorer() -> TrainingFreeMetrics:
        return TrainingFreeMetrics(space, splits, supernets=supernets, batch_size=args.batch_size,
                                   calibration_batch=args.calibration_size)

    out: dict[str, Any] = {"config": str(args.config), "checkpoint": str(args.checkpoint),
                           "threads": torch.get_num_threads()}
    if "hv" in parts:
        out["hypervolume"] = part_hypervolume(space, new_scorer, args)
    if "correlation" in parts:
        evaluator = Evaluator(space, supernets, splits, splits.n_classes, calibration_batch=args.calibration_size)
        out["correlation"] = part_correlation(space, new_scorer(), evaluator, args)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
