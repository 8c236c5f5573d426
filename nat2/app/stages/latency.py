"""`nat2 latency`: the latency table of the run's search space on one backend of this machine
(latency/<backend>.json, resumable), and with `--check N` its check against whole subnets: N
random ones and the run's exports, timed end to end (latency/check_<backend>.json and .png)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from postprocess import load_subnet
from supernets import Subnet
from supernets.latency import Meter

from ...files import write_json
from ...latency import LatencyTable, agreement, build_table, identity, measure_subnets
from ...space import SearchSpace
from ..config import Config, ConfigError
from ..context import setup_logging
from ..rundir import RunDir, config_differences
from ..tables import table

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

log = logging.getLogger(__name__)


def run(config: Config, run_dir: RunDir, backend: str | None = None, batch: int | None = None,
        threads: int | None = None, check: int = 0) -> None:
    """Measure (or finish) the table of `backend` (default latency.backend); then check it on
    `check` random subnets and the exports."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("nat2 latency times on one process; run it without torchrun")
    s = config.latency
    meter = Meter(backend or s.backend, s.timing(batch, threads))
    saved = run_dir.saved_config()
    if saved is None:
        run_dir.prepare(config, "latency", resume=run_dir.stage("latency").exists())
    else:
        diff = [d for d in config_differences(saved, config.to_dict()) if d.split(".")[0] in ("data", "supernet")]
        if diff:
            raise ConfigError(f"the config differs from {run_dir.config_file} at {', '.join(diff)}; a latency table "
                              "is measured for its run's space: pass the run directory, or set run.dir to a new one")
    n_classes = config.data.load().n_classes
    setup_logging(run_dir, "latency", True)
    space = config.supernet.search_space()
    path = run_dir.latency_table(meter.backend)
    log.info("latency table of %s on %s", path, meter.describe())
    start = time.time()
    lat, timed = build_table(path, identity(meter.backend, space.space, config.supernet.dense, n_classes,
                                           meter.timing), meter)
    smallest, largest = lat.predict(space, np.stack([space.min_encoding, space.max_encoding]))
    c = lat.calibration
    summary = (f"{len(lat.keys)} parts ({timed} timed now in {time.time() - start:.0f} s); calibration: "
               f"x {c['scale']:.3f} {c['offset_ms']:+.4f} ms per part; predicted {smallest:.3f} ms for the smallest "
               f"subnet, {largest:.3f} ms for the largest")
    log.info("%s", summary)
    print(f"latency table ({meter.backend}): {path}\n{summary}")
    if check:
        _check(config, run_dir, space, lat, meter, check)


def _check(config: Config, run_dir: RunDir, space: SearchSpace, lat: LatencyTable, meter: Meter, n: int) -> None:
    """Predicted against measured latency of `n` random subnets and of every export."""
    X = space.sample(np.random.default_rng(config.latency.seed), n)
    macs, predicted = space.costs(X, lat.n_classes)[1], lat.predict(space, X)
    rows, models = [], []
    for i, x in enumerate(X):
        arch = space.decode(x)
        rows.append({"name": f"random_{i:03d}", "arch": str(arch), "macs": int(macs[i]),
                     "predicted_ms": float(predicted[i])})
        models.append((Subnet(arch, lat.n_classes, dense=lat.dense), arch.resolution))
    for name, meta in run_dir.exports().items():
        model = load_subnet(run_dir.export(name))
        rows.append({"name": name, "arch": meta["arch"], "macs": meta["macs"], "export": True,
                     "predicted_ms": lat.predict_arch(model.arch, model.exit_list)})
        models.append((model, model.arch.resolution))
    for row, ms in zip(rows, measure_subnets(meter, models)):
        row["measured_ms"] = ms
    report = {"backend": meter.backend, "device": meter.describe(), "timing": lat.identity["timing"],
              **agreement([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows],
                          [r["macs"] for r in rows]), "subnets": rows}
    write_json(run_dir.latency_check(meter.backend, ".json"), report)
    _plot(run_dir.latency_check(meter.backend, ".png"), report)
    exports = [r for r in rows if r.get("export")]
    if exports:
        print(table([("export", "<16"), ("predicted (ms)", ">14.3f"), ("measured (ms)", ">13.3f")],
                    [(r["name"], r["predicted_ms"], r["measured_ms"]) for r in exports]))
    print(f"check on {len(rows)} subnets ({n} random, {len(exports)} exports): MAPE {100 * report['mape']:.1f} %, "
          f"Spearman rho {_rho(report['spearman'])} (MACs: {_rho(report['macs_spearman'])}); report and plot: "
          f"{run_dir.latency_check(meter.backend, '.json')}")


def _rho(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _plot(path: Path, report: dict[str, Any]) -> None:
    rows = report["subnets"]
    fig, ax = plt.subplots(figsize=(5.2, 5))
    for exported, style in ((False, dict(s=14, c="C0", label="random subnets")),
                            (True, dict(s=60, marker="*", c="C3", label="exports"))):
        chosen = [r for r in rows if bool(r.get("export")) == exported]
        if chosen:
            ax.scatter([r["predicted_ms"] for r in chosen], [r["measured_ms"] for r in chosen], **style)
    ends = [min(min(r["predicted_ms"], r["measured_ms"]) for r in rows),
            max(max(r["predicted_ms"], r["measured_ms"]) for r in rows)]
    ax.plot(ends, ends, c="0.6", lw=0.8, label="predicted = measured")
    ax.set_xlabel("predicted from the table (ms)")
    ax.set_ylabel("measured end to end (ms)")
    ax.set_title(f"{report['backend']}: MAPE {100 * report['mape']:.1f} %, Spearman {_rho(report['spearman'])}",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
