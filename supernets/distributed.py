"""torch.distributed under torchrun: NCCL on CUDA, gloo on CPU; rank 0 does the I/O.
Every rank must train the same subnets in a step, so sampling seeds come from the step, and
every rank sees batches of the same resolution, so resolutions come from (seed, epoch, batch).
Augmentation and dropout must differ between ranks, so their seeds also take the rank."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> Dist:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK), or run
    alone. `device` "cpu" forces gloo on CPU; None picks CUDA when available."""
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(),
                torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu"))


def all_reduce_sum(values: Sequence[float], ctx: Dist) -> list[float]:
    """Sum numbers over ranks (float64, on the rank's device)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


# The streams of random numbers of training. SeedSequence pads its entropy with zeros, so
# (seed, epoch) and (seed, epoch, 0) would be one stream: each stream ends with its own tag.
SUBNETS, RESOLUTIONS, AUGMENTATION, DROPOUT, LOADER, VALIDATION = 1, 2, 3, 4, 5, 6


def step_seed(stream: int, *parts: int) -> np.random.SeedSequence:
    """The seed of `stream` (one of the tags above) for integers such as (run seed, phase, epoch,
    step): equal on every rank unless a part is the rank."""
    return np.random.SeedSequence([int(p) for p in parts] + [int(stream)])


class ResolutionBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Batches of (index, resolution, augmentation seed) items for `ImageSet`, one resolution a batch.
    Indices come from a DistributedSampler (shuffled per epoch, a disjoint shard per rank); batch
    resolutions are drawn from (seed, epoch), so all ranks agree on them. Each item's augmentation
    seed is drawn from (seed, epoch, rank): ranks draw different flips and policies, and since the
    draws do not depend on which loader worker loads the image, a resumed run augments exactly as an
    uninterrupted one."""

    def __init__(self, n: int, batch_size: int, resolutions: Sequence[int], *, seed: int, ctx: Dist = Dist(),
                 shuffle: bool = True, drop_last: bool = True, weights: Sequence[float] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size = {batch_size}; expected a positive integer")
        self.sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle,
                                          seed=seed, drop_last=drop_last)
        self.batch_size, self.resolutions, self.seed, self.drop_last = batch_size, tuple(resolutions), seed, drop_last
        self.rank = ctx.rank
        self.weights = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
        if len(self) == 0:
            raise ValueError(f"{n} training images give no batch of {batch_size} on {ctx.world_size} process(es); "
                             "lower batch_size")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        rng = np.random.default_rng(step_seed(RESOLUTIONS, self.seed, self.epoch))
        resolutions = rng.choice(self.resolutions, size=len(self), p=self.weights)
        indices = list(self.sampler)
        rng = np.random.default_rng(step_seed(AUGMENTATION, self.seed, self.epoch, self.rank))
        seeds = rng.integers(2 ** 32, size=len(indices))   # torch's CPU generator keeps 32 bits of a seed
        for b in range(len(self)):
            r = int(resolutions[b])
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(i, r, int(s)) for i, s in zip(indices[batch], seeds[batch])]
