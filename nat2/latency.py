"""Latency tables: the timed parts of a search space on one backend, and the latency of subnets
predicted from them as the sum of their parts (stem, blocks, dense-skip adds, exit heads).

A table records what it was measured for (backend, space, dense skips, classes, timing) and on what
(the device); a table that does not fit a run is refused with the difference named. Each part
holds one time per measuring pass; its median is the part's time alone, which the table's
calibration (a scale and a per-part offset fitted on whole subnets) turns into its share of a
whole network."""
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


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """The dotted keys where two nested mappings differ, each with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)]
    return [] if old == new else [f"{where} {old!r} (here: {new!r})"]


class LatencyTable:
    """Per-part latencies (ms) of one space on one backend and their calibration; `predict` for
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
        if calibration is not None and not (isinstance(calibration, dict) and _is_ms(calibration.get("scale"))
                                            and isinstance(calibration.get("offset_ms"), (int, float))):
            raise FileFormatError(path, "holds a calibration without a positive 'scale' and an 'offset_ms'")
        require_fields(path, data["timing"], [f.name for f in dataclasses.fields(Timing)], " in 'timing'")
        require_fields(path, data["space"], [f.name for f in dataclasses.fields(Space)], " in 'space'")
        if not all(_is_ms(v) or (k == "warmup" and v == 0) for k, v in data["timing"].items()):
            raise FileFormatError(path, "holds a 'timing' whose settings are not positive numbers")
        try:
            table = cls({k: data[k] for k in IDENTITY}, data["device"], times, calibration)
        except (TypeError, ValueError) as err:
            raise FileFormatError(path, f"describes no valid space ({err})") from None
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
        diff = differences({k: self.identity[k] for k in expected}, expected, "")
        if diff:
            raise LatencyError(f"{path} was measured for another setting: {'; '.join(diff)}")
        missing = self.missing()
        if missing or self.calibration is None:
            still = [f"{len(missing)} of {len(self.keys)} parts"] * bool(missing) + ["the calibration"]
            raise LatencyError(f"{path} is incomplete: {' and '.join(still)} still to be measured; run the "
                               "`nat2 latency` that started it again to finish it")

    def fingerprint(self) -> dict[str, Any]:
        """What makes two tables' predictions differ (a search records it, so a resumed search
        never mixes latencies of two tables)."""
        calibration = {k: self.calibration[k] for k in ("scale", "offset_ms")} if self.calibration else None
        return {"device": self.device, "timing": self.identity["timing"], "calibration": calibration}

    def ms(self, key: str) -> float:
        """One part's time alone (the median pass)."""
        return statistics.median(self.times[key])

    def part(self, key: str) -> float:
        """One part's share of a whole subnet's time: its time alone, calibrated (never below 0)."""
        c = self.calibration or {"scale": 1.0, "offset_ms": 0.0}
        return max(0.0, c["scale"] * self.ms(key) + c["offset_ms"])

    def arch_parts(self, arch: Architecture, exits: Sequence[int] | str | None = None) -> list[str]:
        """The keys of the parts `Supernet.extract(arch, exits)` runs, a dense-skip add once per use."""
        w, r = arch.width, arch.resolution
        keys = [stem_key(w, r)]
        for s, b, block in arch.blocks():
            keys += [block_key(w, r, s, b, block)] + [add_key(w, r, s)] * (dense_adds(b) if self.dense else 0)
        return keys + [head_key(w, r, x) for x in normalize_exits(arch, exits)]

    def predict_arch(self, arch: Architecture, exits: Sequence[int] | str | None = None) -> float:
        """Milliseconds of the subnet `Supernet.extract(arch, exits)` would build: its parts one by one."""
        return sum(self.part(k) for k in self.arch_parts(arch, exits))

    def predict(self, space: SearchSpace, X: np.ndarray) -> np.ndarray:
        """Milliseconds of the single-exit subnets of many encodings of `space` (the table's space)."""
        if space.space not in self._arrays:
            def block(w: float, r: int, s: int, b: int, block: Block) -> tuple[float]:
                adds = dense_adds(b) * self.part(add_key(w, r, s)) if self.dense and dense_adds(b) else 0.0
                return (self.part(block_key(w, r, s, b, block)) + adds,)
            self._arrays[space.space] = space.part_tables(
                block, lambda w, r, x: (self.part(stem_key(w, r)) + self.part(head_key(w, r, x)),), np.float64)
        return space.sum_parts(X, self._arrays[space.space])[:, 0]


def _is_ms(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def build_table(path: Path, ident: dict[str, Any], meter: Meter) -> tuple[LatencyTable, int]:
    """Time every part the table at `path` lacks, writing it after each chunk of parts so that a
    killed build resumes where it stopped, then calibrate; returns the table and how many parts
    were timed now. A table measured for another setting or on another device is refused, never
    mixed."""
    if path.exists():
        table = LatencyTable.read(path)
        diff = differences(table.identity, ident, "")
        if diff:
            timing = all(d.startswith("timing.") for d in diff)
            raise LatencyError(f"{path} holds a table measured for another setting: {'; '.join(diff)}; " + (
                "continue it with its own settings (the latency section, --batch, --threads)" if timing else
                "it belongs to another run or space") + ", or move it away to measure a new one")
        diff = differences(table.device, meter.describe(), "device")
        if diff:
            raise LatencyError(f"{path} was measured on another machine or library version: {'; '.join(diff)}; "
                               "finish it there, or move it away to measure a new one here")
    else:
        table = LatencyTable(ident, meter.describe(), {})
    missing = set(table.missing())
    todo = [p for p in parts(table.space, table.dense, table.n_classes, table.timing.batch) if p.key in missing]
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
        table.calibration = calibrate([[table.ms(k) for k in table.arch_parts(a)] for a in archs], whole)
        table.write(path)
    return table, len(todo)


def calibrate(alone: Sequence[Sequence[float]], whole: Sequence[float]) -> dict[str, Any]:
    """Scale and per-part offset (ms) that best turn the parts' times alone into whole subnets'
    times (least squares): a part runs slower in a network, where its weights are not in cache,
    and a backend that runs a network as one graph pays its per-call overhead once, not per part."""
    A = np.array([[sum(t), len(t)] for t in alone])
    (scale, offset), _, rank, _ = np.linalg.lstsq(A, np.asarray(whole), rcond=None)
    if rank < 2 or scale <= 0:              # too few or too alike subnets for two numbers: the ratio alone
        scale, offset = float(np.median(np.asarray(whole) / A[:, 0])), 0.0
    return {"scale": float(scale), "offset_ms": float(offset), "subnets": len(whole), "seed": CALIBRATION_SEED,
            "whole_ms": list(whole), "parts_ms": [float(sum(t)) for t in alone]}


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


def agreement(predicted: Sequence[float], measured: Sequence[float], macs: Sequence[float]) -> dict[str, Any]:
    """How well the table predicts measured latency: mean absolute percentage error, Spearman rho,
    and for comparison the Spearman rho of MACs with the measured latency (None where a rank
    correlation is undefined: one subnet, or constant values)."""
    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)

    def rho(x: Any) -> float | None:
        value = float(spearmanr(x, m).statistic) if len(m) > 1 else math.nan
        return value if math.isfinite(value) else None
    return {"n": len(m), "mape": float(np.mean(np.abs(p - m) / m)), "max_ape": float(np.max(np.abs(p - m) / m)),
            "spearman": rho(p), "macs_spearman": rho(macs)}
