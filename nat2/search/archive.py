"""The archive of evaluated subnets: fixed size, no duplicate encodings, survival by objectives.

A record is a dict with "encoding" (canonical list[int]), "top1" (validation top-1 in %),
"params", "macs", "iteration" and, when it is an objective, "latency" (ms, predicted from a
latency table); extra keys are kept. Objectives are always named (`OBJECTIVES`)
and minimised: `acc` is the top-1 error 100 - top1. Survival follows NSGA-II (two objectives) or
NSGA-III (three or more), so the archive keeps a spread-out front rather than the most accurate nets.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga3 import ReferenceDirectionSurvival
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.indicators.hv import HV
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
from pymoo.util.ref_dirs import get_reference_directions
from pymoo.util.reference_direction import get_partition_closest_to_points

from ..files import write_json
from ..space import EncodingError, SearchSpace, encoding_key, unique_rows

OBJECTIVES = ("acc", "params", "macs", "latency")
COSTS = ("params", "macs", "latency")  # the objectives a record holds as they are
FORMAT = "nat2-archive"
Record = dict[str, Any]


class ArchiveError(ValueError):
    """An archive file or record is corrupt, incomplete or does not fit the search space."""


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """Objective names as a tuple; unknown, repeated or no names raise ValueError."""
    names = tuple(objectives)
    if not names or any(o not in OBJECTIVES for o in names) or len(set(names)) != len(names):
        raise ValueError(f"objectives {list(names)} must be distinct names from {list(OBJECTIVES)}")
    return names


def objective_matrix(records: Sequence[Record], objectives: Sequence[str]) -> np.ndarray:
    """(n, len(objectives)) values to minimise, columns in the order the names are given."""
    names = check_objectives(objectives)
    return np.array([[100.0 - r["top1"] if o == "acc" else r[o] for o in names] for r in records],
                    dtype=float).reshape(len(records), len(names))


def survive(F: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of the `n` rows of `F` that survive: a sort for one objective, NSGA-II rank
    and crowding for two, NSGA-III reference directions for more (crowding degrades there)."""
    F = np.asarray(F, dtype=float)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if n >= len(F):
        return np.arange(len(F))
    n_obj = F.shape[1]
    if n_obj == 1:
        return np.sort(np.argsort(F[:, 0], kind="stable")[:n])
    if n_obj == 2:
        survival = RankAndCrowding()
    else:
        partitions = max(1, get_partition_closest_to_points(n, n_obj))
        survival = ReferenceDirectionSurvival(get_reference_directions("das-dennis", n_obj, n_partitions=partitions))
    kept = survival.do(Problem(n_var=1, n_obj=n_obj), Population.new(F=F), n_survive=n, return_indices=True,
                       random_state=np.random.default_rng(seed))
    return np.sort(np.asarray(kept, dtype=np.int64))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _check_record(record: Any, where: str, space: SearchSpace | None, objectives: Sequence[str]) -> Record:
    """The record with a plain list[int] encoding; ArchiveError naming `where` and the field if invalid."""
    if not isinstance(record, dict):
        raise ArchiveError(f"{where}: expected a mapping; got {type(record).__name__}")
    costs = [f for f in COSTS if f in ("params", "macs") or f in objectives or f in record]
    missing = [f for f in ("encoding", "top1", *costs, "iteration") if f not in record]
    if missing:
        raise ArchiveError(f"{where}: missing field(s) {missing}")
    enc = record["encoding"]
    if not isinstance(enc, (list, tuple, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in enc):
        raise ArchiveError(f"{where}: 'encoding' must be a list of integers; got {enc!r}")
    if not (_is_number(record["top1"]) and 0 <= record["top1"] <= 100):
        raise ArchiveError(f"{where}: 'top1' must be a percentage in 0..100; got {record['top1']!r}")
    for field in costs:
        if not (_is_number(record[field]) and record[field] >= 0):
            raise ArchiveError(f"{where}: {field!r} must be a non-negative number; got {record[field]!r}")
    if not (isinstance(record["iteration"], (int, np.integer)) and not isinstance(record["iteration"], bool)
            and record["iteration"] >= 0):
        raise ArchiveError(f"{where}: 'iteration' must be a non-negative integer; got {record['iteration']!r}")
    if space is not None:
        try:
            if not space.is_canonical(np.asarray(enc, dtype=np.int64)):
                raise ArchiveError(f"{where}: encoding {list(enc)} is not canonical (repair gives "
                                   f"{space.repair(np.asarray(enc)).tolist()})")
        except EncodingError as err:
            raise ArchiveError(f"{where}: {err}") from None
    plain = {f: record[f].item() if isinstance(record[f], np.generic) else record[f]
             for f in ("top1", *costs)}
    return dict(record, **plain, encoding=[int(v) for v in enc], iteration=int(record["iteration"]))


class Archive:
    """Evaluated subnets, unique by canonical encoding, shrunk back to `size` by survival; the
    pinned encodings (the min and max networks) always stay so the front keeps its extremes."""

    def __init__(self, size: int, objectives: Sequence[str], pinned: Iterable[Iterable[int]] = ()) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"archive size must be a positive integer; got {size!r}")
        self.size = size
        self.objectives = check_objectives(objectives)
        self.pinned = [list(encoding_key(p)) for p in pinned]
        self.records: list[Record] = []
        self._keys: set[tuple[int, ...]] = set()

    def __len__(self) -> int:
        return len(self.records)

    def contains(self, encoding: Iterable[int]) -> bool:
        return encoding_key(encoding) in self._keys

    def add(self, records: Iterable[Record], space: SearchSpace | None = None) -> list[Record]:
        """Append the records whose encodings are new; returns those (checked, encodings as lists)."""
        added = []
        for i, record in enumerate(records):
            record = _check_record(record, f"record {i}", space, self.objectives)
            key = encoding_key(record["encoding"])
            if key not in self._keys:
                self._keys.add(key)
                self.records.append(record)
                added.append(record)
        return added

    def shrink(self, seed: int = 0) -> None:
        """Keep `size` records: the pinned ones plus the survivors of the others."""
        pinned = {encoding_key(p) for p in self.pinned}
        is_pinned = np.array([encoding_key(r["encoding"]) in pinned for r in self.records], dtype=bool)
        rest = np.flatnonzero(~is_pinned)
        chosen = rest[survive(self.F[rest], self.size - int(is_pinned.sum()), seed)]
        self.records = [self.records[i] for i in np.sort(np.concatenate([np.flatnonzero(is_pinned), chosen]))]
        self._keys = {encoding_key(r["encoding"]) for r in self.records}

    def front(self) -> list[Record]:
        """The non-dominated records under the archive's objectives."""
        if not self.records:
            return []
        idx = NonDominatedSorting().do(self.F, only_non_dominated_front=True)
        return [self.records[i] for i in sorted(idx)]

    @property
    def X(self) -> np.ndarray:
        return np.array([r["encoding"] for r in self.records], dtype=np.int64).reshape(len(self.records), -1)

    @property
    def F(self) -> np.ndarray:
        return objective_matrix(self.records, self.objectives)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "size": self.size, "objectives": list(self.objectives), "pinned": self.pinned,
                "records": [dict(r) for r in self.records]}

    @classmethod
    def from_json(cls, data: Any, space: SearchSpace | None = None, source: str = "archive") -> Archive:
        """An archive from `to_json` output; ArchiveError naming `source` and the bad field."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArchiveError(f"{source}: not a NAT2 archive (expected a mapping with format {FORMAT!r})")
        missing = [f for f in ("size", "objectives", "pinned", "records") if f not in data]
        if missing:
            raise ArchiveError(f"{source}: missing field(s) {missing}")
        if not isinstance(data["records"], list) or not isinstance(data["pinned"], list):
            raise ArchiveError(f"{source}: 'records' and 'pinned' must be lists")
        try:
            archive = cls(data["size"], data["objectives"], data["pinned"])
            n_added = len(archive.add(data["records"], space))
        except (TypeError, ValueError) as err:
            raise ArchiveError(f"{source}: {err}") from None
        if n_added != len(data["records"]):
            raise ArchiveError(f"{source}: records repeat an encoding")
        return archive

    def save(self, path: str | Path) -> None:
        """Write the JSON atomically, so a kill mid-write leaves the previous archive intact."""
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace | None = None) -> Archive:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except OSError as err:
            raise ArchiveError(f"archive file {path} cannot be read: {err}") from None
        except json.JSONDecodeError as err:
            raise ArchiveError(f"archive file {path} is not valid JSON: {err}") from None
        return cls.from_json(data, space, source=f"archive file {path}")


def initial_archive(space: SearchSpace, evaluate: Callable[[np.ndarray], list[Record]], size: int,
                    multiplier: int, objectives: Sequence[str], seed: int,
                    warm_start: np.ndarray | None = None) -> Archive:
    """NAT2 pre-processing: evaluate multiplier*size - 2 architectures plus the min and max nets,
    keep the best size - 2 by survival, and pin min and max. The architectures are `warm_start`
    (e.g. a training-free RB-IFA front), then uniform samples for the rest."""
    if multiplier < 1:
        raise ValueError(f"multiplier must be >= 1; got {multiplier}")
    extremes = np.stack([space.min_encoding, space.max_encoding])
    warm = np.empty((0, space.n_var), dtype=np.int64) if warm_start is None else space.repair(space.validate(warm_start))
    n_sampled = max(0, multiplier * size - 2 - len(warm))
    X = np.concatenate([extremes, warm.reshape(-1, space.n_var), space.sample(np.random.default_rng(seed), n_sampled)])
    X = X[unique_rows(X)]
    records = evaluate(X)
    if len(records) != len(X):
        raise ValueError(f"evaluate returned {len(records)} records for {len(X)} encodings")
    archive = Archive(size, objectives, pinned=extremes.tolist())
    archive.add(records, space)
    archive.shrink(seed)
    return archive


def reference_point(F0: np.ndarray, margin: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(reference point, ideal) derived once from the initial archive and stored with the run, so
    hypervolumes of later iterations are comparable: ideal = min, ref = max + margin * range."""
    if margin <= 0:
        raise ValueError(f"margin must be > 0; got {margin}")
    F0 = np.asarray(F0, dtype=float)
    lo, hi = F0.min(axis=0), F0.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)  # a constant objective still gets a non-empty box
    return hi + margin * span, lo


def hypervolume(F: np.ndarray, ref_point: np.ndarray, ideal: np.ndarray) -> float:
    """Hypervolume of F normalised by the FIXED (ideal, reference point) box, reference point ones;
    points outside the box contribute nothing."""
    ref_point, ideal = np.asarray(ref_point, dtype=float), np.asarray(ideal, dtype=float)
    F = np.asarray(F, dtype=float).reshape(-1, len(ref_point))
    return float(HV(ref_point=np.ones(len(ref_point)))((F - ideal) / (ref_point - ideal))) if len(F) else 0.0
