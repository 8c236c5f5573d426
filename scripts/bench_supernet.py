"""Supernet benchmarks, printed as JSON.

1. Dynamic overhead: forward+backward time of a subnet run inside our supernet / the same subnet
   extracted as a static module (batch 64, 32 px; min, random and max architectures).
2. Ours / `ofa`: our B-variant supernet / `ofa`'s OFAMobileNetV3 with the same active subnet.
3. Cost model throughput: encodings costed per second, vectorised and one at a time (decoded first).

Times are medians of interleaved repeats in one process; ratios compare like with like.

    python scripts/bench_supernet.py [--repeats 30] [--device cpu|cuda] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics

import numpy as np
import torch
from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

from nat2.space import SearchSpace
from supernets import Architecture, Space, Supernet, arch_cost, default_space

from _bench import timed


def _step(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out if isinstance(out, torch.Tensor) else sum(out)).sum().backward()


def time_interleaved(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int,
                     device: str) -> dict[str, float]:
    """Median seconds per forward+backward step of each model, the models taking turns."""
    for model in models.values():
        for _ in range(3):
            _step(model, x)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            times[name].append(timed(_step, model, x, sync=sync)[0])
    return {name: statistics.median(t) for name, t in times.items()}


def ofa_subnet_args(arch: Architecture) -> dict[str, list[int]]:
    """`ofa` wants one kernel / expand value per block position (20), padded."""
    ks, es = [], []
    for stage in arch.stages:
        ks += [b.kernel for b in stage] + [3] * (4 - len(stage))
        es += [b.expand for b in stage] + [3] * (4 - len(stage))
    return {"ks": ks, "e": es, "d": list(arch.depths)}


def bench_networks(repeats: int, device: str, batch: int, size: int) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    x = torch.randn(batch, 3, size, size, device=device)
    variants = {"B": {}, "D": {"dense": True}, "P": {"parallel": True}, "DP": {"dense": True, "parallel": True},
                "B-EE": {"early_exits": True}, "DP-EE": {"dense": True, "parallel": True, "early_exits": True}}
    ofa = OFAMobileNetV3(n_classes=10, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4]).to(device)
    results: dict[str, dict] = {}
    for variant, flags in variants.items():
        torch.manual_seed(0)
        space = default_space(flags.get("parallel", False), flags.get("early_exits", False), 1.0, (size,))
        net = Supernet(10, 1.0, **flags, space=space).to(device).train()
        for label, arch in (("min", net.space.min_arch()), ("random", net.space.sample(rng, 1)[0]),
                            ("max", net.space.max_arch())):
            net.set_active(arch)
            models = {"supernet": net, "extracted": net.extract(arch)}
            if variant == "B":
                ofa.set_active_subnet(**ofa_subnet_args(arch))
                models["ofa"] = ofa
            t = time_interleaved(models, x, repeats, device)
            row = {"arch": str(arch), "ms": {k: round(v * 1e3, 2) for k, v in t.items()},
                   "dynamic_over_static": round(t["supernet"] / t["extracted"], 3)}
            if "ofa" in t:
                row["ours_over_ofa"] = round(t["supernet"] / t["ofa"], 3)
                row["ofa_dynamic_over_static"] = round(t["ofa"] / t["extracted"], 3)
            results[f"{variant}/{label}"] = row
    return results


def bench_costs(n: int) -> dict[str, float]:
    space = SearchSpace(Space(resolutions=(24, 28, 32), widths=(1.0, 1.2), keys=(1, 2, 3, 4, 5, 6, 7),
                              exits=(1, 2, 3, 4, 5)))
    x = space.sample(np.random.default_rng(0), n)
    space.costs(x[:10], 10)  # builds the per-block tables once
    vectorised = n / timed(space.costs, x, 10)[0]
    m = min(n, 5000)
    one_by_one = m / timed(lambda: [arch_cost(space.decode(row), 10) for row in x[:m]])[0]
    return {"encodings_costed_per_s_vectorised": round(vectorised),
            "encodings_decoded_and_costed_per_s": round(one_by_one)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "setup": {"device": args.device, "threads": torch.get_num_threads(), "batch": args.batch, "size": args.size,
                  "repeats": args.repeats, "torch": torch.__version__,
                  "cpu": platform.processor() or platform.machine()},
        "networks": bench_networks(args.repeats, args.device, args.batch, args.size),
    }
    torch.set_num_threads(1)
    report["cost_model_one_core"] = bench_costs(20000)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
