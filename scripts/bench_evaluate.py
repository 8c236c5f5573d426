"""Subnet evaluation benchmarks at the cifar10 preset's settings, printed as JSON.

A CIFAR-10 data set in the official python format (50 000 + 10 000 random images) is written to a
temporary folder; the supernets are the preset's (DP-EE, widths 1.0 and 1.2, 48-64 px) with
random weights, which changes no timing.

1. Per evaluation of random subnets (BN recalibration on `--calibration` images, top-1 on the
   validation images): total seconds through three paths, and the network seconds of the
   same forwards on ready tensors; overhead = total - network.
      today      streamed through PIL every time, `ofa`'s set_running_statistics (copies the supernet)
      streaming  streamed through PIL every time, in-place recalibration
      cached     images prepared once per resolution (EvalData), in-place recalibration
   and whether cached and streaming top-1 counts are identical.
2. Supernet training: one epoch of the preset's `uniform` phase (4 subnets per step, KD from the
   max network, bf16 on CUDA only) on a `--train-slice` image slice, then one validation of the
   phase's grid under the preset's validation budget; projected to the full 45 000-image epoch.

    PYTHONPATH=. python scripts/bench_evaluate.py [--subnets 5] [--device cpu|cuda] [--threads 0]
"""
from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics

from nat2.app.config import Config, load_config
from supernets import recalibrate_bn
from supernets.distributed import Dist
from supernets.evaluation import EvalData, count_correct, fixed_loader, subnet_top1
from supernets.phases import parse_phases, validation_grid
from supernets.train import PhaseTrainer, build_teacher, validate, validation_subset

from _bench import timed

PRESET = Path("configs/cifar10.yaml")
FULL_EPOCH = 45_000


def write_cifar10(root: Path, seed: int = 0) -> None:
    """CIFAR-10 as torchvision reads it: five training batches, a test batch, the meta file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, 10_000).tolist(), "filenames": [f"{i}.png" for i in range(10_000)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 10_000}, f)


def evaluation(config: Config, splits: Any, device: torch.device, args: argparse.Namespace) -> dict:
    space = config.supernet.search_space()
    supernets = {w: s.to(device) for w, s in config.supernet.build(space, splits.n_classes).items()}
    batch, calib_batch = config.train.eval_batch_size, config.train.calibration_batch
    streaming = EvalData(splits, device, budget_mb=0, num_workers=args.workers)
    cached = EvalData(splits, device, num_workers=args.workers)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    build = {r: timed(lambda: [cached._cached(s, r) for s in ("calibration", "val")], sync=sync)[0]
             for r in space.space.resolutions}
    rows, same = [], True
    for arch in [space.decode(x) for x in space.sample(np.random.default_rng(args.seed), args.subnets)]:
        net = supernets[arch.width]

        def today() -> tuple[int, int]:
            net.set_active(arch)
            calibration = fixed_loader(splits.calibration, arch.resolution, calib_batch)   # no workers, as before
            set_running_statistics(net, ((x.to(device), y) for x, y in calibration))
            return count_correct(net, streaming.batches("val", arch.resolution, batch))

        ready_calibration = list(cached.batches("calibration", arch.resolution, calib_batch))
        ready_val = list(cached.batches("val", arch.resolution, batch))

        def network() -> tuple[int, int]:
            net.set_active(arch)
            recalibrate_bn(net, iter(ready_calibration))
            return count_correct(net, iter(ready_val))

        t_today, _ = timed(today, sync=sync)
        t_stream, stream_counts = timed(lambda: subnet_top1(net, arch, streaming, batch_size=batch,
                                                            calibration_batch=calib_batch), sync=sync)
        t_cached, cached_counts = timed(lambda: subnet_top1(net, arch, cached, batch_size=batch,
                                                            calibration_batch=calib_batch), sync=sync)
        t_net, _ = timed(network, sync=sync)
        same = same and stream_counts == cached_counts
        rows.append({"arch": str(arch), "today_s": t_today, "streaming_s": t_stream, "cached_s": t_cached,
                     "network_s": t_net})

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 3)
    net_s = median("network_s")
    out = {"subnets": len(rows), "calibration_images": len(splits.calibration), "val_images": len(splits.val),
           "network_s": net_s, "same_top1": same,
           "cache_build_s": {str(r): round(s, 2) for r, s in build.items()},
           "cache_mb": round(cached.nbytes / 2 ** 20, 1)}
    for path in ("today", "streaming", "cached"):
        total = median(f"{path}_s")
        out[path] = {"total_s": total, "overhead_s": round(total - net_s, 3)}
    out["overhead_cut_today_over_cached"] = round(out["today"]["overhead_s"]
                                                  / max(out["cached"]["overhead_s"], 1e-3), 1)
    out["evaluations_per_s_cached"] = round(1 / out["cached"]["total_s"], 3)
    out["paper_search_12750_evaluations_h"] = round(12_750 * out["cached"]["total_s"] / 3600, 2)
    return out


def training(config: Config, splits: Any, device: torch.device, args: argparse.Namespace) -> dict:
    space = config.supernet.search_space()
    net = config.supernet.build(space, splits.n_classes)[1.0].to(device)
    options = replace(config.train.options, num_workers=args.workers, val_every=10 ** 6,
                      bf16=device.type == "cuda")   # CPU bf16 autocast is slow without bf16 units
    phase = parse_phases(config.train.warmup, net.space, parallel=True, early_exits=True)[1]
    sliced = replace(splits, train=splits.train.subset(np.arange(args.train_slice)))
    teacher_s, teacher = timed(build_teacher, net, splits, options, device)
    trainer = PhaseTrainer(net, phase, 1, sliced, options, Path(tempfile.mkdtemp()), Dist(device=device), teacher,
                           None, net.dropout)
    train_s, _ = timed(lambda: trainer.run(until=1))
    preset = config.train.options
    grid = validation_grid(phase.space, preset.val_settings)
    subset = validation_subset(len(splits.val), preset)

    def validation() -> None:
        validate(net, grid, trainer.eval_data, preset, Dist(device=device), phase.aep, subset)
    first_s, _ = timed(validation)
    val_s, _ = timed(validation)
    full_epoch_s = train_s * FULL_EPOCH / args.train_slice
    per_epoch_val = val_s / preset.val_every
    return {"phase": phase.name, "subnets_per_step": phase.subnets_per_step, "train_images": args.train_slice,
            "teacher_build_s": round(teacher_s, 1), "train_s": round(train_s, 1),
            "val_settings": len(grid), "val_images": len(splits.val) if subset is None else len(subset),
            "val_every": preset.val_every, "validation_first_s": round(first_s, 1), "validation_s": round(val_s, 1),
            "validation_over_slice_epoch": round(val_s / train_s, 3),
            "full_epoch_train_s_projected": round(full_epoch_s, 1),
            "validation_share_of_full_epochs": round(per_epoch_val / (full_epoch_s + per_epoch_val), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subnets", type=int, default=5)
    parser.add_argument("--calibration", type=int, default=None, help="default: the preset's calibration_size")
    parser.add_argument("--train-slice", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-evaluation", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        write_cifar10(Path(tmp))
        overrides = [f"data.root={tmp}"] + ([f"data.calibration_size={args.calibration}"] if args.calibration else [])
        config = load_config(PRESET, overrides)
        splits = config.data.load()
        result: dict = {"setup": {"preset": str(PRESET), "device": str(device), "threads": torch.get_num_threads(),
                                  "workers": args.workers, "torch": torch.__version__, "cpu": platform.processor()
                                  or platform.machine(), "dataset_write_and_load_s": round(time.perf_counter() - t, 1)}}
        if not args.skip_evaluation:
            result["evaluation"] = evaluation(config, splits, device, args)
        if not args.skip_training:
            result["training"] = training(config, splits, device, args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
