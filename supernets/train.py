"""Supernet training through a phase table: Extended Progressive Shrinking and the NAT2 warm-up.

Each phase starts from the previous phase's best checkpoint and distils from its progressively
extracted teacher (PET): that checkpoint's max network, BN recalibrated at every training
resolution, frozen. A step draws one resolution and `subnets_per_step` subnets from the phase's
space (seeded by the step: every rank trains the same subnets), accumulates their gradients, then
takes one SGD step; augmentation and dropout are seeded per (seed, phase, epoch, rank). A killed
run continues from the checkpoint of its last epoch and ends with the same weights as an
uninterrupted one, loader workers included. Under `bf16` the forward runs in bfloat16, the losses
in fp32."""
from __future__ import annotations

import csv
import logging
import math
import sys
import time
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from .aep import SCHEMES, aep_loss, aep_weights, as_exits
from .arch import Architecture
from .checkpoint import FORMAT, atomic_save, atomic_write, check_meta, load_checkpoint, supernet_meta
from .data import Splits
from .evaluation import EvalData, subnet_top1
from .distributed import (DROPOUT, LOADER, SUBNETS, VALIDATION, Dist, ResolutionBatchSampler, all_reduce_sum,
                          step_seed)
from .kd import TEACHER_BN_MODES, ResolutionTeacher, freeze, kd_loss, teacher_logits
from .phases import Phase, validation_grid
from .settings import check_fields
from .supernet import Supernet

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


@dataclass(frozen=True)
class TrainOptions:
    """Settings shared by all phases (the phase table overrides lr, weight decay, dropout, clip).
    A phase's `lr` is for a global batch of `reference_batch`, scaled linearly to `batch_size` x
    processes."""

    batch_size: int = 64
    reference_batch: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0
    kd_temperature: float = 1.0
    teacher_bn: str = "eval"
    aep_scheme: str = "desc"
    grad_clip: float | None = None
    bf16: bool = False
    seed: int = 0
    val_every: int = 1
    val_settings: int = 32
    val_images: int | None = None
    eval_batch_size: int = 256
    calibration_batch: int = 100
    eval_cache_mb: float | None = 2048
    eval_bf16: bool | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_fields(self, integers=dict.fromkeys(("batch_size", "reference_batch", "val_every", "val_settings",
                                                   "eval_batch_size", "calibration_batch", "val_images"), 1)
                     | {"num_workers": 0, "seed": 0},
                     numbers=dict.fromkeys(("eval_cache_mb", "kd_ratio", "weight_decay"), (0, math.inf))
                     | {"momentum": (0, 1)}, positive=("kd_temperature", "grad_clip"), fractions=("label_smoothing",),
                     choices={"teacher_bn": TEACHER_BN_MODES, "aep_scheme": SCHEMES},
                     flags=("nesterov", "bf16", "eval_bf16"),
                     nullable=("val_images", "eval_cache_mb", "eval_bf16", "grad_clip"))


def build_teacher(supernet: Supernet, splits: Splits, options: TrainOptions, device: torch.device) -> nn.Module:
    """PET: the supernet's max network (every exit of an early-exit supernet), frozen. In eval
    mode its BN is recalibrated on the calibration images at every training resolution, and each
    batch is normalised with the statistics of its own resolution."""
    teacher = supernet.extract(supernet.space.max_arch(), "all" if supernet.early_exits else None).to(device)
    if options.teacher_bn == "train":
        return freeze(teacher, "train")
    data = EvalData(splits, device, budget_mb=0)   # each resolution read once: nothing to gain from a cache
    return ResolutionTeacher(teacher, lambda r: data.batches("calibration", r, options.calibration_batch),
                             supernet.space.resolutions)


def eval_bf16(options: TrainOptions, device: torch.device) -> bool:
    """bf16 autocast for evaluation: `eval_bf16`, or by default on CUDA only."""
    return device.type == "cuda" if options.eval_bf16 is None else options.eval_bf16


def validation_subset(n: int, options: TrainOptions) -> np.ndarray | None:
    """The fixed validation positions scored between full validations (`val_images` of `n`,
    drawn once from the run's seed), or None for all."""
    if options.val_images is None or options.val_images >= n:
        return None
    return np.sort(np.random.default_rng(step_seed(VALIDATION, options.seed, n)).choice(n, options.val_images,
                                                                                      replace=False))


def validate(supernet: Supernet, archs: Sequence[Architecture], data: EvalData, options: TrainOptions,
             ctx: Dist = Dist(), aep: bool = False, positions: Sequence[int] | None = None) -> list[float]:
    """Validation top-1 (%) of each architecture on `positions` of the validation split (all by
    default), each after BN recalibration on the calibration images; the images are sharded over
    ranks and the counts all-reduced."""
    positions = np.arange(len(data.splits.val)) if positions is None else np.asarray(positions)
    exits = "all" if aep and supernet.early_exits else None
    top1 = []
    for arch in archs:
        correct, total = subnet_top1(supernet, arch, data, "val", exits=exits,
                                     beta=aep_weights(options.aep_scheme, arch.exit)[1] if exits else None,
                                     batch_size=options.eval_batch_size, calibration_batch=options.calibration_batch,
                                     positions=positions[ctx.rank::ctx.world_size], bf16=eval_bf16(options, ctx.device),
                                     channels_last=ctx.device.type == "cuda")
        correct, total = all_reduce_sum([correct, total], ctx)
        top1.append(100.0 * correct / max(total, 1))
    return top1


class _Metrics:
    """metrics.csv rewritten atomically from the history kept in the checkpoint, plus TensorBoard."""

    def __init__(self, path: Path, tb_dir: Path | None, tag: str) -> None:
        self.path, self.tag = path, tag
        self.writer = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(tb_dir))

    def write(self, history: list[dict[str, Any]]) -> None:
        with atomic_write(self.path, "w") as f:
            out = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in history for k in row)), restval="")
            out.writeheader()
            out.writerows(history)
        if self.writer is not None:
            row = history[-1]
            for key, value in row.items():
                if key != "epoch" and value != "":
                    self.writer.add_scalar(f"{self.tag}/{key}", value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


ArchSampler = Callable[[np.random.Generator, int, int], list[Architecture]]


class PhaseTrainer:
    """Runs one phase on one supernet: the epoch loop, validation, checkpoints, metrics.
    `arch_sampler(rng, resolution, n)` replaces uniform sampling from the phase's space (the search's
    adaptation samples from the archive's distribution); `resolution_weights` are the probabilities
    of the supernet's resolutions per batch (default uniform)."""

    def __init__(self, supernet: Supernet, phase: Phase, index: int, splits: Splits, options: TrainOptions,
                 out_dir: Path, ctx: Dist, teacher: nn.Module | None, tb_dir: Path | None,
                 base_dropout: float, arch_sampler: ArchSampler | None = None,
                 resolution_weights: Sequence[float] | None = None) -> None:
        self.supernet, self.phase, self.index, self.splits = supernet, phase, index, splits
        self.base_dropout, self.arch_sampler, self.tb_dir = base_dropout, arch_sampler, tb_dir
        self.options, self.dir, self.ctx, self.teacher = options, out_dir, ctx, teacher
        self.model: nn.Module = supernet
        if ctx.enabled:
            # running statistics are never used in training (every evaluation recalibrates): no broadcast
            self.model = DistributedDataParallel(supernet, device_ids=[ctx.device.index] if ctx.device.type == "cuda"
                                                 else None, find_unused_parameters=True, broadcast_buffers=False)
        self.sampler = ResolutionBatchSampler(len(splits.train), options.batch_size, supernet.space.resolutions,
                                              seed=options.seed + 1000 * index, ctx=ctx, weights=resolution_weights)
        # its own generator: starting the workers draws their base seed from it, not from the
        # global generator that dropout uses (else a resumed epoch's masks would shift by a draw)
        loader_seed = int(step_seed(LOADER, options.seed, index, ctx.rank).generate_state(1)[0])
        self.loader = DataLoader(splits.train, batch_sampler=self.sampler, num_workers=options.num_workers,
                                 pin_memory=ctx.device.type == "cuda", persistent_workers=options.num_workers > 0,
                                 generator=torch.Generator().manual_seed(loader_seed))
        self.steps_per_epoch = len(self.sampler)
        scale = options.batch_size * ctx.world_size / options.reference_batch
        self.lr = phase.lr * scale
        self.optimizer = create_optimizer_v2(
            supernet, "sgd" if options.nesterov else "momentum", lr=self.lr, momentum=options.momentum,
            weight_decay=options.weight_decay if phase.weight_decay is None else phase.weight_decay)
        warmup_steps = phase.warmup_epochs * self.steps_per_epoch
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=phase.epochs * self.steps_per_epoch, warmup_t=warmup_steps,
            warmup_lr_init=self.lr / max(warmup_steps, 1), warmup_prefix=warmup_steps > 0, t_in_epochs=False)
        self.grad_clip = phase.grad_clip if phase.grad_clip is not None else options.grad_clip
        self.autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=options.bf16)
        self.eval_data = EvalData(splits, ctx.device, budget_mb=options.eval_cache_mb, num_workers=options.num_workers)
        self.val_subset = validation_subset(len(splits.val), options)

    def _payload(self, epoch: int, best: tuple[float, int], history: list[dict[str, Any]],
                 optimizer: bool) -> dict[str, Any]:
        state = {"format": FORMAT, "phase": self.phase.name, "epoch": epoch, "best_top1": best[0],
                 "best_epoch": best[1], "history": history, "supernet": supernet_meta(self.supernet),
                 "model": self.supernet.state_dict()}
        if optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def _resume(self) -> tuple[int, tuple[float, int], list[dict[str, Any]]]:
        path = self.dir / "last.pt"
        state = load_checkpoint(path)
        check_meta(path, state, self.supernet)
        self.supernet.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        log.info("%s: continuing from %s after epoch %d", self.phase.name, path, state["epoch"])
        return state["epoch"], (state["best_top1"], state["best_epoch"]), state["history"]

    def _loss(self, out: Any, y: torch.Tensor, z_t: torch.Tensor | None, alpha: Sequence[float]) -> torch.Tensor:
        """sum_i alpha_i [CE(z_i, y) + kd_ratio H(p_T, z_i)] over the active exits (one exit: alpha = 1),
        in fp32 whatever precision the forward ran in: a loss on bf16 logits (8-bit mantissa) puts
        ~3e-3 relative error into the gradient."""
        o = self.options
        exits = tuple(z.float() for z in as_exits(out))
        loss = aep_loss(exits, y, alpha, o.label_smoothing)
        if z_t is not None and o.kd_ratio > 0:
            loss = loss + o.kd_ratio * sum(a * kd_loss(z, z_t, o.kd_temperature) for a, z in zip(alpha, exits))
        return loss

    def step_archs(self, step: int, resolution: int) -> list[Architecture]:
        """The subnets of global step `step`: the same on every rank and after a resume."""
        rng = np.random.default_rng(step_seed(SUBNETS, self.options.seed, self.index, step))
        if self.arch_sampler is not None:
            return self.arch_sampler(rng, resolution, self.phase.subnets_per_step)
        return replace(self.phase.space, resolutions=(resolution,)).sample(rng, self.phase.subnets_per_step)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, archs: Sequence[Architecture]) -> float:
        """Accumulate the gradients of `archs` on (x, y), then one optimiser step; returns the
        mean loss of the subnets. A non-finite gradient norm (identical on all ranks) raises TrainingError."""
        z_t = None
        if self.teacher is not None and self.options.kd_ratio > 0:
            with self.autocast:
                beta = aep_weights(self.options.aep_scheme, len(self.teacher.exit_list))[1]
                z_t = teacher_logits(self.teacher, x, beta)
        losses = []   # on the device: one host synchronisation per step, not one per subnet
        for j, arch in enumerate(archs):
            self.supernet.set_active(arch, "all" if self.phase.aep and self.supernet.early_exits else None)
            alpha = aep_weights(self.options.aep_scheme, len(self.supernet.active_exits))[0]
            last = j == len(archs) - 1
            with (self.model.no_sync() if self.ctx.enabled and not last else nullcontext()):
                with self.autocast:
                    out = self.model(x)
                loss = self._loss(out, y, z_t, alpha)
                loss.backward()
            losses.append(loss.detach())
        norm = nn.utils.clip_grad_norm_(self.supernet.parameters(), self.grad_clip or math.inf)
        mean_loss, norm = (float(v) for v in torch.stack([sum(losses) / len(losses), norm.detach()]).tolist())
        if not math.isfinite(norm):
            last = self.dir / "last.pt"
            kept = f"the last good checkpoint {last} is kept" if last.exists() else "this phase has no checkpoint yet"
            raise TrainingError(
                f"phase {self.phase.name!r}: non-finite gradient (norm {norm}, losses {[v.item() for v in losses]} "
                f"for subnets {[str(a) for a in archs]}); {kept}. Lower the phase's lr or set train.grad_clip")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss

    def check_sync(self, digest: int) -> None:
        """All ranks must hold the same weights and have trained the same subnets (`digest` of
        this epoch's architectures); raises TrainingError naming the ranks that differ."""
        with torch.no_grad():
            flat = [p.detach().double().flatten() for p in self.supernet.parameters()]
            mine = torch.tensor([sum(f.sum() for f in flat).item(), sum((f * f).sum() for f in flat).item(),
                                 float(digest)], dtype=torch.float64, device=self.ctx.device)
        everyone = [torch.empty_like(mine) for _ in range(self.ctx.world_size)]
        torch.distributed.all_gather(everyone, mine)
        differ = [r for r, t in enumerate(everyone) if not torch.equal(t, everyone[0])]
        if differ:
            raise TrainingError(f"phase {self.phase.name!r}: ranks {differ} diverged from rank 0 (weights or "
                                f"sampled subnets differ: {[t.tolist() for t in everyone]})")

    def run(self, until: int | None = None) -> float:
        """Train the remaining epochs of the phase, or up to epoch `until` (a phase spread over
        several calls, as the search's adaptation is); returns the best mean validation top-1."""
        ctx, phase, o = self.ctx, self.phase, self.options
        start, best, history = 0, (-1.0, -1), []
        if (self.dir / "last.pt").exists():
            start, best, history = self._resume()
        elif phase.sort_channels:
            self.supernet.sort_channels(phase.expand_stage)
        self.supernet.set_dropout(self.base_dropout if phase.dropout is None else phase.dropout)
        metrics = _Metrics(self.dir / "metrics.csv", self.tb_dir, phase.name) if ctx.is_main else None
        grid = validation_grid(phase.space, o.val_settings)
        try:
            for epoch in range(start, phase.total_epochs if until is None else min(until, phase.total_epochs)):
                t0 = time.time()
                torch.manual_seed(int(step_seed(DROPOUT, o.seed, self.index, epoch, ctx.rank).generate_state(1)[0]))
                self.sampler.set_epoch(epoch)
                self.model.train()
                loss_sum, n_steps, digest = 0.0, 0, 0
                bar = tqdm(self.loader, desc=f"{phase.name} {epoch + 1}/{phase.total_epochs}", leave=False,
                           disable=not (ctx.is_main and sys.stderr.isatty()))
                for b, (x, y) in enumerate(bar):
                    step = epoch * self.steps_per_epoch + b
                    self.scheduler.step_update(step)
                    x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
                    archs = self.step_archs(step, x.shape[-1])
                    digest = zlib.crc32(repr(archs).encode(), digest)
                    loss_sum += self.train_step(x, y, archs)
                    n_steps += 1
                    bar.set_postfix(loss=f"{loss_sum / n_steps:.3f}")
                if ctx.enabled:
                    self.check_sync(digest)
                loss_sum, n_steps = all_reduce_sum([loss_sum, n_steps], ctx)
                row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                                       "train_loss": loss_sum / n_steps, "val_top1": "", "val_min_net_top1": "",
                                       "val_max_net_top1": "", "val_full_top1": "", "seconds": 0.0,
                                       "val_seconds": 0.0}
                improved, last = False, epoch + 1 == phase.total_epochs
                if (epoch + 1) % o.val_every == 0 or last:
                    t_val = time.time()
                    top1 = validate(self.supernet, grid, self.eval_data, o, ctx, phase.aep, self.val_subset)
                    row.update(val_top1=float(np.mean(top1)), val_min_net_top1=top1[0], val_max_net_top1=top1[-1])
                    improved = row["val_top1"] > best[0]
                    best = (row["val_top1"], epoch + 1) if improved else best
                    if last and self.val_subset is not None:
                        row["val_full_top1"] = float(np.mean(validate(self.supernet, grid, self.eval_data, o, ctx,
                                                                      phase.aep)))
                    row["val_seconds"] = time.time() - t_val
                row["seconds"] = time.time() - t0
                history = history + [row]
                if ctx.is_main:
                    if improved:
                        atomic_save(self._payload(epoch + 1, best, history, optimizer=False), self.dir / "best.pt")
                    atomic_save(self._payload(epoch + 1, best, history, optimizer=True), self.dir / "last.pt")
                    metrics.write(history)
                log.info("%s epoch %d/%d: loss %.4f, val top-1 %s (%.1f s)", phase.name, epoch + 1, phase.total_epochs,
                         row["train_loss"], "-" if row["val_top1"] == "" else f"{row['val_top1']:.2f}", row["seconds"])
                if ctx.enabled:
                    torch.distributed.barrier()
        finally:
            if metrics is not None:
                metrics.close()
        return best[0]


def phase_done(out_dir: Path, phase: Phase) -> bool:
    path = out_dir / phase.name / "last.pt"
    return path.exists() and load_checkpoint(path).get("epoch") == phase.total_epochs


def train_supernet(supernet: Supernet, phases: Sequence[Phase], splits: Splits, out_dir: str | Path,
                   options: TrainOptions = TrainOptions(), ctx: Dist = Dist(),
                   tb_dir: str | Path | None = None) -> Path:
    """Train `supernet` through `phases`, writing `out_dir/<phase>/{last.pt,best.pt,metrics.csv}`;
    returns the last phase's best checkpoint. Finished phases are skipped and an interrupted one
    continues from its last.pt, so calling this again after a kill resumes the run."""
    out_dir = Path(out_dir)
    supernet.to(ctx.device)
    base_dropout = supernet.dropout
    first = next((i for i, p in enumerate(phases) if not phase_done(out_dir, p)), len(phases))
    if first == len(phases):
        log.info("all %d phases are finished in %s", len(phases), out_dir)
    for i in range(first, len(phases)):
        phase, teacher = phases[i], None
        if i > 0:
            prev = out_dir / phases[i - 1].name / "best.pt"
            state = load_checkpoint(prev)
            check_meta(prev, state, supernet)
            supernet.load_state_dict(state["model"])
            if options.kd_ratio > 0:
                teacher = build_teacher(supernet, splits, options, ctx.device)
        (out_dir / phase.name).mkdir(parents=True, exist_ok=True)
        log.info("phase %s: %d (+%d warm-up) epochs, lr %g, %d subnet(s) per step, space %s", phase.name,
                 phase.epochs, phase.warmup_epochs, phase.lr, phase.subnets_per_step,
                 {k: v for k, v in asdict(phase.space).items() if len(v) > 1})
        PhaseTrainer(supernet, phase, i, splits, options, out_dir / phase.name, ctx, teacher,
                     None if tb_dir is None else Path(tb_dir) / phase.name, base_dropout).run()
    best = out_dir / phases[-1].name / "best.pt"
    supernet.load_state_dict(load_checkpoint(best)["model"])
    return best
