"""The training-free search: RB-IFA (or PF-IFA) over the NAT2 encoding, scoring subnets by ICD
and Synflow (performance) and MACs (efficiency), without any accuracy evaluation.

Its files (`TrainingFreeFiles`): metrics (JSONL of every scored encoding), state(wp) (RB-IFA
state per Wp, None for PF-IFA: what a resume continues), result (the chosen subnet per Wp and the
front), front_plot (MACs vs ICD) and, optionally, warm_start (encodings to seed a NAT2 archive).

Every candidate is scored alike, at its resolution: its subnet (inherited from the supernet of
its width, or freshly initialised, seeded by the encoding) with BN recalibrated on the calibration
images, ICD on one fixed batch of `rbifa.batch_size` training images (eval transforms), Synflow
on an all-ones image, MACs from the analytic cost model. Single-process (the caller picks a rank).
"""
from __future__ import annotations

import logging
import sys
import zlib
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import matplotlib
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
import torch
from torch import nn
from tqdm import tqdm

from supernets import Splits, Subnet, Supernet, recalibrate_bn
from supernets.evaluation import EvalData, fixed_loader
from supernets.zero_cost import training_free_metrics

from ..files import append_jsonl, read_jsonl, write_json
from ..space import SearchSpace, encoding_key
from .ifa import IFAResult, IFASettings, MetricCache, parse_wps, pf_ifa, pseudo_front, rank_score

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

STRATEGIES = ("rbifa", "pfifa")
INITS = ("inherited", "fresh")
PERF_METRICS, EFF_METRICS = ("icd", "synflow"), ("macs",)


class TrainingFreeFiles(Protocol):
    """Where a training-free search keeps its files (the application's run directory)."""

    @property
    def metrics(self) -> Path: ...
    @property
    def result(self) -> Path: ...
    @property
    def front_plot(self) -> Path: ...
    @property
    def warm_start(self) -> Path: ...
    def state(self, wp: float | None) -> Path: ...


class TrainingFreeMetrics:
    """`metrics(X) -> (perf, eff)` for the IFA: perf = (-ICD, -log10 Synflow), eff = (MACs,); `record(x)`
    gives the raw values. Scored encodings are appended to `cache_path` (JSONL), so a resume skips them."""

    def __init__(self, space: SearchSpace, splits: Splits, *, supernets: Mapping[float, Supernet] | None = None,
                 init: str = "inherited", subnet_options: Mapping[str, Any] | None = None, batch_size: int = 64,
                 calibration_batch: int = 100, seed: int = 0, device: torch.device = torch.device("cpu"),
                 cache_path: Path | None = None) -> None:
        if init not in INITS:
            raise ValueError(f"rbifa.init = {init!r}; expected one of {', '.join(INITS)}")
        if init == "inherited" and not supernets:
            raise ValueError("rbifa.init = 'inherited' needs the trained supernets; pass them, or set "
                              "rbifa.init to 'fresh' to score freshly initialised subnets")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 2 <= batch_size <= len(splits.train):
            raise ValueError(f"rbifa.batch_size = {batch_size!r}; expected an integer in 2..{len(splits.train)} "
                              f"(ICD needs at least 2 images; the training split has {len(splits.train)})")
        self.space, self.splits, self.supernets, self.init = space, splits, supernets, init
        self.subnet_options = dict(subnet_options or {})
        self.calibration_batch, self.seed, self.device, self.cache_path = calibration_batch, seed, device, cache_path
        positions = np.sort(np.random.default_rng(seed).choice(len(splits.train), batch_size, replace=False))
        self.icd_images = splits.train.subset(positions, splits.calibration.transform_factory)
        self._batches: dict[int, torch.Tensor] = {}
        self.data = EvalData(splits, device)
        self.records: dict[str, dict[str, Any]] = read_jsonl(cache_path) if cache_path is not None else {}

    def images(self, resolution: int) -> torch.Tensor:
        """The fixed ICD batch at `resolution` (eval transforms), built once per resolution."""
        if resolution not in self._batches:
            loader = fixed_loader(self.icd_images, resolution, len(self.icd_images))
            self._batches[resolution] = next(iter(loader))[0].to(self.device)
        return self._batches[resolution]

    def subnet(self, encoding: Sequence[int]) -> nn.Module:
        """The candidate's network: inherited or freshly initialised (torch seed fixed by the
        encoding and rbifa.seed), BN recalibrated on the calibration images."""
        arch = self.space.decode(np.asarray(encoding))
        seed = (self.seed * 1_000_003 + zlib.crc32(np.asarray(encoding, dtype=np.int64).tobytes())) % 2 ** 63
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.init == "inherited":
                model = self.supernets[arch.width].extract(arch)
            else:
                model = Subnet(arch, self.splits.n_classes, **self.subnet_options).to(self.device)
        recalibrate_bn(model, self.data.batches("calibration", arch.resolution, self.calibration_batch))
        return model.eval()

    def record(self, encoding: Sequence[int]) -> dict[str, Any]:
        """{encoding, icd, synflow (log10), params, macs} of one canonical encoding."""
        key = encoding_key(encoding)
        if key not in self.records:
            x = np.asarray(encoding, dtype=np.int64)
            scores = training_free_metrics(self.subnet(x), self.images(self.space.decode(x).resolution))
            params, macs = self.space.costs(x, self.splits.n_classes)
            record = {"encoding": [int(g) for g in x], **scores, "params": int(params[0]), "macs": int(macs[0])}
            self.records[key] = record
            if self.cache_path is not None:
                append_jsonl(self.cache_path, [record])
        return self.records[key]

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.record(x) for x in np.asarray(X, dtype=np.int64)]
        return (np.array([[-r[m] for m in PERF_METRICS] for r in rows], dtype=float).reshape(len(rows), -1),
                np.array([[r[m] for m in EFF_METRICS] for r in rows], dtype=float).reshape(len(rows), -1))


def _row(space: SearchSpace, scorer: TrainingFreeMetrics, x: np.ndarray, **extra: Any) -> dict[str, Any]:
    arch = space.decode(x)
    return {**extra, **scorer.record(x), "arch": arch.to_dict(), "arch_str": str(arch)}


def front_plot(path: Path, evaluated: Sequence[Mapping[str, Any]], front: Sequence[Mapping[str, Any]],
               chosen: Sequence[Mapping[str, Any]], title: str) -> None:
    """ICD against MACs: every scored subnet, the (pseudo-)front, the chosen subnet of each Wp."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter([r["macs"] / 1e6 for r in evaluated], [r["icd"] for r in evaluated], s=8, c="0.75", label="scored")
    ordered = sorted(front, key=lambda r: r["macs"])
    ax.scatter([r["macs"] / 1e6 for r in ordered], [r["icd"] for r in ordered], s=18, c="C0",
               label="front (ICD, Synflow, MACs)")
    ax.scatter([r["macs"] / 1e6 for r in chosen], [r["icd"] for r in chosen], marker="*", s=120, c="C3",
               label="chosen")
    for r in chosen:
        ax.annotate(f"wp {r['wp']:g}", (r["macs"] / 1e6, r["icd"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("MACs (M)")
    ax.set_ylabel("ICD (higher is better)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def training_free_search(space: SearchSpace, scorer: TrainingFreeMetrics, settings: IFASettings,
                         files: TrainingFreeFiles, strategy: str = "rbifa", wps: Sequence[float] | float = 0.5,
                         warm_start: bool = False) -> list[dict[str, Any]]:
    """Run (or resume, from the state files) the training-free search and write its files; returns
    the chosen subnet per Wp (brightest at that Wp: of its RB-IFA run's archive of bests, or of
    the PF-IFA front). `warm_start` also writes the chosen and front encodings for a NAT2 archive."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy = {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    wps = parse_wps(wps)
    cache = MetricCache(scorer)
    bars: dict[float | None, tqdm] = {}

    def progress(wp: float | None, entry: dict[str, Any]) -> None:
        if wp not in bars:
            bars[wp] = tqdm(total=settings.generations, desc=f"{strategy} wp {wp:g}" if wp is not None else strategy,
                            leave=False, disable=not sys.stderr.isatty())
        bars[wp].n = entry["generation"]
        bars[wp].set_postfix(evaluated=entry["evaluated"])

    try:
        if strategy == "rbifa":
            found = pseudo_front(space, cache, wps, settings, files.state, on_generation=progress)
            front_X, runs = found.X, found.runs
        else:
            result = pf_ifa(space, cache, settings, files.state(None), on_generation=lambda e: progress(None, e))
            front_X, runs = result.X, {None: result}
    finally:
        for bar in bars.values():
            bar.close()
    chosen = []
    for i, wp in enumerate(wps):
        run: IFAResult = runs[wp] if strategy == "rbifa" else runs[None]
        best = run.best if run.best is not None else run.X[int(np.argmin(rank_score(run.perf, run.eff, wp)))]
        chosen.append(_row(space, scorer, best, id=f"tf_{i:02d}", wp=wp))
    front = [_row(space, scorer, x) for x in front_X]
    evaluated = list(scorer.records.values())
    generations = {strategy if wp is None else f"wp {wp:g}": r.generations for wp, r in runs.items()}
    write_json(files.result, {
        "strategy": strategy, "wps": wps, "performance": list(PERF_METRICS), "efficiency": list(EFF_METRICS),
        "synflow": "log10", "init": scorer.init, "generations": generations, "evaluated": len(evaluated),
        "chosen": chosen, "front": front})
    front_plot(files.front_plot, evaluated, front, chosen,
               f"{strategy}: {len(front)} on the front, {len(evaluated)} scored")
    if warm_start:
        write_json(files.warm_start, [list(e) for e in dict.fromkeys(tuple(r["encoding"]) for r in chosen + front)])
    log.info("training-free search (%s): %d subnets scored, %d on the front; %s", strategy, len(evaluated),
             len(front), files.result)
    return chosen
