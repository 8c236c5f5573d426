"""The training-free search stage: RB-IFA (or PF-IFA) over the NAT2 encoding, scoring subnets by
ICD and Synflow (performance) and MACs (efficiency) without any accuracy evaluation.

    <run>/tfsearch/metrics.jsonl        ICD, log10 Synflow, params, MACs of every scored encoding
    <run>/tfsearch/state_wp<wp>.json    RB-IFA state per Wp (state_pfifa.json for PF-IFA): resume
    <run>/tfsearch/result.json          the chosen subnet per Wp and the (pseudo-)Pareto front
    <run>/tfsearch/front.png            MACs vs ICD: everything scored, the front, the chosen
    <run>/tfsearch/warm_start.json      (rbifa.warm_start) encodings to seed a NAT2 archive

Every candidate is scored the same way: its subnet (weights inherited from the supernet of its
width, or a fresh init seeded by the encoding), BN recalibrated on the calibration images at its
resolution, ICD on one fixed batch of `rbifa.batch_size` training images (eval transforms) at its
resolution, Synflow on an all-ones image at its resolution, MACs from the analytic cost model.
The search is single-process: under torchrun only rank 0 works, the others return at once.
"""
from __future__ import annotations

import json
import logging
import sys
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
import torch
from torch import nn
from tqdm import tqdm

from supernets import Splits, Subnet, Supernet, recalibrate_bn
from supernets.evaluation import EvalData, fixed_loader
from supernets.zero_cost import training_free_metrics

from .config import ConfigError
from .evaluate import read_jsonl
from .jsonio import write_json
from .rbifa import (IFAResult, MetricCache, parse_wps, pf_ifa, pseudo_front, rank_score, rbifa_settings,
                    state_file)
from .space import SearchSpace
from .stage import Stage

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)

TF_DIR = "tfsearch"
STRATEGIES = ("rbifa", "pfifa")
INITS = ("inherited", "fresh")
PERF_METRICS, EFF_METRICS = ("icd", "synflow"), ("macs",)


def _key(encoding: Sequence[int]) -> str:
    return " ".join(str(int(g)) for g in encoding)


class TrainingFreeMetrics:
    """`metrics(X) -> (perf, eff)` for the IFA: perf = (-ICD, -log10 Synflow), eff = (MACs,), all
    lower-is-better; `record(x)` gives the raw values. Scored encodings are appended to
    `cache_path` (JSONL) as they come, so a resumed search does not score them again."""

    def __init__(self, space: SearchSpace, splits: Splits, *, supernets: Mapping[float, Supernet] | None = None,
                 init: str = "inherited", subnet_options: Mapping[str, Any] | None = None, batch_size: int = 64,
                 calibration_batch: int = 100, seed: int = 0, device: torch.device = torch.device("cpu"),
                 cache_path: Path | None = None) -> None:
        if init not in INITS:
            raise ConfigError(f"rbifa.init = {init!r}; expected one of {', '.join(INITS)}")
        if init == "inherited" and not supernets:
            raise ConfigError("rbifa.init = 'inherited' needs the trained supernets; pass them, or set "
                              "rbifa.init to 'fresh' to score freshly initialised subnets")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 2 <= batch_size <= len(splits.train):
            raise ConfigError(f"rbifa.batch_size = {batch_size!r}; expected an integer in 2..{len(splits.train)} "
                              "(ICD needs at least 2 images; the training split has "
                              f"{len(splits.train)})")
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
        key = _key(encoding)
        if key not in self.records:
            x = np.asarray(encoding, dtype=np.int64)
            arch = self.space.decode(x)
            scores = training_free_metrics(self.subnet(x), self.images(arch.resolution))
            params, macs = self.space.costs(x, self.splits.n_classes)
            record = {"encoding": [int(g) for g in x], **scores, "params": int(params[0]), "macs": int(macs[0])}
            self.records[key] = record
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
        return self.records[key]

    def __call__(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = [self.record(x) for x in np.asarray(X, dtype=np.int64)]
        perf = np.array([[-r[m] for m in PERF_METRICS] for r in rows], dtype=float).reshape(len(rows), -1)
        eff = np.array([[r[m] for m in EFF_METRICS] for r in rows], dtype=float).reshape(len(rows), -1)
        return perf, eff


def training_free_metrics_from_config(config: Mapping[str, Any], stage: Stage,
                                      supernets: Mapping[float, Supernet] | None,
                                      cache_path: Path | None = None) -> TrainingFreeMetrics:
    """The scorer the `rbifa`, `supernet` and `train` sections of the config describe."""
    rb, sn = config["rbifa"], config["supernet"]
    return TrainingFreeMetrics(
        stage.space, stage.splits, supernets=supernets if rb["init"] == "inherited" else None, init=rb["init"],
        subnet_options={k: sn[k] for k in ("dense", "dropout", "bn_momentum", "bn_eps")},
        batch_size=rb["batch_size"], calibration_batch=config["train"]["calibration_batch"], seed=rb["seed"],
        device=stage.ctx.device, cache_path=cache_path)


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


def run_tf_search(config: Mapping[str, Any], stage: Stage, supernets: Mapping[float, Supernet] | None,
                  strategy: str = "rbifa", wps: Sequence[float] | float | str | None = None,
                  out_dir: Path | None = None) -> list[dict[str, Any]]:
    """Run (or resume, from the state files in `out_dir`) the training-free search and write its
    files; returns the chosen subnet per Wp (brightest at that Wp: of its RB-IFA run's archive of
    bests, or of the PF-IFA front). `wps` defaults to `rbifa.wp`, `out_dir` to <run>/tfsearch;
    `supernets` (weights loaded) is needed for rbifa.init = inherited only."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy = {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    settings = rbifa_settings(config)
    try:
        wps = parse_wps(config["rbifa"]["wp"] if wps is None else wps)
    except ValueError as err:
        raise ConfigError(f"rbifa.wp: {err}") from None
    if not isinstance(config["rbifa"]["warm_start"], bool):
        raise ConfigError(f"rbifa.warm_start = {config['rbifa']['warm_start']!r}; expected true or false")
    if not stage.ctx.is_main:
        return []
    out = Path(out_dir) if out_dir is not None else stage.run_dir / TF_DIR
    out.mkdir(parents=True, exist_ok=True)
    scorer = training_free_metrics_from_config(config, stage, supernets, out / "metrics.jsonl")
    cache = MetricCache(scorer)
    space = stage.space
    interactive = sys.stderr.isatty()
    bars: dict[float | None, tqdm] = {}

    def progress(wp: float | None, entry: dict[str, Any]) -> None:
        if wp not in bars:
            bars[wp] = tqdm(total=settings.generations, desc=f"{strategy} wp {wp:g}" if wp is not None else strategy,
                            leave=False, disable=not interactive)
        bars[wp].n = entry["generation"]
        bars[wp].set_postfix(evaluated=entry["evaluated"])

    try:
        if strategy == "rbifa":
            found = pseudo_front(space, cache, wps, settings, out, on_generation=progress)
            front_X, runs = found.X, found.runs
        else:
            result = pf_ifa(space, cache, settings, state_file(out, None), on_generation=lambda e: progress(None, e))
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
    write_json(out / "result.json", {
        "strategy": strategy, "wps": wps, "performance": list(PERF_METRICS), "efficiency": list(EFF_METRICS),
        "synflow": "log10", "init": config["rbifa"]["init"], "generations": generations,
        "evaluated": len(evaluated), "chosen": chosen, "front": front})
    front_plot(out / "front.png", evaluated, front, chosen,
               f"{strategy}: {len(front)} on the front, {len(evaluated)} scored")
    if config["rbifa"]["warm_start"]:
        encodings = {tuple(r["encoding"]): None for r in chosen + front}
        write_json(out / "warm_start.json", [list(e) for e in encodings])
    log.info("training-free search (%s): %d subnets scored, %d on the front; %s", strategy, len(evaluated),
             len(front), out / "result.json")
    return chosen


def format_tf_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The chosen subnets as a table for the console."""
    lines = [f"{'subnet':<7} {'wp':>5} {'ICD':>9} {'log10 SF':>9} {'params (M)':>10} {'MACs (M)':>9}  architecture"]
    lines += [f"{r['id']:<7} {r['wp']:>5.2f} {r['icd']:>9.2f} {r['synflow']:>9.2f} {r['params'] / 1e6:>10.3f} "
              f"{r['macs'] / 1e6:>9.2f}  {r['arch_str']}" for r in rows]
    return "\n".join(lines)
