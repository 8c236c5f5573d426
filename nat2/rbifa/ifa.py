"""RB-IFA (Nguyen et al., ICAART 2025): the rank score (eq. 6), the Improved FireFly Algorithm over the
NAT2 encoding, its Pareto-front variant PF-IFA (Algorithm 1), the pseudo-Pareto front over a Wp grid
and the rank-based selector. Metrics are "lower is better" columns (ICD, Synflow, top-1 negated), seen
only through `metrics(X) -> (perf (n, P), eff (n, E))`, cached by encoding (tests use cheap ones).

One RB-IFA generation (brightness: rank score over the current pool, lower is brighter):
  1. Each firefly moves toward every brighter member of population + champion (best so far), dimmest
     first: x <- repair(x + beta0 exp(-gamma r^2) (x_j - x) + alpha U[-0.5, 0.5) * range), r the gene
     distance scaled by the ranges; the brightest random-walks.
  2. A move is kept when the moved firefly ranks no worse than its old position, both ranked in one
     pool with the champion (fitness is looked up by encoding, so it is never stale).
  3. A member ranking strictly better than the champion, re-ranked with the population, becomes the
     champion and joins the archive of bests; otherwise stagnation grows.
  4. After `max_chances` stagnant generations: genetic iteration and the paper's rank reset (the
     champion retires; the new population's best, ranked among itself, takes over), so that a
     mediocre early champion, ranked against weak competition, cannot block progress.
The result is the archive of bests; the choice at Wp is its argmin of the rank score.
PF-IFA ranks by the front index within the population, grows the population with the largest front
seen, and runs the genetic iteration after `max_chances` generations without growth.
Both are seeded and resumable: the state (RNG and metric cache included) is written atomically after
every generation; a run on an existing state file ends as an uninterrupted run does.
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
from ..space import SearchSpace, encoding_key, unique_rows

Metrics = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
Keys = Sequence[str] | Mapping[str, int]  # record keys, with their directions (+1 / -1) where not in DIRECTIONS
STATE_FORMAT = "nat2-ifa-state"
# Direction of the record keys rb_select knows: +1 lower is better, -1 higher is better.
DIRECTIONS: dict[str, int] = {"top1": -1, "val_top1": -1, "test_top1": -1, "predicted_top1": -1, "icd": -1,
                              "synflow": -1, "acc": 1, "params": 1, "macs": 1, "latency": 1}


def check_wp(wp: Any) -> float:
    """Wp as a float; ValueError unless it is a number in [0, 1]."""
    if isinstance(wp, bool) or not isinstance(wp, (int, float, np.integer, np.floating)) or not 0.0 <= float(wp) <= 1.0:
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
    """Ranks 1..n per column, lowest first, ties sharing their average rank (`scipy.stats.rankdata`);
    NaN and +-inf ("no valid value") rank after every finite value, tied among themselves."""
    F = np.asarray(F, dtype=float)
    ranks = np.empty_like(F)
    for c in range(F.shape[1]):
        finite = np.isfinite(F[:, c])
        ranks[finite, c] = rankdata(F[finite, c], method="average")
        ranks[~finite, c] = (int(finite.sum()) + 1 + len(F)) / 2
    return ranks


def _matrix(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    arr = arr[:, None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} has shape {arr.shape}; expected (n, k) with one column per metric, k >= 1")
    return arr


def rank_score(perf: np.ndarray, eff: np.ndarray, wp: float) -> np.ndarray:
    """Eq. 6: R = wp * sum(performance ranks) / P + (1 - wp) * sum(efficiency ranks) / E, ranks over the
    rows given (population-relative); lower R is brighter. Columns are "lower is better", 1-D is one."""
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
                     numbers={"alpha": (0, math.inf), "beta0": (0, 1), "gamma": (0, math.inf), "mutation_prob": (0, 1)})


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
        keys = [encoding_key(x) for x in np.asarray(X, dtype=np.int64)]
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


class _Run:
    """What RB-IFA and PF-IFA share: metric cache, RNG and state file (which must match the run in all but
    `generations`, that may grow). `state` is the saved state (None for a new run), its cache and RNG restored."""

    def __init__(self, method: str, wp: float | None, space: SearchSpace, metrics: Metrics | MetricCache,
                 settings: IFASettings, state_path: str | Path | None) -> None:
        self.cache = metrics if isinstance(metrics, MetricCache) else MetricCache(metrics)
        self.path = Path(state_path) if state_path is not None else None
        fixed = {k: v.item() if isinstance(v, np.generic) else v for k, v in asdict(settings).items()
                 if k != "generations"}
        self.identity = {"format": STATE_FORMAT, "method": method, "wp": wp, "settings": fixed,
                         "xl": space.xl.tolist(), "xu": space.xu.tolist()}
        self.state = self._load() if self.path is not None and self.path.exists() else None
        self.rng = np.random.default_rng(settings.seed)
        self.n_var = space.n_var
        if self.state is not None:
            self.cache.load(self.state["cache"])
            self.rng.bit_generator.state = self.state["rng"]

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"IFA state {self.path} is not valid JSON ({err}); delete it to start over") from None
        if not isinstance(state, dict):
            raise ValueError(f"IFA state {self.path}: expected a JSON object; delete it to start over")
        for key, value in self.identity.items():
            if state.get(key) != value:
                raise ValueError(f"IFA state {self.path} was written with {key} = {state.get(key)!r}, not {value!r}; "
                                 "resume with the same settings or delete the file to start over")
        return state

    def rows(self, key: str) -> np.ndarray:
        """The encodings saved under `key`, one per row."""
        return np.asarray(self.state[key], dtype=np.int64).reshape(-1, self.n_var)

    def save(self, generation: int, X: np.ndarray, history: list[dict[str, Any]], **fields: Any) -> None:
        """Write the state atomically (the method's `fields` after the population)."""
        if self.path is not None:
            write_json(self.path, {**self.identity, "generation": generation, "X": X.tolist(), **fields,
                                   "rng": self.rng.bit_generator.state, "cache": self.cache.to_json(),
                                   "history": history}, indent=None)


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
    children = np.where(rng.random((n, space.n_var)) < 0.5, pool[winners[0]], pool[winners[1]])
    variable = np.flatnonzero(space.xu > space.xl)
    reset = rng.random((n, len(variable))) < 1.0 / len(variable)
    reset[np.arange(n), rng.integers(len(variable), size=n)] = True
    reset &= (rng.random(n) < s.mutation_prob)[:, None]
    values = rng.integers(space.xl[variable], space.xu[variable] + 1, size=(n, len(variable)))
    children[:, variable] = np.where(reset, values, children[:, variable])
    return space.repair(children)


def rb_ifa(space: SearchSpace, metrics: Metrics | MetricCache, wp: float, settings: IFASettings = IFASettings(),
           state_path: str | Path | None = None, *, stop: Callable[[], bool] | None = None,
           on_generation: Callable[[dict[str, Any]], None] | None = None) -> IFAResult:
    """Rank-based IFA at performance weight `wp` for `settings.generations` generations (or until `stop()` is true
    at the start of one), continuing `state_path` if it exists; `on_generation` gets each history entry once saved."""
    wp = check_wp(wp)
    run = _Run("rbifa", wp, space, metrics, settings, state_path)
    cache, rng, state = run.cache, run.rng, run.state

    def score(X: np.ndarray) -> np.ndarray:
        return rank_score(*cache(X), wp)

    def pool_of(X: np.ndarray, champion: np.ndarray) -> np.ndarray:
        """Champion first, so that ties keep it (improvement must be strict)."""
        return np.vstack([champion[None], X])

    def save() -> None:
        run.save(generation, X, history, champion=champion.tolist(), bests=[b.tolist() for b in bests],
                 stagnant=stagnant)

    if state is None:
        X = space.sample(rng, settings.population)
        champion = X[int(np.argmin(score(X)))]
        bests, generation, stagnant, history = [champion], 0, 0, []
        save()
    else:
        X, champion, bests = run.rows("X"), run.rows("champion")[0], list(run.rows("bests"))
        generation, stagnant, history = state["generation"], state["stagnant"], state["history"]
    while generation < settings.generations and not (stop is not None and stop()):
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
    B = np.array(bests, dtype=np.int64)
    B = B[unique_rows(B)]
    perf, eff = cache(B)
    best = B[int(np.argmin(rank_score(perf, eff, wp)))]
    return IFAResult(B, perf, eff, best, generation, len(cache), history)


def _objectives(cache: MetricCache, X: np.ndarray) -> np.ndarray:
    return np.hstack(cache(X))


def pf_ifa(space: SearchSpace, metrics: Metrics | MetricCache, settings: IFASettings = IFASettings(),
           state_path: str | Path | None = None, *, stop: Callable[[], bool] | None = None,
           on_generation: Callable[[dict[str, Any]], None] | None = None) -> IFAResult:
    """Pareto-front IFA (the paper's Algorithm 1) on all perf and eff columns; brightness is the front index within the
    population. When the population's front outnumbers the largest so far (0 at first), the population grows to
    `population` + its size with random newcomers; otherwise a chance is spent, and with none left the genetic iteration
    replaces the population (same size) and restores them. The result is the last front computed, before any genetic
    iteration (the paper's candidates list). Why `population` + front size: Algorithm 1 sizes the population by the
    front, which never outnumbers its population, so that alone could only shrink it."""
    run = _Run("pfifa", None, space, metrics, settings, state_path)
    cache, rng, state = run.cache, run.rng, run.state

    def front_of(X: np.ndarray) -> np.ndarray:
        X = X[unique_rows(X)]
        return X[non_dominated(_objectives(cache, X))]

    def save() -> None:
        run.save(generation, X, history, front=front.tolist(), front_size=front_size, chances=chances)

    if state is None:
        X = space.sample(rng, settings.population)
        front = front_of(X)
        front_size, chances, generation, history = 0, settings.max_chances, 0, []
        save()
    else:
        X, front = run.rows("X"), run.rows("front")
        front_size, chances = state["front_size"], state["chances"]
        generation, history = state["generation"], state["history"]
    while generation < settings.generations and not (stop is not None and stop()):
        t0 = time.perf_counter()
        bright = front_index(_objectives(cache, X))
        moved = _move(space, X, bright, X, bright, settings, rng)
        joint = front_index(_objectives(cache, np.vstack([X, moved])))
        accept = joint[len(X):] <= joint[:len(X)]
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
    return IFAResult(front, *cache(front), None, generation, len(cache), history)


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
    """RB-IFA at every wp (one shared metric cache, wp's state in `state_path(wp)`), then the union of their archives
    of bests, non-dominated over all columns; `seconds_per_wp` stops each run after that time (between generations)."""
    wps = parse_wps(list(wps))
    cache = metrics if isinstance(metrics, MetricCache) else MetricCache(metrics)
    runs = {}
    for wp in wps:
        deadline = None if seconds_per_wp is None else time.perf_counter() + seconds_per_wp
        runs[wp] = rb_ifa(space, cache, wp, settings, None if state_path is None else state_path(wp),
                          stop=None if deadline is None else (lambda d=deadline: time.perf_counter() >= d),
                          on_generation=None if on_generation is None else (lambda e, w=wp: on_generation(w, e)))
    X = np.vstack([r.X for r in runs.values()])
    X = X[unique_rows(X)]
    X = X[non_dominated(_objectives(cache, X))]
    return PseudoFront(X, *cache(X), runs)


def _signed(keys: Keys, role: str) -> dict[str, int]:
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


def rb_scores(records: Sequence[Mapping[str, Any]], wp: float, perf_keys: Keys = ("val_top1",),
              eff_keys: Keys = ("macs",)) -> np.ndarray:
    """Eq. 6 over `records` (e.g. the rows of the final front or an archive's records). Keys in `DIRECTIONS` know their
    direction; others need a mapping key -> +1 (lower is better) / -1. A missing value (None) ranks last."""
    if not records:
        raise ValueError("rb_scores: expected at least one record")
    perf = _record_matrix(records, _signed(perf_keys, "performance"))
    eff = _record_matrix(records, _signed(eff_keys, "efficiency"))
    return rank_score(perf, eff, wp)


def rb_select(records: Sequence[Mapping[str, Any]], wp: float, perf_keys: Keys = ("val_top1",),
              eff_keys: Keys = ("macs",)) -> list[int]:
    """Indices of `records`, brightest first by `rb_scores` at `wp`: wp = 1 puts the most accurate
    first, wp = 0 the cheapest. Ties are broken by the balanced score (wp = 0.5), then by position."""
    primary = rb_scores(records, wp, perf_keys, eff_keys)
    balanced = rb_scores(records, 0.5, perf_keys, eff_keys)
    return [int(i) for i in np.lexsort((np.arange(len(records)), balanced, primary))]
