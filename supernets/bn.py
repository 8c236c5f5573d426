"""BN recalibration: re-estimate running statistics of the active (sub)network on given images.

Weights shared across subnets carry batch-norm statistics of no particular subnet, so every
subnet is recalibrated on a fixed subset of training images before it is evaluated.
"""
from __future__ import annotations

from itertools import chain
from typing import Iterable

import torch
from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics
from torch import nn


def recalibrate_bn(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set every BN layer's running mean/var to their averages over `loader`'s batches.

    Works on a supernet (for its active subnet) and on extracted subnets; the model's weights
    and mode are left as they were.
    """
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise ValueError("recalibrate_bn: the model has no BatchNorm2d layer to recalibrate")
    batches = iter(loader)
    first = next(batches, None)
    if first is None:
        raise ValueError("recalibrate_bn: the calibration loader yielded no batch")
    set_running_statistics(model, chain([first], batches))
