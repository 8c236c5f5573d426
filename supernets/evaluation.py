"""Top-1 of a subnet with weights shared in a supernet: BN recalibration, then counting.

Every subnet is scored the same way (fixed calibration images, eval transforms, fixed order), so
scores are deterministic and comparable across subnets and across resumes.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from .aep import ensemble_logits
from .arch import Architecture
from .bn import recalibrate_bn


def fixed_loader(dataset: Any, resolution: int, batch_size: int, positions: Sequence[int] | None = None,
                 num_workers: int = 0) -> DataLoader:
    """`dataset` (an ImageSet) at `resolution`, in a fixed order, optionally only `positions`."""
    positions = range(len(dataset)) if positions is None else positions
    return DataLoader(dataset, batch_size=batch_size, sampler=[(i, resolution) for i in positions],
                      num_workers=num_workers)


@torch.no_grad()
def count_correct(model: nn.Module, loader: DataLoader, device: torch.device,
                  beta: Sequence[float] | None = None) -> tuple[int, int]:
    """(correct, total) of `model` in eval mode; several exits are combined as sum_i beta_i z_i."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in loader:
        out = model(x.to(device))
        logits = out if beta is None else ensemble_logits(out, beta)
        correct += (logits.argmax(1).cpu() == y).sum().item()
        total += len(y)
    model.train(was_training)
    return correct, total


def subnet_top1(supernet: nn.Module, arch: Architecture, calibration: Any, dataset: Any, *, device: torch.device,
                exits: Sequence[int] | str | None = None, beta: Sequence[float] | None = None,
                batch_size: int = 256, calibration_batch: int = 100, positions: Sequence[int] | None = None,
                num_workers: int = 0) -> tuple[int, int]:
    """Activate `arch` in `supernet`, recalibrate BN on `calibration`, count correct on `dataset`."""
    supernet.set_active(arch, exits)
    calib = fixed_loader(calibration, arch.resolution, calibration_batch)
    recalibrate_bn(supernet, ((x.to(device), y) for x, y in calib))
    return count_correct(supernet, fixed_loader(dataset, arch.resolution, batch_size, positions, num_workers),
                         device, beta)
