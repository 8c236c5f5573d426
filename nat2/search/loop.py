"""The NAT2 loop: archive -> predictor -> NSGA-II -> K candidates -> evaluation -> archive update -> supernet
adaptation -> re-evaluation, resumable at every step.

Its files (`SearchFiles`, placed by the caller): state (objectives, fixed hypervolume reference, iterations done),
archive(k) (after iteration k, 0 the initial one), stats(k) (hypervolume, predictor quality on the K new candidates,
times), pareto(k) (plot), evaluations (JSONL as they come: what a resume does not redo), curves and final (the front
with its knees). Every step is deterministic given the seed and the files before it, so a killed search resumed with
`--resume` ends with the same archive as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
from pymoo.core.decision_making import NeighborFinder, find_outliers_upper_tail

from predictors import PREDICTORS, AdaptivePredictor, KFoldEnsemble, correlation_report, make_predictor
from supernets.settings import check_fields

from .archive import (COSTS, Archive, ArchiveError, Record, check_objectives, hypervolume, initial_archive,
                      reference_point)
from .candidates import choose_candidates, generate
from .evaluate import Evaluator
from ..files import FileFormatError, read_json, require_fields, write_json
from ..latency import differences
from .plots import curves_plot, pareto_plot
from ..space import SearchSpace

log = logging.getLogger(__name__)


class SearchFiles(Protocol):
    """Where a search keeps its files; kinds of `evaluations`: "evaluated" (initial), "candidates", "reevaluated"."""

    @property
    def state(self) -> Path: ...
    @property
    def curves(self) -> Path: ...
    @property
    def front_plot(self) -> Path: ...
    @property
    def final(self) -> Path: ...
    @property
    def final_test(self) -> Path: ...
    def archive(self, k: int) -> Path: ...
    def stats(self, k: int) -> Path: ...
    def pareto(self, k: int) -> Path: ...
    def evaluations(self, k: int, kind: str) -> Path: ...


FRONT_FIELDS = ("id", "encoding", "arch", "val_top1", "test_top1", "params", "macs", "knee")


def read_state(files: SearchFiles) -> dict[str, Any]:
    """The search's state file (written after each iteration), checked."""
    state = read_json(files.state, ["iterations_done", "objectives", "reference_point", "ideal"])
    done = state["iterations_done"]
    if isinstance(done, bool) or not isinstance(done, int) or done < 0:
        raise FileFormatError(files.state, f"holds iterations_done = {done!r}; expected an integer >= 0")
    return state


def iterations_done(files: SearchFiles) -> int:
    """The last finished iteration of the search in `files`."""
    return read_state(files)["iterations_done"]


def read_front(files: SearchFiles) -> list[dict[str, Any]]:
    """The rows `Search.final` wrote: id, encoding, arch, val / test top-1, costs, knee."""
    rows = read_json(files.final)
    if not isinstance(rows, list) or not rows:
        raise FileFormatError(files.final, f"holds {type(rows).__name__}; expected a non-empty list of subnets")
    for i, row in enumerate(rows):
        require_fields(files.final, row, FRONT_FIELDS, f" in row {i + 1}")
    return rows


@dataclass(frozen=True)
class SearchSettings:
    """The NAT2 search (NAT2 paper defaults): objectives (acc, and params, macs and/or latency), archive size, initial
    sample (multiplier x size), iterations, K candidates each, NSGA-II on the predictor, predictor, knees."""

    objectives: tuple[str, ...] = ("acc", "params")
    archive_size: int = 300
    multiplier: int = 10
    iterations: int = 30
    candidates: int = 25
    population: int = 100
    generations: int = 20
    predictor: str = "lgb"
    knees: int = 3
    seed: int = 0
    warm_start: str | None = None

    def __post_init__(self) -> None:
        objectives = self.objectives.split(",") if isinstance(self.objectives, str) else self.objectives
        object.__setattr__(self, "objectives", check_objectives([o.strip() for o in objectives]))
        if "acc" not in self.objectives:
            raise ValueError(f"search.objectives = {list(self.objectives)}; expected 'acc' among them (the "
                             "predictor drives the search)")
        check_fields(self, "search", integers={"archive_size": 3, "knees": 0, "seed": 0}
                     | dict.fromkeys(("multiplier", "iterations", "candidates", "population", "generations"), 1))
        build_predictor(self.predictor, 0)


def warm_start_encodings(path: str | None) -> np.ndarray | None:
    """`search.warm_start`: a JSON list of encodings (e.g. the training-free search's) for the initial sample."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ArchiveError(f"search.warm_start = {path}: cannot read a JSON list of encodings ({err})") from None
    if not isinstance(data, list) or not data or len({len(x) if isinstance(x, list) else -1 for x in data}) != 1:
        raise ArchiveError(f"search.warm_start = {path}: expected a non-empty JSON list of encodings (lists of "
                           "integers of one length)")
    return np.array(data)


def build_predictor(name: str, seed: int) -> Any:
    """A predictor by name: a key of `predictors.PREDICTORS`, "kfold_<name>" (10-fold ensemble of
    it) or "adaptive" (the model with the best cross-validated Kendall tau)."""
    if name == "adaptive":
        return AdaptivePredictor(random_state=seed)
    if name.startswith("kfold_") and name[6:] in PREDICTORS:
        return KFoldEnsemble(make_predictor(name[6:], random_state=seed), random_state=seed)
    if name not in PREDICTORS:
        raise ValueError(f"search.predictor = {name!r}; expected one of {', '.join(PREDICTORS)}, adaptive, "
                         "or kfold_<name>")
    return make_predictor(name, random_state=seed)


def tradeoffs(F: np.ndarray) -> np.ndarray:
    """The trade-off of every point of a normalised front, as pymoo 0.6.2's HighTradeoffPoints computes
    (and keeps to itself): the least sacrifice per unit of gain in moving to any neighbour within 0.125."""
    finder = NeighborFinder(F, epsilon=0.125, n_min_neigbors="auto", consider_2d=False)
    mu = np.full(len(F), -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a point with only duplicate neighbours: NaN
        for i in range(len(F)):
            diff = F[finder.find(i)] - F[i]
            mu[i] = np.nanmin(np.maximum(0, diff).sum(axis=1) / np.maximum(0, -diff).sum(axis=1))
    return mu


def high_tradeoff_points(F: np.ndarray) -> np.ndarray:
    """pymoo's high trade-off points (the upper-tail outliers of `tradeoffs`), highest trade-off
    first: HighTradeoffPoints returns them in index order, which says nothing about their value."""
    mu = tradeoffs(F)
    if not np.isfinite(mu).any():
        return np.empty(0, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):  # all trade-offs equal: no outliers
        found = find_outliers_upper_tail(mu)
    return np.empty(0, dtype=np.int64) if found is None else found[np.argsort(-mu[found], kind="stable")]


class Search:
    """One NAT2 search over `space`, scoring with `evaluator`, adapting with `adapt(k, archive)`."""

    def __init__(self, space: SearchSpace, evaluator: Evaluator, settings: SearchSettings, n_classes: int,
                 files: SearchFiles, adapt: Callable[[int, Archive], None] | None = None, is_main: bool = True) -> None:
        self.space, self.evaluator, self.settings, self.n_classes = space, evaluator, settings, n_classes
        self.files, self.adapt, self.is_main = files, adapt, is_main
        self.objectives = settings.objectives
        if "latency" in self.objectives and evaluator.latency is None:
            raise ValueError("the latency objective needs an evaluator with a latency table")
        self.state: dict[str, Any] = {}

    def _finish_iteration(self, k: int, archive: Archive, candidates: list[Record], stats: dict[str, Any]) -> None:
        ref, ideal = (np.array(self.state[key]) for key in ("reference_point", "ideal"))
        stats.update(iteration=k, hypervolume=hypervolume(archive.F, ref, ideal), archive_size=len(archive),
                     front_size=len(archive.front()))
        if self.is_main:
            write_json(self.files.stats(k), stats)
            cost = next((o for o in self.objectives if o != "acc"), "macs")
            pareto_plot(self.files.pareto(k), archive.records, archive.front(), candidates, cost,
                        f"iteration {k}: hypervolume {stats['hypervolume']:.4f}")
            archive.save(self.files.archive(k))  # last: its presence marks the iteration done
            curves_plot(self.files.curves, [read_json(self.files.stats(i), ["iteration", "hypervolume"])
                                            for i in range(k + 1)])
            self.state["iterations_done"] = k
            write_json(self.files.state, self.state)
        log.info("iteration %d: hypervolume %.4f, front %d, predictor %s", k, stats["hypervolume"],
                 stats["front_size"], stats.get("predictor") or "-")

    def initial(self) -> Archive:
        """Iteration 0: sample multiplier x size architectures, evaluate, keep the best by survival."""
        path = self.files.archive(0)
        if path.exists():
            archive = Archive.load(path, self.space)
            if not self.state:                      # state.json was deleted: it follows from archive 0
                self._start_state(archive)
            return archive
        t0 = time.time()
        s = self.settings
        archive = initial_archive(
            self.space, lambda X: self.evaluator.evaluate(X, 0, self.files.evaluations(0, "evaluated"),
                                                          "initial archive"),
            s.archive_size, s.multiplier, self.objectives, s.seed, warm_start_encodings(s.warm_start))
        self._start_state(archive)
        if self.is_main:
            write_json(self.files.state, self.state)
        self._finish_iteration(0, archive, [], {"seconds": {"total": time.time() - t0}, "predictor": None})
        return archive

    def _start_state(self, archive: Archive) -> None:
        """The state after iteration 0: the hypervolume's fixed box comes from the initial archive."""
        ref, ideal = reference_point(archive.F)
        self.state.update(objectives=list(self.objectives), reference_point=ref.tolist(), ideal=ideal.tolist(),
                          seed=self.settings.seed, iterations_done=0)
        if self.evaluator.latency is not None:
            self.state["latency_table"] = self.evaluator.latency.fingerprint()

    def iteration(self, k: int, archive: Archive) -> Archive:
        """One NAT2 iteration k (1-based): fit the predictor, generate and evaluate candidates, survive,
        adapt and re-evaluate, record."""
        s, seed = self.settings, self.settings.seed * 1000 + k
        times: dict[str, float] = {}
        t = time.time()
        errors = 100.0 - np.array([r["top1"] for r in archive.records])
        predictor = build_predictor(s.predictor, seed).fit(archive.X, errors)
        times["fit"] = time.time() - t
        t = time.time()
        X, F = generate(self.space, predictor, archive, self.objectives, self.n_classes, pop_size=s.population,
                        n_gen=s.generations, seed=seed, latency=self.evaluator.latency)
        chosen = choose_candidates(X, F, archive, self.objectives, s.candidates, seed)
        times["generate"] = time.time() - t
        t = time.time()
        predicted = 100.0 - predictor.predict(chosen)
        candidates = self.evaluator.evaluate(chosen, k, self.files.evaluations(k, "candidates"), f"iteration {k} candidates",
                                             extra=[{"predicted_top1": float(p)} for p in predicted])
        times["evaluate"] = time.time() - t
        report = correlation_report(np.array([c["top1"] for c in candidates]), predicted)
        # NaN (a constant prediction has no rank correlation) as JSON null
        quality = {key: (None if v is None or not np.isfinite(v) else float(v)) for key, v in report.items()}
        archive.add(candidates, self.space)
        archive.shrink(seed)
        if self.adapt is not None:
            t = time.time()
            self.adapt(k, archive)
            times["adapt"] = time.time() - t
            t = time.time()
            again = self.evaluator.evaluate(archive.X, k, self.files.evaluations(k, "reevaluated"), f"iteration {k} re-evaluation")
            for record, new in zip(archive.records, again):
                record["top1"] = new["top1"]
            times["reevaluate"] = time.time() - t
        times["total"] = sum(times.values())
        self._finish_iteration(k, archive, candidates, {"seconds": times, "predictor": quality,
                                                        "n_candidates": len(candidates)})
        return archive

    def run(self) -> list[dict[str, Any]]:
        """All iterations (skipping finished ones), then the final report."""
        state_path = self.files.state
        if state_path.exists() and self.files.archive(0).exists():
            self.state = read_state(self.files)
            if self.state["objectives"] != list(self.objectives):
                raise ArchiveError(f"{state_path}: the search ran with objectives {self.state.get('objectives')}, "
                                 f"not {list(self.objectives)}; start a new run directory")
            table = self.evaluator.latency
            diff = differences(self.state.get("latency_table"), table.fingerprint()) if table is not None else []
            if diff:
                raise ArchiveError(f"{state_path}: the search ran with another {table.backend} latency table than the "
                                   f"one now in the run directory ({'; '.join(diff)}); restore that table, or start "
                                   "a new run directory to search on this one")
        archive = self.initial()
        for k in range(1, self.settings.iterations + 1):
            path = self.files.archive(k)
            if path.exists():
                archive = Archive.load(path, self.space)
                self.state["iterations_done"] = k
            else:
                archive = self.iteration(k, archive)
        if self.is_main:
            write_json(self.files.state, self.state)
        return self.final(archive)

    def knees(self, front: Sequence[Record]) -> list[int]:
        """Up to `knees` members of the front: pymoo's high trade-off points, highest first, filled up
        with members evenly spread along the last cost when pymoo finds fewer."""
        n = min(self.settings.knees, len(front))
        if n == 0:
            return []
        F = np.array([[100.0 - r["top1"]] + [r[o] for o in self.objectives if o != "acc"] for r in front])
        span = F.max(0) - F.min(0)
        F = (F - F.min(0)) / np.where(span > 0, span, 1.0)
        chosen = [int(i) for i in high_tradeoff_points(F)[:n]] if len(front) > 2 and F.shape[1] > 1 else []
        order = np.argsort(F[:, -1], kind="stable")
        for i in order[np.linspace(0, len(order) - 1, n).round().astype(int)]:
            if len(chosen) < n and i not in chosen:
                chosen.append(int(i))
        return sorted(int(i) for i in chosen)

    def final(self, archive: Archive) -> list[dict[str, Any]]:
        """The non-dominated archive and its knees, scored once on the TEST split."""
        front = sorted(archive.front(), key=lambda r: r["latency" if "latency" in self.objectives else "macs"])
        knees = self.knees(front)
        tested = self.evaluator.evaluate(np.array([r["encoding"] for r in front]), self.settings.iterations,
                                         self.files.final_test, "test split", split="test")
        rows = [{"id": f"subnet_{i:02d}", "encoding": r["encoding"], "arch": self.space.decode(np.array(r["encoding"])).to_dict(),
                 "val_top1": r["top1"], "test_top1": t["top1"], **{k: r[k] for k in COSTS if k in r},
                 "knee": i in knees} for i, (r, t) in enumerate(zip(front, tested))]
        if self.is_main:
            write_json(self.files.final, rows)
            cost = next((o for o in self.objectives if o != "acc"), "macs")
            pareto_plot(self.files.front_plot, archive.records, archive.front(), [], cost,
                        f"final front after {self.settings.iterations} iterations, knees starred",
                        knees=[r for r in rows if r["knee"]])
        return rows
