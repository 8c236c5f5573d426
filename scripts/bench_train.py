"""Supernet training-step benchmarks, printed as JSON.

1. Ours / `ofa`: images/s of a kernel-phase training step (one subnet per step: a kernel from
   {3, 5, 7} per block, expand 6, depth 4; forward, backward, optimiser step) of our B-variant
   supernet through the real `PhaseTrainer.train_step`, and of `ofa`'s OFAMobileNetV3 running
   the same subnets with the same optimiser (timm SGD, nesterov, momentum 0.9, lr 0.03 at batch
   64) and loss (cross-entropy, label smoothing 0.1). Random 32 px input; the two models take turns
   round by round (who goes first alternates); medians over all timed steps.
2. DDP overhead: median `train_step` time of a 2-process gloo job on CPU (`PhaseTrainer` wrapping
   DDP itself) over that of a single process, one thread each, at the same per-process batch; and,
   as a control for cores shared with other work, over two independent processes side by side.

    PYTHONPATH=. python scripts/bench_train.py [--quick] [--steps 5] [--rounds 5] [--batch 64] [--threads 0]

On a machine whose cores are busy with other work, pass --threads 1: several OpenMP threads
competing for cores slow every step down many times over and the comparison means nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
from timm.optim import create_optimizer_v2

from supernets import Architecture, Supernet, default_space, load_splits
from supernets.distributed import Dist
from supernets.phases import parse_phases
from supernets.train import PhaseTrainer, TrainOptions

from _bench import timed
from bench_supernet import ofa_subnet_args

SIZE, N_CLASSES = 32, 10
KERNEL_PHASE = {"name": "kernel", "kernels": "all", "epochs": 1, "lr": 0.03}


def kernel_trainer(ctx: Dist, batch: int, out_dir: Path) -> PhaseTrainer:
    """Our B-variant supernet in the kernel phase, behind the real trainer (no teacher, no KD)."""
    space = default_space(False, False, 1.0, (SIZE,))
    supernet = Supernet(n_classes=N_CLASSES, width=1.0, space=space).train()
    phase = parse_phases([KERNEL_PHASE], space, parallel=False, early_exits=False)[0]
    splits = load_splits("synthetic", resolution=SIZE, n_classes=N_CLASSES, size=SIZE, n_train=4 * batch,
                         n_val=16, n_test=16, calibration_size=16)
    return PhaseTrainer(supernet, phase, 0, splits, TrainOptions(batch_size=batch, kd_ratio=0.0), out_dir, ctx,
                        teacher=None, tb_dir=None, base_dropout=0.1)


def ofa_step_fn(options: TrainOptions, lr: float) -> Callable[[torch.Tensor, torch.Tensor, Architecture], float]:
    """One `ofa` training step on a given subnet, with our trainer's optimiser and loss."""
    net = OFAMobileNetV3(n_classes=N_CLASSES, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4],
                         width_mult=1.0).train()
    optimizer = create_optimizer_v2(net, "sgd", lr=lr, momentum=options.momentum, weight_decay=options.weight_decay)

    def step(x: torch.Tensor, y: torch.Tensor, arch: Architecture) -> float:
        net.set_active_subnet(**ofa_subnet_args(arch))
        loss = F.cross_entropy(net(x), y, label_smoothing=options.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def bench_vs_ofa(batch: int, steps: int, rounds: int, warmup: int) -> dict[str, float]:
    """Images/s of ours and `ofa` on the same subnet sequence, interleaved in rounds."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, SIZE, SIZE), torch.randint(0, N_CLASSES, (batch,))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = kernel_trainer(Dist(), batch, Path(tmp))
        ofa_step = ofa_step_fn(trainer.options, trainer.lr)
        steppers: dict[str, Callable[[Architecture], float]] = {
            "ours": lambda arch: trainer.train_step(x, y, [arch]), "ofa": lambda arch: ofa_step(x, y, arch)}
        times: dict[str, list[float]] = {name: [] for name in steppers}
        step = 0
        for r in range(rounds + 1):  # round 0 is the warm-up
            n = warmup if r == 0 else steps
            archs = [trainer.step_archs(s, SIZE)[0] for s in range(step, step + n)]
            step += n
            for name in sorted(steppers, reverse=r % 2 == 1):
                dts = [timed(steppers[name], arch)[0] for arch in archs]
                if r > 0:
                    times[name] += dts
    ours, ofa = (batch / statistics.median(times[n]) for n in ("ours", "ofa"))
    return {"ours_images_per_s": round(ours, 1), "ofa_images_per_s": round(ofa, 1),
            "ours_over_ofa": round(ours / ofa, 3), "timed_steps_each": steps * rounds}


def _ddp_worker(rank: int, world: int, ddp: bool, port: int, batch: int, steps: int, warmup: int,
                result: str) -> None:
    """One process of the DDP measurement (`ddp` False: a lone process); rank 0 writes its
    per-step times to `result`."""
    torch.set_num_threads(1)
    ctx = Dist()
    if ddp:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        ctx = Dist(rank, world, torch.device("cpu"))
    torch.manual_seed(rank)
    x, y = torch.randn(batch, 3, SIZE, SIZE), torch.randint(0, N_CLASSES, (batch,))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = kernel_trainer(ctx, batch, Path(tmp))
        archs = [trainer.step_archs(s, SIZE) for s in range(warmup + steps)]
        times = [timed(trainer.train_step, x, y, a)[0] for a in archs]
    if rank == 0:
        Path(result).write_text(json.dumps(times[warmup:]))
    if ddp:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_ddp(batch: int, steps: int, warmup: int) -> dict[str, float]:
    """Median step seconds of one process, two independent processes and a 2-process DDP job
    (gloo), all single-threaded, each run in fresh processes."""
    runs = {"one_process": (1, False), "two_independent": (2, False), "two_process_ddp": (2, True)}
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (world, ddp) in runs.items():
            result = str(Path(tmp) / f"{name}.json")
            mp.spawn(_ddp_worker, args=(world, ddp, _free_port(), batch, steps, warmup, result), nprocs=world)
            medians[name] = statistics.median(json.loads(Path(result).read_text()))
    return {"batch_per_process": batch, "threads_per_process": 1, "timed_steps": steps,
            **{f"{name}_step_s": round(t, 4) for name, t in medians.items()},
            "two_over_one": round(medians["two_process_ddp"] / medians["one_process"], 3),
            "two_over_two_independent": round(medians["two_process_ddp"] / medians["two_independent"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke run (2 rounds x 2 steps)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (and 2x that for DDP)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of the ours / ofa comparison (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.steps, args.rounds, args.warmup = 2, 2, 1
    report = {
        "setup": {"batch": args.batch, "size": SIZE, "steps": args.steps, "rounds": args.rounds,
                  "warmup": args.warmup, "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "cpu": platform.processor() or platform.machine()},
        "kernel_phase_step": bench_vs_ofa(args.batch, args.steps, args.rounds, args.warmup),
        "ddp_gloo": bench_ddp(args.batch, 2 * args.steps, args.warmup),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
