"""Top-1 of a subnet with weights shared in a supernet: BN recalibration, then counting. Every
subnet is scored alike (fixed calibration images, eval transforms, order), so scores are
deterministic and comparable across subnets and resumes.

A search scores thousands of subnets on the same images, so `EvalData` runs each split through its
eval transforms once per resolution and keeps uint8 tensors on the evaluation device; later
evaluations only slice, convert and normalise batches there, with the transform's own steps, so
cached counts equal streamed ones exactly on the CPU. What would pass `budget_mb` is streamed."""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .aep import as_exits, ensemble_logits
from .arch import Architecture
from .bn import recalibrate_bn

log = logging.getLogger(__name__)


def fixed_loader(dataset: Any, resolution: int, batch_size: int, positions: Sequence[int] | None = None,
                 num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """`dataset` (an ImageSet) at `resolution`, in a fixed order, optionally only `positions`."""
    positions = range(len(dataset)) if positions is None else positions
    return DataLoader(dataset, batch_size=batch_size, sampler=[(i, resolution) for i in positions],
                      num_workers=num_workers, pin_memory=pin_memory)


def split_transform(transform: Any) -> tuple[v2.Compose, v2.Compose] | None:
    """(uint8 part, float part) of an eval transform: the steps before its `ToDtype` make the
    uint8 image worth caching, the rest (conversion, normalisation) run on batches. None when the
    transform is not a v2 pipeline of that shape (such data is streamed)."""
    if not isinstance(transform, v2.Compose):
        return None
    steps = list(transform.transforms)
    cut = next((i for i, t in enumerate(steps) if isinstance(t, v2.ToDtype)), None)
    if cut is None:
        return None
    return v2.Compose(steps[:cut]), v2.Compose(steps[cut:])


class _Prepared(Dataset):
    """The uint8 part of `dataset`'s eval transform at `resolution`, image by image."""

    def __init__(self, dataset: Any, resolution: int, prepare: v2.Compose) -> None:
        self.dataset, self.resolution, self.prepare = dataset, resolution, prepare

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset.raw(i)
        return self.prepare(image), label


class CachedImages:
    """One split at one resolution: uint8 images and labels on the device, finished per batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, finish: v2.Compose) -> None:
        self.images, self.labels, self.finish = images, labels, finish

    @classmethod
    def build(cls, dataset: Any, resolution: int, device: torch.device, num_workers: int = 0) -> CachedImages | None:
        parts = split_transform(dataset.transform(resolution))
        if parts is None:
            return None
        loader = DataLoader(_Prepared(dataset, resolution, parts[0]), batch_size=256, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        images, labels = zip(*((x.to(device, non_blocking=True), y.to(device, non_blocking=True)) for x, y in loader))
        return cls(torch.cat(images), torch.cat(labels), parts[1])

    @property
    def nbytes(self) -> int:
        return self.images.nelement() * self.images.element_size() + self.labels.nelement() * 8

    def batches(self, batch_size: int,
                positions: Sequence[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        index = None if positions is None else torch.as_tensor(positions, dtype=torch.long, device=self.images.device)
        n = len(self.labels) if index is None else len(index)
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size) if index is None else index[start:start + batch_size]
            yield self.finish(self.images[rows]), self.labels[rows]


class EvalData:
    """The evaluation images of a `Splits` (calibration, val, test) per resolution, prepared once
    and kept on `device` while they fit in `budget_mb` (None: no limit; 0: always stream).
    `batches(split, resolution, batch_size, positions)` yields (normalised images, labels) on the
    device, from the cache or, past the budget, from a loader with `num_workers`."""

    def __init__(self, splits: Any, device: torch.device, *, budget_mb: float | None = None,
                 num_workers: int = 0) -> None:
        self.splits, self.device, self.budget_mb, self.num_workers = splits, device, budget_mb, num_workers
        self.cache: dict[tuple[str, int], CachedImages | None] = {}

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.cache.values() if c is not None)

    def _cached(self, split: str, resolution: int) -> CachedImages | None:
        key = (split, resolution)
        if key not in self.cache:
            dataset = getattr(self.splits, split)
            size = len(dataset) * (3 * resolution * resolution + 8)
            fits = self.budget_mb is None or self.nbytes + size <= self.budget_mb * 2 ** 20
            self.cache[key] = CachedImages.build(dataset, resolution, self.device, self.num_workers) if fits else None
            if self.cache[key] is not None:
                log.info("evaluation cache: %s at %d px, %d images, %.1f MB on %s (%.1f MB in all)", split,
                         resolution, len(dataset), self.cache[key].nbytes / 2 ** 20, self.device, self.nbytes / 2 ** 20)
            else:
                log.info("evaluation cache: %s at %d px streamed (%.1f MB would pass the %s MB budget, or its "
                         "transform cannot be cached)", split, resolution, size / 2 ** 20, self.budget_mb)
        return self.cache[key]

    def batches(self, split: str, resolution: int, batch_size: int,
                positions: Sequence[int] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of `split` at `resolution`. The test split is always streamed: it is read only
        for final reports, and never held beside the data the search chooses with."""
        cached = None if split == "test" else self._cached(split, resolution)
        if cached is not None:
            return cached.batches(batch_size, positions)
        cuda = self.device.type == "cuda"
        workers = 0 if split == "calibration" else self.num_workers   # a few batches: workers cost more than they save
        loader = fixed_loader(getattr(self.splits, split), resolution, batch_size, positions, workers, cuda)
        return ((x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)) for x, y in loader)


@torch.no_grad()
def count_correct(model: nn.Module, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
                  beta: Sequence[float] | None = None, *, bf16: bool = False,
                  channels_last: bool = False) -> tuple[int, int]:
    """(correct, total) of `model` in eval mode; several exits are combined as sum_i beta_i z_i.
    Counts stay on the device until the end (one host synchronisation per call)."""
    was_training = model.training
    model.eval()
    correct, total = None, 0
    for x, y in batches:
        with torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else nullcontext():
            out = model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        logits = out if beta is None else ensemble_logits(tuple(z.float() for z in as_exits(out)), beta)
        hits = (logits.argmax(1) == y.to(x.device)).sum()
        correct = hits if correct is None else correct + hits
        total += len(y)
    model.train(was_training)
    return (0 if correct is None else int(correct.item())), total


def subnet_top1(supernet: nn.Module, arch: Architecture, data: EvalData, split: str = "val", *,
                exits: Sequence[int] | str | None = None, beta: Sequence[float] | None = None,
                batch_size: int = 256, calibration_batch: int = 100, positions: Sequence[int] | None = None,
                bf16: bool = False, channels_last: bool = False) -> tuple[int, int]:
    """Activate `arch` in `supernet`, recalibrate BN on the calibration images, count correct on
    `split` (only `positions` of it, when given)."""
    supernet.set_active(arch, exits)
    recalibrate_bn(supernet, data.batches("calibration", arch.resolution, calibration_batch))
    return count_correct(supernet, data.batches(split, arch.resolution, batch_size, positions), beta, bf16=bf16,
                         channels_last=channels_last)
