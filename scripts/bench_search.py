"""NAT2 search benchmarks on a digits supernet, printed as JSON.

1. Predictors on a real archive: architectures drawn with the NAT2 sampler and evaluated on the
   supernet of configs/bench-digits.yaml (validation top-1 after BN recalibration); every model
   is fitted on `--train` rows and scored on `--test` held-out rows (Kendall tau, Spearman rho,
   fit + predict seconds), with integer and one-hot features.
2. One candidate-generation step: LightGBM fitted on the training rows as an archive, NSGA-II
   (population 100 x 20 generations) on [predicted error, params], subset selection of 25.
3. Hypervolume after the same number of real evaluations, for each seed: NAT2 (no adaptation, so
   accuracies stay fixed) vs uniform random sampling of the space, with the NAT2 run's reference point.

    PYTHONPATH=. python scripts/bench_search.py [--quick]

The supernet is trained first (`nat2 train-supernet configs/bench-digits.yaml`) when
runs/bench-digits has none. Evaluations are cached in runs/bench-digits/bench/evaluations.jsonl.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from nat2.search.archive import Archive, hypervolume, objective_matrix
from nat2.search.candidates import choose_candidates, generate
from nat2.app.cli import main as nat2_main
from nat2.app.config import Config, load_config
from nat2.app.rundir import RunDir
from nat2.files import append_jsonl
from nat2.search.evaluate import Evaluator
from nat2.search.loop import Search, SearchSettings
from predictors import PREDICTORS, correlation_report, make_predictor
from supernets.checkpoint import load_checkpoint

from _bench import timed

CONFIG = Path("configs/bench-digits.yaml")
OBJECTIVES = ("acc", "params")


def load_evaluator(config: Config) -> tuple[Evaluator, int]:
    run = RunDir(config.run.dir)
    best = run.phase_checkpoint(1.0, "all")
    if not best.exists():
        resume = ["--resume"] if run.stage("supernet").exists() else []
        if nat2_main(["train-supernet", str(CONFIG), *resume]) != 0:
            raise SystemExit(f"training the benchmark supernet in {run} failed")
    splits = config.data.load()
    space = config.supernet.search_space()
    supernets = config.supernet.build(space, splits.n_classes)
    supernets[1.0].load_state_dict(load_checkpoint(best)["model"])
    return Evaluator(space, supernets, splits, splits.n_classes), splits.n_classes


def predictor_table(X: np.ndarray, y: np.ndarray, n_train: int) -> dict:
    rows = {}
    for features in ("integer", "onehot"):
        for name in PREDICTORS:
            model = make_predictor(name, features=features, random_state=0)
            seconds, predicted = timed(lambda: model.fit(X[:n_train], y[:n_train]).predict(X[n_train:]))
            report = correlation_report(y[n_train:], predicted)
            rows[f"{name}/{features}"] = {"kendall_tau": round(report["kendall_tau"], 4),
                                          "spearman_rho": round(report["spearman_rho"], 4),
                                          "seconds": round(seconds, 4)}
    integer = {k.split("/")[0]: v for k, v in rows.items() if k.endswith("/integer")}
    best = max(integer, key=lambda k: integer[k]["kendall_tau"])
    return {"models": rows, "best_integer": best,
            "lgb_tau_gap_to_best": round(integer[best]["kendall_tau"] - integer["lgb"]["kendall_tau"], 4),
            "catboost_over_lgb_seconds": round(integer["catboost"]["seconds"] / integer["lgb"]["seconds"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--test", type=int, default=250)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="small archive and few iterations for a smoke run")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_config(CONFIG)
    evaluator, n_classes = load_evaluator(config)
    space = evaluator.space
    cache = Path(config.run.dir) / "bench" / "evaluations.jsonl"
    result: dict = {"setup": {"config": str(CONFIG), "threads": torch.get_num_threads(), "torch": torch.__version__}}

    t = time.perf_counter()
    X = space.sample(np.random.default_rng(123), args.train + args.test)
    X = X[np.unique(X, axis=0, return_index=True)[1]]
    records = evaluator.evaluate(X, 0, cache, "predictor data")
    y = 100.0 - np.array([r["top1"] for r in records])
    result["predictors"] = {"n_train": args.train, "n_test": len(X) - args.train,
                            "eval_seconds": round(time.perf_counter() - t, 1), **predictor_table(X, y, args.train)}

    archive = Archive(len(X[:args.train]), OBJECTIVES)
    archive.add(records[:args.train])
    lgb = make_predictor("lgb").fit(archive.X, 100.0 - np.array([r["top1"] for r in archive.records]))
    t = time.perf_counter()
    candidates, predicted = generate(space, lgb, archive, OBJECTIVES, n_classes, pop_size=100, n_gen=20, seed=0)
    chosen = choose_candidates(candidates, predicted, archive, OBJECTIVES, 25, 0)
    result["candidate_generation"] = {"seconds": round(time.perf_counter() - t, 3), "chosen": len(chosen)}

    size, multiplier, iterations, k = (12, 2, 2, 4) if args.quick else (50, 4, 6, 10)
    hv = []
    for seed in range(args.seeds):
        out = RunDir(Path(config.run.dir) / "bench" / f"nat2_seed{seed}").search
        settings = SearchSettings(objectives=OBJECTIVES, archive_size=size, multiplier=multiplier,
                                  iterations=iterations, candidates=k, seed=seed, knees=0)
        search = Search(space, SharedCacheEvaluator(evaluator, cache), settings, n_classes, out)
        search.run()
        evaluated = [r for i in range(iterations + 1)
                     for r in _jsonl(out.evaluations(i, "evaluated" if i == 0 else "candidates"))]
        ref, ideal = (np.array(search.state[key]) for key in ("reference_point", "ideal"))
        random_X = space.sample(np.random.default_rng(1000 + seed), len(evaluated))
        random_records = evaluator.evaluate(random_X, 0, cache, f"random seed {seed}")
        final = Archive.load(out.archive(iterations))
        hv.append({"seed": seed, "evaluations": len(evaluated),
                   "nat2_all_evaluated": round(hypervolume(objective_matrix(evaluated, OBJECTIVES), ref, ideal), 4),
                   "nat2_final_archive": round(hypervolume(final.F, ref, ideal), 4),
                   "random": round(hypervolume(objective_matrix(random_records, OBJECTIVES), ref, ideal), 4)})
    result["hypervolume"] = {"archive_size": size, "multiplier": multiplier, "iterations": iterations,
                             "candidates": k, "runs": hv,
                             "nat2_higher_in": sum(r["nat2_all_evaluated"] > r["random"] for r in hv)}
    print(json.dumps(result, indent=2))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SharedCacheEvaluator(Evaluator):
    """The evaluator, answering from (and adding to) the benchmark's cache, then writing what the
    search asked for into the search's own cache too (evaluations repeat exactly)."""

    def __init__(self, base: Evaluator, cache: Path) -> None:
        self.__dict__.update(base.__dict__)
        self.shared = cache

    def evaluate(self, X: np.ndarray, iteration: int, cache: Path | None = None, desc: str = "evaluate",
                 split: str = "val", extra: list[dict] | None = None) -> list[dict]:
        known = super().evaluate(X, iteration, self.shared, desc, split, extra)
        if cache is not None:
            append_jsonl(cache, known)
        return known


if __name__ == "__main__":
    main()
