"""Candidate generation for one NAT2 iteration: NSGA-II on the surrogate, then a spread subset. The
predictor scores accuracy; params and MACs are exact (analytic cost model), latency comes from a
latency table. Every genotype the
operators produce is repaired to its canonical encoding before it is scored or deduplicated, so the
surrogate never sees noise genes and duplicates are real duplicates."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from pymoo.algorithms.base.genetic import GeneticAlgorithm
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import BinaryRandomSampling
from pymoo.optimize import minimize

from .archive import Archive, check_objectives, objective_matrix, survive
from ..latency import LatencyTable
from ..space import SearchSpace, unique_rows

SUBSET_POP_SIZE = 100
SUBSET_N_GEN = 60
GAP_RESOLUTION = 1e-6  # largest gaps closer than this (as a fraction of an axis's range) count as equal


class Predictor(Protocol):
    def predict(self, X: np.ndarray) -> np.ndarray: ...


class EncodingRepair(Repair):
    """Round, clip and canonicalise every genotype, so pymoo scores and deduplicates real networks."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space

    def _do(self, problem: Problem, X: np.ndarray, **kwargs: Any) -> np.ndarray:
        return self.space.repair(X)


class SurrogateProblem(Problem):
    """Objectives by name: `acc` = predicted top-1 error, `params`/`macs` exact, `latency` from the
    table. `evaluated` keeps every batch of encodings scored, so callers can check what the search
    actually looked at."""

    def __init__(self, space: SearchSpace, predictor: Predictor, objectives: Sequence[str], n_classes: int,
                 latency: LatencyTable | None = None) -> None:
        self.objectives = check_objectives(objectives)
        if "latency" in self.objectives and latency is None:
            raise ValueError("the latency objective needs a latency table")
        super().__init__(n_var=space.n_var, n_obj=len(self.objectives), xl=space.xl, xu=space.xu, vtype=int)
        self.space, self.predictor, self.n_classes, self.latency = space, predictor, n_classes, latency
        self.evaluated: list[np.ndarray] = []

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        self.evaluated.append(np.array(X, copy=True))
        columns = {}
        if "acc" in self.objectives:
            columns["acc"] = np.asarray(self.predictor.predict(X), dtype=float)
        if {"params", "macs"} & set(self.objectives):
            columns["params"], columns["macs"] = self.space.costs(X, self.n_classes)
        if "latency" in self.objectives:
            columns["latency"] = self.latency.predict(self.space, X)
        out["F"] = np.column_stack([columns[o] for o in self.objectives]).astype(float)


def initial_population(space: SearchSpace, archive: Archive, pop_size: int, rng: np.random.Generator) -> np.ndarray:
    """The archive's front (thinned by survival if too many) topped up with uniform samples: the search
    starts from what is known to be good, plus diversity."""
    front = archive.front()
    front_X = np.array([r["encoding"] for r in front], dtype=np.int64).reshape(len(front), space.n_var)
    front_X = front_X[survive(objective_matrix(front, archive.objectives), pop_size)]
    X = np.concatenate([front_X, space.sample(rng, pop_size)])
    return X[unique_rows(X)][:pop_size]


def generate(space: SearchSpace, predictor: Predictor, archive: Archive, objectives: Sequence[str], n_classes: int,
             *, pop_size: int = 100, n_gen: int = 20, seed: int = 0,
             latency: LatencyTable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(X, predicted F) of the final population of NSGA-II (GA for one objective) on the surrogate."""
    problem = SurrogateProblem(space, predictor, objectives, n_classes, latency)
    sampling = initial_population(space, archive, pop_size, np.random.default_rng(seed))
    settings = dict(pop_size=pop_size, sampling=sampling, crossover=TwoPointCrossover(prob=0.9),
                    mutation=PM(eta=1.0, vtype=float, repair=RoundingRepair()), repair=EncodingRepair(space),
                    eliminate_duplicates=True)
    algorithm: GeneticAlgorithm = GA(**settings) if problem.n_obj == 1 else NSGA2(**settings)
    pop = minimize(problem, algorithm, ("n_gen", n_gen), seed=seed, verbose=False).pop
    return pop.get("X").astype(np.int64), pop.get("F")


class ExactCountRepair(Repair):
    """Make every bit string choose exactly `k` items (a random k of its ones, or all plus random zeros)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def _do(self, problem: Problem, X: np.ndarray, *, random_state: np.random.Generator, **kwargs: Any) -> np.ndarray:
        X = np.asarray(X, dtype=bool)
        priority = X + random_state.random(X.shape)  # ones outrank zeros, ties broken at random
        top = np.argsort(-priority, axis=1)[:, :self.k]
        out = np.zeros_like(X)
        np.put_along_axis(out, top, True, axis=1)
        return out


class SubsetProblem(Problem):
    """Bit string over the candidates -> how unevenly the front and the chosen candidates cover the cost axes
    (normalised per axis): the largest gap in their sorted union on the worst axis (NSGANetV2's subset selection), ties
    broken by the squared gaps (small when the gaps are even). The largest gap alone is flat: every subset that cannot
    close the front's widest gap ties. One scalar orders both: the largest gap in units of GAP_RESOLUTION, rounded, plus
    half the squared gaps' mean over axes (at most 1/2)."""

    def __init__(self, candidate_costs: np.ndarray, front_costs: np.ndarray) -> None:
        super().__init__(n_var=len(candidate_costs), n_obj=1, xl=0, xu=1, vtype=bool)
        both = np.concatenate([candidate_costs, front_costs])
        lo, span = both.min(axis=0), np.ptp(both, axis=0)
        span = np.where(span > 0, span, 1.0)
        self.candidates, self.front = (candidate_costs - lo) / span, (front_costs - lo) / span

    def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        X = np.asarray(X, dtype=bool)
        worst, squares = np.zeros(len(X)), np.zeros(len(X))
        n_axes = self.candidates.shape[1]
        for axis in range(n_axes):
            chosen = np.where(X, self.candidates[None, :, axis], np.nan)
            front = np.broadcast_to(self.front[None, :, axis], (len(X), len(self.front)))
            values = np.sort(np.concatenate([front, chosen], axis=1), axis=1)  # NaN (not chosen) sort last
            gaps = np.nan_to_num(np.diff(values, axis=1), nan=0.0)
            worst = np.maximum(worst, gaps.max(axis=1, initial=0.0))
            squares += (gaps ** 2).sum(axis=1)
        out["F"] = (np.round(worst / GAP_RESOLUTION) + squares / n_axes / 2)[:, None]


def select_subset(candidate_costs: np.ndarray, front_costs: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted indices of `k` candidates that best fill the gaps of the archive front along the
    cost axes (columns), found by a small binary GA; all candidates when there are at most `k`."""
    candidate_costs = np.asarray(candidate_costs, dtype=float).reshape(len(candidate_costs), -1)
    front_costs = np.asarray(front_costs, dtype=float).reshape(-1, candidate_costs.shape[1])
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if len(candidate_costs) <= k:
        return np.arange(len(candidate_costs))
    algorithm = GA(pop_size=SUBSET_POP_SIZE, sampling=BinaryRandomSampling(), crossover=TwoPointCrossover(),
                   mutation=BitflipMutation(), repair=ExactCountRepair(k), eliminate_duplicates=True)
    res = minimize(SubsetProblem(candidate_costs, front_costs), algorithm, ("n_gen", SUBSET_N_GEN),
                   seed=seed, verbose=False)
    return np.flatnonzero(res.X)


def choose_candidates(X: np.ndarray, F_pred: np.ndarray, archive: Archive, objectives: Sequence[str], k: int,
                      seed: int) -> np.ndarray:
    """Up to `k` distinct encodings not in the archive: the lowest predicted errors for a pure
    accuracy search, else a subset spread along the archive front's cost axes."""
    names = check_objectives(objectives)
    X, F_pred = np.asarray(X, dtype=np.int64), np.asarray(F_pred, dtype=float).reshape(len(X), len(names))
    first = unique_rows(X)
    fresh = first[[not archive.contains(x) for x in X[first]]]
    X, F_pred = X[fresh], F_pred[fresh]
    if names == ("acc",):
        return X[np.argsort(F_pred[:, 0], kind="stable")[:k]]
    costs = [i for i, o in enumerate(names) if o != "acc"]
    front_costs = objective_matrix(archive.front(), [names[i] for i in costs])
    return X[select_subset(F_pred[:, costs], front_costs, k, seed)]
