"""RB-IFA: the rank-based score (paper eq. 6), the Improved FireFly Algorithm over the NAT2 encoding,
its Pareto-front variant PF-IFA (paper Algorithm 1), the pseudo-Pareto front over a Wp grid, and the
rank-based selector over an archive (the RB-IFA paper, Nguyen et al., ICAART 2025).

Every metric is a column of "lower is better" values (negate ICD, Synflow, top-1); a search sees
them only through `metrics(X) -> (perf (n, P), eff (n, E))`, cached by encoding, so the algorithms
run on cheap synthetic functions in tests and on subnets in `nat2.tf_search`.

RB-IFA, one generation (brightness = rank score over the current pool, lower is brighter):
  1. pool = population + champion (best so far); every firefly moves toward each brighter pool
     member, dimmest first, x <- x + beta0 exp(-gamma r^2) (x_j - x) + alpha U[-0.5, 0.5) * range,
     r = Euclidean distance of genes divided by their ranges; the brightest random-walks. Every
     pull is rounded, clipped and repaired to a canonical encoding.
  2. A move is kept when the moved firefly ranks no worse than its old position, both ranked in
     one pool (old + moved + champion); fitness is looked up by encoding, so it is never stale.
  3. "Improved": a member of the new population ranks strictly better than the champion when
     the champion is re-ranked together with the population; it becomes the champion and joins
     the archive of bests. Otherwise the stagnation counter grows.
  4. After `max_chances` stagnant generations: genetic iteration (binary tournaments on rank,
     which the best wins whenever drawn; uniform crossover; random-reset mutation; repair) and
     the rank reset of the paper: the champion retires to the archive of bests and the best of
     the new population, ranked among itself, becomes the champion, so that a mediocre early
     champion cannot block progress by holding a low rank against weak early competition.
The result is the archive of bests; its best at Wp is the argmin of the rank score over it.

PF-IFA (the paper's Algorithm 1) replaces the rank score by the non-dominated front index within
the current population (dominance-degree sort), grows the population with the largest front seen
and runs the genetic iteration after `max_chances` generations in which the front did not grow.

Both are seeded and resumable: after initialisation and after every generation the state
(population, champion / front, archive of bests, generation, counters, RNG state, metric cache)
is written atomically to a JSON file; a run started on an existing file continues it and ends
with the same result as an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pymoo.functions.standard.non_dominated_sorting import dominance_degree_non_dominated_sort
from scipy.stats import rankdata

from supernets.settings import check_fields

from ..files import write_json
from ..space import SearchSpace, encoding_key

Metrics = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
STATE_FORMAT = "nat2-ifa-state"
# Direction of the record keys rb_select knows: +1 lower is better, -1 higher is better.
DIRECTIONS: dict[str, int] = {"top1": -1, "val_top1": -1, "test_top1": -1, "predicted_top1": -1, "icd": -1,
                              "synflow": -1, "acc": 1, "params": 1, "macs": 1}


# -- ranks -----------------------------------------------------------------------------------
def check_wp(wp: Any) -> float:
    """Wp as a float; ValueError unless it is a number in [0, 1]."""
    if isinstance(wp, bool) or not isinstance(wp, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(wp) <= 1.0:
        raise ValueError(f"wp = {wp!r}; expected a performance weight in [0, 1] (efficiency weight 1 - wp)")
    return float(wp)


def parse_wps(value: Any) -> list[float]:
    """Wp values from a number, a list, or a comma-separated string ("0.25,0.5,1"); each in [0, 1]."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"wp = {value!r}; expected numbers in [0, 1] separated by commas") from None
    values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
    if not values:
        raise ValueError("wp: expected at least one performance weight in [0, 1]")
    return [check_wp(v) for v in values]


def column_ranks(F: np.ndarray) -> np.ndarray:
    """Ranks 1..n per column, lowest value first, ties sharing their average rank
    (`scipy.stats.rankdata`). NaN and +-inf mean "no valid value": they rank after every finite
    value and share the average of the last ranks, as any tie does."""
    F = np.asarray(F, dtype=float)
    ranks = np.empty_like(F)
    for c in range(F.shape[1]):
        finite = np.isfinite(F[:, c])
        m = int(finite.sum())
        ranks[finite, c] = rankdata(F[finite, c], method="average")
        ranks[~finite, c] = (m + 1 + len(F)) / 2
    return ranks


def _matrix(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected (n, k) with one column per metric, k >= 1")
    return arr


def rank_score(perf: np.ndarray, eff: np.ndarray, wp: float) -> np.ndarray:
    """Eq. 6: R = wp * sum(performance ranks) / P + (1 - wp) * sum(efficiency ranks) / E, ranks
    taken over the rows given (population-relative); lower R is brighter. Columns are "lower is
    better"; a 1-D input is one metric."""
    wp = check_wp(wp)
    perf, eff = _matrix(perf, "perf"), _matrix(eff, "eff")
    if len(perf) != len(eff):
        raise ValueError(f"perf has {len(perf)} rows and eff {len(eff)}; expected one row per candidate in both")
    return wp * column_ranks(perf).mean(axis=1) + (1.0 - wp) * column_ranks(eff).mean(axis=1)


def front_index(F: np.ndarray) -> np.ndarray:
    """Front of every row (0 = non-dominated), all columns minimised, by pymoo's dominance-degree
    sort (DDA-ENS). NaN and -inf count as +inf, the worst value; equal rows share a front."""
    F = np.asarray(F, dtype=float)
    if F.ndim != 2:
        raise ValueError(f"F has shape {F.shape}; expected (n, n_objectives)")
    index = np.zeros(len(F), dtype=np.int64)
    if len(F):
        F = np.where(np.isnan(F) | (F == -np.inf), np.inf, F)
        for k, front in enumerate(dominance_degree_non_dominated_sort(F)):
            index[np.asarray(front, dtype=np.int64)] = k
    return index


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Sorted indices of the non-dominated rows of F (minimised)."""
    return np.flatnonzero(front_index(F) == 0)


# -- settings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class IFASettings:
    """The Improved FireFly Algorithm's parameters (defaults of the IFA code, config `rbifa`)."""

    population: int = 20
    generations: int = 100
    alpha: float = 0.5
    beta0: float = 0.95
    gamma: float = 0.15
    max_chances: int = 5
    mutation_prob: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, "rbifa", integers={"population": 2, "generations": 0, "max_chances": 1, "seed": 0},
                     numbers={"alpha": (0, math.inf), "beta0": (0, 1), "gamma": (0, math.inf),
                              "mutation_prob": (0, 1)})


# -- metric cache ----------------------------------------------------------------------------
class MetricCache:
    """`metrics` by encoding: each distinct encoding is scored once, new ones in one batch. Share
    one cache between runs on the same metrics (e.g. the Wp grid of a pseudo front)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.values: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self.shape: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.int64)
        keys = [encoding_key(x) for x in X]
        new = list(dict.fromkeys(k for k in keys if k not in self.values))
        if new:
            perf, eff = self.metrics(np.array(new, dtype=np.int64))
            perf, eff = _matrix(perf, "metrics(X)[0] (perf)"), _matrix(eff, "metrics(X)[1] (eff)")
            if len(perf) != len(new) or len(eff) != len(new):
                raise ValueError(f"metrics returned {len(perf)} perf and {len(eff)} eff rows for {len(new)} "
                                 "encodings; expected one row per encoding")
            self._check_shape(perf.shape[1], eff.shape[1])
            self.values.update((k, (p, e)) for k, p, e in zip(new, perf, eff))
        if not keys:
            n_perf, n_eff = self.shape or (0, 0)
            return np.zeros((0, n_perf)), np.zeros((0, n_eff))
        return np.array([self.values[k][0] for k in keys]), np.array([self.values[k][1] for k in keys])

    def _check_shape(self, n_perf: int, n_eff: int) -> None:
        if self.shape is None:
            self.shape = (n_perf, n_eff)
        elif self.shape != (n_perf, n_eff):
            raise ValueError(f"metrics returned {n_perf} perf and {n_eff} eff columns; earlier calls gave "
                             f"{self.shape[0]} and {self.shape[1]}")

    def to_json(self) -> list[list[list[float]]]:
        return [[list(k), p.tolist(), e.tolist()] for k, (p, e) in self.values.items()]

    def load(self, entries: Sequence[Sequence[Sequence[float]]]) -> None:
        """Add entries written by `to_json` (values already known are kept)."""
        for key, perf, eff in entries:
            self._check_shape(len(perf), len(eff))
            self.values.setdefault(encoding_key(key), (np.asarray(perf, dtype=float), np.asarray(eff, dtype=float)))


# -- results and state -----------------------------------------------------------------------
@dataclass
class IFAResult:
    """RB-IFA: `X` is the archive of bests in the order found and `best` the brightest of it at
    wp; PF-IFA: `X` is the last front of the population and `best` None. `perf` / `eff` are X's metrics."""

    X: np.ndarray
    perf: np.ndarray
    eff: np.ndarray
    best: np.ndarray | None
    generations: int
    n_evaluated: int
    history: list[dict[str, Any]] = field(default_factory=list)


def _identity(method: str, wp: float | None, settings: IFASettings, space: SearchSpace) -> dict[str, Any]:
    """What a state file must match to be resumed; `generations` may grow between runs."""
    fixed = {k: v.item() if isinstance(v, np.generic) else v for k, v in asdict(settings).items()
             if k != "generations"}
    return {"format": STATE_FORMAT, "method": method, "wp": wp, "settings": fixed,
            "xl": space.xl.tolist(), "xu": space.xu.tolist()}


def _load_state(path: Path | None, identity: dict[str, Any]) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"IFA state {path} is not valid JSON ({err}); delete it to start over") from None
    if not isinstance(state, dict):
        raise ValueError(f"IFA state {path}: expected a JSON object; delete it to start over")
    for key, value in identity.items():
        if state.get(key) != value:
            raise ValueError(f"IFA state {path} was written with {key} = {state.get(key)!r}, not {value!r}; "
                             "resume with the same settings or delete the file to start over")
    return state


def _rows(X: Any, n_var: int) -> np.ndarray:
    return np.asarray(X, dtype=np.int64).reshape(-1, n_var)


def _unique(X: np.ndarray) -> np.ndarray:
    """Distinct rows in order of first occurrence."""
    return X[np.sort(np.unique(X, axis=0, return_index=True)[1])] if len(X) else X


# -- operators -------------------------------------------------------------------------------
def _move(space: SearchSpace, X: np.ndarray, bright: np.ndarray, attractors: np.ndarray,
          attractor_bright: np.ndarray, s: IFASettings, rng: np.random.Generator) -> np.ndarray:
    """Firefly moves (module docstring, step 1); lower brightness value = brighter."""
    span = (space.xu - space.xl).astype(float)
    scale = np.where(span > 0, span, 1.0)
    out = np.empty_like(X)
    for i in range(len(X)):
        x = X[i].astype(float)
        brighter = np.flatnonzero(attractor_bright < bright[i])
        brighter = brighter[np.argsort(-attractor_bright[brighter], kind="stable")]
        if not len(brighter):
            x = space.repair(x + s.alpha * (rng.random(space.n_var) - 0.5) * span).astype(float)
        for j in brighter:
            d = (x - attractors[j]) / scale
            r2 = float(d @ d)
            beta = s.beta0 * math.exp(-s.gamma * r2) if r2 > 0 else s.beta0
            x = space.repair(x + beta * (attractors[j] - x)
                             + s.alpha * (rng.random(space.n_var) - 0.5) * span).astype(float)
        out[i] = x
    return out


def _genetic(space: SearchSpace, pool: np.ndarray, bright: np.ndarray, n: int, s: IFASettings,
             rng: np.random.Generator) -> np.ndarray:
    """`n` children: parents by binary tournament on brightness (with replacement, so the brightest
    wins every tournament it enters), uniform crossover, then with probability `mutation_prob`
    random reset of each variable gene with rate 1/n_var (at least one), repaired."""
    pairs = rng.integers(len(pool), size=(2, n, 2))
    winners = np.where(bright[pairs[..., 0]] <= bright[pairs[..., 1]], pairs[..., 0], pairs[..., 1])
    mothers, fathers = pool[winners[0]], pool[winners[1]]
    children = np.where(rng.random((n, space.n_var)) < 0.5, mothers, fathers)
    variable = np.flatnonzero(space.xu > space.xl)
    reset = rng.random((n, len(variable))) < 1.0 / len(variable)
    reset[np.arange(n), rng.integers(len(variable), size=n)] = True
    reset &= (rng.random(n) < s.mutation_prob)[:, None]
    values = rng.integers(space.xl[variable], space.xu[variable] + 1, size=(n, len(variable)))
    children[:, variable] = np.where(reset, values, children[:, variable])
    return space.repair(children)


def _stopper(stop: Callable[[], bool] | None) -> Callable[[], bool]:
    return stop if stop is not None else (lambda: False)


# -- RB-IFA ----------------------------------------------------------------------------------
def rb_ifa(space: SearchSpace, metrics: Metrics | MetricCache, wp: float, settings: IFASettings = IFASettings(),
           state_path: str | Path | None = None, *, stop: Callable[[], bool] | None = None,
           on_generation: Callable[[dict[str, Any]], None] | None = None) -> IFAResult:
    """Rank-based IFA at performance weight `wp` for `settings.generations` generations (or until
    `stop()` is true at the start of one); continues `state_path` when it exists. `on_generation`
    gets each generation's history entry after its state is saved."""
    wp = check_wp(wp)
    cache = metrics if isinstance(metrics, MetricCache) else MetricCache(metrics)
    path = Path(state_path) if state_path is not None else None
    identity = _identity("rbifa", wp, settings, space)
    state = _load_state(path, identity)
    rng = np.random.default_rng(settings.seed)
    n_var = space.n_var

    def score(X: np.ndarray) -> np.ndarray:
        return rank_score(*cache(X), wp)

    def pool_of(X: np.ndarray, champion: np.ndarray) -> np.ndarray:
        """Champion first, so that ties keep it (improvement must be strict)."""
        return np.vstack([champion[None], X])

    if state is None:
        X = space.sample(rng, settings.population)
        champion = X[int(np.argmin(score(X)))]
        bests, generation, stagnant, history = [champion], 0, 0, []
    else:
        cache.load(state["cache"])
        rng.bit_generator.state = state["rng"]
        X, champion = _rows(state["X"], n_var), _rows(state["champion"], n_var)[0]
        bests = list(_rows(state["bests"], n_var))
        generation, stagnant, history = state["generation"], state["stagnant"], state["history"]

    def save() -> None:
        if path is not None:
            write_json(path, {**identity, "generation": generation, "X": X.tolist(), "champion": champion.tolist(),
                              "bests": [b.tolist() for b in bests], "stagnant": stagnant,
                              "rng": rng.bit_generator.state, "cache": cache.to_json(), "history": history},
                       indent=None)

    if state is None:
        save()
    should_stop = _stopper(stop)
    while generation < settings.generations and not should_stop():
        t0 = time.perf_counter()
        pool = pool_of(X, champion)
        R = score(pool)
        moved = _move(space, X, R[1:], pool, R, settings, rng)
        joint = score(np.vstack([champion[None], X, moved]))
        n = len(X)
        accept = joint[1 + n:] <= joint[1:1 + n]
        X = np.where(accept[:, None], moved, X)
        R = score(pool_of(X, champion))
        if np.argmin(R) != 0:
            champion, stagnant = X[int(np.argmin(R)) - 1], 0
            bests.append(champion)
        else:
            stagnant += 1
        reset = stagnant >= settings.max_chances
        if reset:
            X = _genetic(space, pool_of(X, champion), R, settings.population, settings, rng)
            champion, stagnant = X[int(np.argmin(score(X)))], 0
            bests.append(champion)
        generation += 1
        history.append({"generation": generation, "evaluated": len(cache), "accepted": int(accept.sum()),
                        "stagnant": stagnant, "genetic": reset, "seconds": time.perf_counter() - t0})
        save()
        if on_generation is not None:
            on_generation(history[-1])
    B = _unique(np.array(bests, dtype=np.int64))
    perf, eff = cache(B)
    best = B[int(np.argmin(rank_score(perf, eff, wp)))]
    return IFAResult(B, perf, eff, best, generation, len(cache), history)


# -- PF-IFA ----------------------------------------------------------------------------------
def _objectives(cache: MetricCache, X: np.ndarray) -> np.ndarray:
    return np.hstack(cache(X))


def pf_ifa(space: SearchSpace, metrics: Metrics | MetricCache, settings: IFASettings = IFASettings(),
           state_path: str | Path | None = None, *, stop: Callable[[], bool] | None = None,
           on_generation: Callable[[dict[str, Any]], None] | None = None) -> IFAResult:
    """Pareto-front IFA, the paper's Algorithm 1, on all perf and eff columns.

    Brightness is the non-dominated front index within the current population. After each firefly
    iteration the front is the current population's non-dominated set. When it outnumbers the
    largest front so far (0 at the start), that size is kept and the population grows to
    `population` + that size with random newcomers; otherwise one chance is spent. Growth does not
    restore chances: the genetic iteration replaces the population (same size) when none is left,
    and only then are they restored. The result is the last front computed, as the paper's
    candidates list (a genetic iteration in the last generation does not replace it).

    Why `population` + front size: Algorithm 1 sets the population size from the front's size, and
    the front of the current population never outnumbers it, so the size alone could only shrink
    the population; keeping `population` members beyond the largest front is the reading under
    which the population grows with the front and the front has room to keep growing.
    """
    cache = metrics if isinstance(metrics, MetricCache) else MetricCache(metrics)
    path = Path(state_path) if state_path is not None else None
    identity = _identity("pfifa", None, settings, space)
    state = _load_state(path, identity)
    rng = np.random.default_rng(settings.seed)
    n_var = space.n_var

    def front_of(X: np.ndarray) -> np.ndarray:
        X = _unique(X)
        return X[non_dominated(_objectives(cache, X))]

    if state is None:
        X = space.sample(rng, settings.population)
        front = front_of(X)
        front_size, chances, generation, history = 0, settings.max_chances, 0, []
    else:
        cache.load(state["cache"])
        rng.bit_generator.state = state["rng"]
        X, front = _rows(state["X"], n_var), _rows(state["front"], n_var)
        front_size, chances = state["front_size"], state["chances"]
        generation, history = state["generation"], state["history"]

    def save() -> None:
        if path is not None:
            write_json(path, {**identity, "generation": generation, "X": X.tolist(), "front": front.tolist(),
                              "front_size": front_size, "chances": chances, "rng": rng.bit_generator.state,
                              "cache": cache.to_json(), "history": history}, indent=None)

    if state is None:
        save()
    should_stop = _stopper(stop)
    while generation < settings.generations and not should_stop():
        t0 = time.perf_counter()
        n = len(X)
        bright = front_index(_objectives(cache, X))
        moved = _move(space, X, bright, X, bright, settings, rng)
        joint = front_index(_objectives(cache, np.vstack([X, moved])))
        accept = joint[n:] <= joint[:n]
        X = np.where(accept[:, None], moved, X)
        front = front_of(X)
        if len(front) > front_size:
            front_size = len(front)
            X = np.vstack([X, space.sample(rng, settings.population + front_size - len(X))])
        else:
            chances -= 1
        genetic = chances == 0
        if genetic:
            X = _genetic(space, X, front_index(_objectives(cache, X)), len(X), settings, rng)
            chances = settings.max_chances
        generation += 1
        history.append({"generation": generation, "evaluated": len(cache), "accepted": int(accept.sum()),
                        "front_size": len(front), "population": len(X), "chances": chances, "genetic": genetic,
                        "seconds": time.perf_counter() - t0})
        save()
        if on_generation is not None:
            on_generation(history[-1])
    perf, eff = cache(front)
    return IFAResult(front, perf, eff, None, generation, len(cache), history)


# -- pseudo-Pareto front ---------------------------------------------------------------------
@dataclass
class PseudoFront:
    """The non-dominated union of the archives of bests of RB-IFA runs over a Wp grid."""

    X: np.ndarray
    perf: np.ndarray
    eff: np.ndarray
    runs: dict[float, IFAResult]


def pseudo_front(space: SearchSpace, metrics: Metrics | MetricCache, wps: Sequence[float],
                 settings: IFASettings = IFASettings(), state_path: Callable[[float], Path] | None = None, *,
                 seconds_per_wp: float | None = None,
                 on_generation: Callable[[float, dict[str, Any]], None] | None = None) -> PseudoFront:
    """RB-IFA at every wp (one shared metric cache, the state of wp in `state_path(wp)`), then the
    non-dominated union of their archives of bests over all perf and eff columns.
    `seconds_per_wp` stops each run after that wall time (at a generation boundary)."""
    wps = parse_wps(list(wps))
    cache = metrics if isinstance(metrics, MetricCache) else MetricCache(metrics)
    runs = {}
    for wp in wps:
        deadline = None if seconds_per_wp is None else time.perf_counter() + seconds_per_wp
        runs[wp] = rb_ifa(space, cache, wp, settings, None if state_path is None else state_path(wp),
                          stop=None if deadline is None else (lambda d=deadline: time.perf_counter() >= d),
                          on_generation=None if on_generation is None else (lambda e, w=wp: on_generation(w, e)))
    X = _unique(np.vstack([r.X for r in runs.values()]))
    X = X[non_dominated(_objectives(cache, X))]
    perf, eff = cache(X)
    return PseudoFront(X, perf, eff, runs)


# -- the selector ----------------------------------------------------------------------------
def _signed(keys: Sequence[str] | Mapping[str, int], role: str) -> dict[str, int]:
    if isinstance(keys, str):
        keys = [keys]
    if isinstance(keys, Mapping):
        signs = dict(keys)
    else:
        unknown = [k for k in keys if k not in DIRECTIONS]
        if unknown:
            raise ValueError(f"{role} keys {unknown} have no known direction; pass a mapping key -> +1 "
                             f"(lower is better) or -1 (higher is better), or use {sorted(DIRECTIONS)}")
        signs = {k: DIRECTIONS[k] for k in keys}
    if not signs:
        raise ValueError(f"{role} keys: expected at least one record key")
    bad = {k: v for k, v in signs.items() if v not in (1, -1)}
    if bad:
        raise ValueError(f"{role} directions {bad}: expected +1 (lower is better) or -1 (higher is better)")
    return signs


def _record_matrix(records: Sequence[Mapping[str, Any]], signs: dict[str, int]) -> np.ndarray:
    out = np.empty((len(records), len(signs)))
    for i, record in enumerate(records):
        for c, (key, sign) in enumerate(signs.items()):
            if key not in record:
                raise ValueError(f"record {i} has no {key!r}; its keys are {sorted(record)}")
            value = record[key]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
                raise ValueError(f"record {i}: {key} = {value!r}; expected a number (or null, ranked last)")
            out[i, c] = np.nan if value is None else sign * float(value)
    return out


def rb_scores(records: Sequence[Mapping[str, Any]], wp: float,
              perf_keys: Sequence[str] | Mapping[str, int] = ("val_top1",),
              eff_keys: Sequence[str] | Mapping[str, int] = ("macs",)) -> np.ndarray:
    """Eq. 6 over `records` (e.g. the rows of the final front or an archive's records). Keys in
    `DIRECTIONS` know their direction; others need a mapping key -> +1 (lower is better) / -1.
    A missing value (None) ranks last."""
    if not records:
        raise ValueError("rb_scores: expected at least one record")
    perf = _record_matrix(records, _signed(perf_keys, "performance"))
    eff = _record_matrix(records, _signed(eff_keys, "efficiency"))
    return rank_score(perf, eff, wp)


def rb_select(records: Sequence[Mapping[str, Any]], wp: float,
              perf_keys: Sequence[str] | Mapping[str, int] = ("val_top1",),
              eff_keys: Sequence[str] | Mapping[str, int] = ("macs",)) -> list[int]:
    """Indices of `records`, brightest first by `rb_scores` at `wp`: wp = 1 puts the most accurate
    first, wp = 0 the cheapest. Ties are broken by the balanced score (wp = 0.5), then by position."""
    primary = rb_scores(records, wp, perf_keys, eff_keys)
    balanced = rb_scores(records, 0.5, perf_keys, eff_keys)
    return [int(i) for i in np.lexsort((np.arange(len(records)), balanced, primary))]
