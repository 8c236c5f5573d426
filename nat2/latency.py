"""Latency tables: the timed parts of a search space on one backend, and the latency of subnets
predicted from them as the sum of their parts (stem, blocks, dense-skip adds, exit heads).

A table records what it was measured for (backend, space, dense skips, classes, timing) and on what
(the device); a table that does not fit a run is refused with the difference named. Each part
holds one time per measuring pass; its median is the part's latency."""
from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy.stats import spearmanr
from tqdm import tqdm

from torch import nn

from supernets import Architecture, Block, Space, Subnet
from supernets.latency import (LatencyError, Meter, Timing, add_key, block_key, dense_adds, head_key, parts,
                               stem_key)
from supernets.subnet import normalize_exits

from .files import FileFormatError, read_json, require_fields, write_json
from .space import SearchSpace

FORMAT = "nat2-latency"
IDENTITY = ("backend", "space", "dense", "n_classes", "timing")
FIELDS = ("format", *IDENTITY, "device", "calibration", "parts")
CALIBRATION_SEED = 1_000_003  # the calibration subnets differ from those `--check` draws (latency.seed)
CHUNK = 32  # parts built and timed together: their passes interleave, and the table is written after each chunk

log = logging.getLogger(__name__)


def identity(backend: str, space: Space, dense: bool, n_classes: int, timing: Timing | None = None) -> dict[str, Any]:
    """What a table is measured for, as its file records it; without `timing`, what a run needs of it."""
    return {"backend": backend, "space": {k: list(v) for k, v in dataclasses.asdict(space).items()},
            "dense": dense, "n_classes": n_classes, **({"timing": dataclasses.asdict(timing)} if timing else {})}


def _differences(old: Any, new: Any, where: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)]
    return [] if old == new else [f"{where} {old!r} (here: {new!r})"]


class LatencyTable:
    """Per-part latencies (ms) of one space on one backend and the calibration scale; `predict` for
    encodings, `predict_arch` for one architecture."""

    def __init__(self, ident: dict[str, Any], device: dict[str, Any], times: dict[str, list[float]],
                 calibration: dict[str, Any] | None = None) -> None:
        self.identity, self.device, self.times, self.calibration = ident, device, times, calibration
        self.backend, self.dense, self.n_classes = ident["backend"], ident["dense"], ident["n_classes"]
        self.space = Space(**{k: tuple(v) for k, v in ident["space"].items()})
        self.timing = Timing(**ident["timing"])
        self.keys = [p.key for p in parts(self.space, self.dense, self.n_classes)]
        self._arrays: dict[Space, tuple[np.ndarray, np.ndarray]] = {}  # per search space

    @classmethod
    def read(cls, path: str | Path) -> LatencyTable:
        """The table in `path` (FileFormatError naming the file when it is damaged)."""
        data = read_json(path, FIELDS)
        if data["format"] != FORMAT:
            raise FileFormatError(path, f"has format {data['format']!r}; expected {FORMAT!r}")
        times, calibration = data["parts"], data["calibration"]
        if not isinstance(times, dict) or not all(isinstance(v, list) and v and all(map(_is_ms, v))
                                                   for v in times.values()):
            raise FileFormatError(path, "holds part times that are not lists of positive milliseconds")
        if calibration is not None and not (isinstance(calibration, dict) and _is_ms(calibration.get("scale"))):
            raise FileFormatError(path, "holds a calibration without a positive 'scale'")
        require_fields(path, data["timing"], [f.name for f in dataclasses.fields(Timing)], " in 'timing'")
        try:
            table = cls({k: data[k] for k in IDENTITY}, data["device"], times, calibration)
        except (TypeError, ValueError) as err:
            raise FileFormatError(path, f"describes no valid space or timing ({err})") from None
        unknown = sorted(set(times) - set(table.keys))
        if unknown:
            raise FileFormatError(path, f"holds parts its space does not have, such as {unknown[0]!r}")
        return table

    def write(self, path: str | Path) -> None:
        write_json(path, {"format": FORMAT, **self.identity, "device": self.device, "unit": "ms",
                          "calibration": self.calibration, "parts": self.times})

    def missing(self) -> list[str]:
        """The parts that lack some of their measuring passes."""
        return [k for k in self.keys if len(self.times.get(k, ())) < self.timing.passes]

    def check(self, expected: dict[str, Any], path: str | Path) -> None:
        """LatencyError unless the table was measured for the keys of `expected` (an `identity`, or a
        part of one) and is complete."""
        diff = _differences({k: self.identity[k] for k in expected}, expected, "")
        if diff:
            raise LatencyError(f"{path} was measured for another setting: {'; '.join(diff)}")
        missing = self.missing()
        if missing or self.calibration is None:
            raise LatencyError(f"{path} is incomplete: {len(missing)} of {len(self.keys)} parts and the calibration "
                               "are still to be measured")

    @property
    def scale(self) -> float:
        return self.calibration["scale"] if self.calibration else 1.0

    def ms(self, key: str) -> float:
        """One part's time alone (the median pass)."""
        return statistics.median(self.times[key])

    def _block(self, width: float, resolution: int, s: int, b: int, block: Block) -> float:
        adds = dense_adds(b) * self.ms(add_key(width, resolution, s)) if self.dense and dense_adds(b) else 0.0
        return self.ms(block_key(width, resolution, s, b, block)) + adds

    def parts_sum(self, arch: Architecture, exits: Sequence[int] | str | None = None) -> float:
        """The sum of the times alone of the parts of `Supernet.extract(arch, exits)`."""
        total = self.ms(stem_key(arch.width, arch.resolution))
        for s, b, block in arch.blocks():
            total += self._block(arch.width, arch.resolution, s, b, block)
        return total + sum(self.ms(head_key(arch.width, arch.resolution, x)) for x in normalize_exits(arch, exits))

    def predict_arch(self, arch: Architecture, exits: Sequence[int] | str | None = None) -> float:
        """Milliseconds of the subnet `Supernet.extract(arch, exits)` would build."""
        return self.scale * self.parts_sum(arch, exits)

    def predict(self, space: SearchSpace, X: np.ndarray) -> np.ndarray:
        """Milliseconds of the single-exit subnets of many encodings of `space` (the table's space)."""
        if space.space not in self._arrays:
            self._arrays[space.space] = space.part_tables(
                lambda w, r, s, b, block: (self._block(w, r, s, b, block),),
                lambda w, r, x: (self.ms(stem_key(w, r)) + self.ms(head_key(w, r, x)),), np.float64)
        return self.scale * space.sum_parts(X, self._arrays[space.space])[:, 0]


def _is_ms(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def build_table(path: Path, ident: dict[str, Any], meter: Meter) -> tuple[LatencyTable, int]:
    """Time every part the table at `path` lacks, writing it after each chunk of parts so that a
    killed build resumes where it stopped, then calibrate; returns the table and how many parts
    were timed now. A table measured for another setting or on another device is refused, never
    mixed."""
    if path.exists():
        table = LatencyTable.read(path)
        diff = _differences(table.identity, ident, "") or _differences(table.device, meter.describe(), "device")
        if diff:
            raise LatencyError(f"{path} holds a table measured for another setting: {'; '.join(diff)}; move or delete "
                               "it to measure this one")
    else:
        table = LatencyTable(ident, meter.describe(), {})
    missing = set(table.missing())
    todo = [p for p in parts(table.space, table.dense, table.n_classes) if p.key in missing]
    bar = tqdm(total=len(todo), desc=f"latency table ({meter.backend})", unit="part", leave=False,
               disable=not sys.stderr.isatty())
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        times = interleaved(meter, [meter.prepare(p.build(), p.shape) for p in chunk], table.timing.passes)
        table.times.update((p.key, t) for p, t in zip(chunk, times))
        table.write(path)
        bar.update(len(chunk))
    bar.close()
    if table.calibration is None:
        archs = table.space.sample(np.random.default_rng(CALIBRATION_SEED), table.timing.calibration)
        whole = measure_subnets(meter, [(Subnet(a, table.n_classes, dense=table.dense), a.resolution) for a in archs])
        ratios = [w / table.parts_sum(a) for w, a in zip(whole, archs)]
        table.calibration = {"scale": statistics.median(ratios), "subnets": len(archs), "seed": CALIBRATION_SEED,
                             "ratios": ratios}
        table.write(path)
    return table, len(todo)


def measure_subnets(meter: Meter, models: Sequence[tuple[nn.Module, int]]) -> list[float]:
    """Milliseconds of whole models (module, input resolution): the median of interleaved passes."""
    calls = [meter.prepare(m, (3, r, r)) for m, r in models]
    return [statistics.median(t) for t in interleaved(meter, calls, meter.timing.passes)]


def interleaved(meter: Meter, calls: Sequence[Callable[[], Any]], passes: int) -> list[list[float]]:
    """Milliseconds of each call in each of `passes` passes over all of them (noise on the machine
    then hits one pass of a few calls, not every pass of one)."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(passes):
        for i, call in enumerate(calls):
            times[i].append(meter.time(call))
    return times


def agreement(predicted: Sequence[float], measured: Sequence[float], macs: Sequence[float]) -> dict[str, float]:
    """How well the table predicts measured latency: mean absolute percentage error, Spearman rho,
    and for comparison the Spearman rho of MACs with the measured latency."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    return {"n": len(m), "mape": float(np.mean(np.abs(p - m) / m)),
            "max_ape": float(np.max(np.abs(p - m) / m)),
            "spearman": float(spearmanr(p, m).statistic) if len(m) > 1 else math.nan,
            "macs_spearman": float(spearmanr(macs, m).statistic) if len(m) > 1 else math.nan}
