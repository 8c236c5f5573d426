"""Latency table benchmark, printed as JSON: for the search spaces of configs/demo.yaml and
configs/cifar10.yaml, on one backend of this machine (default torch-cpu, batch 1, 1 thread):

- the time to build the table (every part, `latency.passes` interleaved passes, the calibration);
- `--subnets` random subnets (not the calibration ones) timed end to end, the median of
  `--passes` interleaved passes each, against the table's prediction: MAPE, worst error, Spearman
  rho, the MAPE the plain sum of parts (no calibration) would have, and for comparison the
  Spearman rho of MACs with the measured latency.

    PYTHONPATH=. python scripts/bench_latency.py [--backend torch-cpu --subnets 50 --passes 5]

Takes about 5 minutes on 2 CPU cores with torch-cpu; onnxruntime exports every part and takes
far longer. Nothing is written outside a temporary folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from nat2.app.config import load_config
from nat2.latency import agreement, build_table, identity, measure_subnets
from supernets import Subnet
from supernets.latency import BACKENDS, Meter

from _bench import timed

CONFIGS = {"demo": Path("configs/demo.yaml"), "cifar10": Path("configs/cifar10.yaml")}
N_CLASSES = 10  # both data sets have ten classes; the data itself is not needed


def bench(name: str, backend: str, subnets: int, passes: int, folder: Path) -> dict[str, Any]:
    config = load_config(CONFIGS[name])
    space, timing = config.supernet.search_space(), config.latency.timing()
    meter = Meter(backend, timing)
    ident = identity(backend, space.space, config.supernet.dense, N_CLASSES, timing)
    seconds, (table, _) = timed(build_table, folder / f"{name}.json", ident, meter)
    X = space.sample(np.random.default_rng(0), subnets)
    archs = [space.decode(x) for x in X]
    whole = Meter(backend, dataclasses.replace(timing, passes=passes))
    measured = measure_subnets(whole, [(Subnet(a, N_CLASSES, dense=config.supernet.dense), a.resolution)
                                       for a in archs])
    predicted = table.predict(space, X)
    plain = np.array([sum(table.ms(k) for k in table.arch_parts(a)) for a in archs])
    macs = space.costs(X, N_CLASSES)[1]
    return {"space": {"resolutions": list(space.space.resolutions), "widths": list(space.space.widths),
                      "keys": list(space.space.keys), "exits": list(space.space.exits), "dense": table.dense},
            "timing": dataclasses.asdict(timing), "parts": len(table.keys), "build_seconds": round(seconds, 1),
            "calibration": {k: table.calibration[k] for k in ("scale", "offset_ms", "subnets")},
            **agreement(predicted, measured, macs),
            "mape_uncalibrated": float(np.mean(np.abs(plain - measured) / measured)),
            "measured_ms": {"min": min(measured), "median": float(np.median(measured)), "max": max(measured)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="torch-cpu")
    parser.add_argument("--subnets", type=int, default=50)
    parser.add_argument("--passes", type=int, default=5, help="interleaved passes over the subnets timed whole")
    parser.add_argument("--spaces", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: bench(name, args.backend, args.subnets, args.passes, Path(tmp)) for name in args.spaces}
    print(json.dumps({"backend": args.backend, "device": Meter(args.backend).describe(),
                      "subnets": args.subnets, "passes": args.passes,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
