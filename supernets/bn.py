"""BN recalibration: re-estimate running statistics of the active (sub)network on given images.
Weights shared across subnets carry BN statistics of no particular subnet, so every subnet is
recalibrated on fixed training images before it is evaluated. This is `ofa`'s
`set_running_statistics` done in place: `ofa` deep-copies the whole supernet for every call,
which costs more than the forwards of a small subnet."""
from __future__ import annotations

from itertools import chain
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from ofa.imagenet_classification.elastic_nn.modules.dynamic_op import DynamicBatchNorm2d
from torch import nn


class _Moments:
    """Image-weighted sums of one BN layer's batch means and variances."""

    def __init__(self) -> None:
        self.mean: torch.Tensor | float = 0.0
        self.var: torch.Tensor | float = 0.0
        self.count = 0

    def forward_for(self, bn: nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
        """A forward for `bn` that normalises with the batch's statistics and records them, with
        `ofa`'s arithmetic (means taken axis by axis), so the results match it bit for bit."""
        def forward(x: torch.Tensor) -> torch.Tensor:
            mean = x.mean(0, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
            var = ((x - mean) * (x - mean)).mean(0, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
            mean, var = torch.squeeze(mean), torch.squeeze(var)
            self.mean = self.mean + mean * x.size(0)
            self.var = self.var + var * x.size(0)
            self.count += x.size(0)
            c = mean.size(0)
            return F.batch_norm(x, mean, var, bn.weight[:c], bn.bias[:c], False, 0.0, bn.eps)
        return forward


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Set every BN layer's running mean/var (the active channels of an elastic layer) to the
    image-weighted averages of its batch statistics over `loader` (each layer normalising with its
    batch's statistics meanwhile). Works on a supernet's active subnet and on extracted subnets;
    weights and mode are kept, and BN layers the forwards do not reach keep their statistics."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        raise ValueError("recalibrate_bn: the model has no BatchNorm2d layer to recalibrate")
    batches = iter(loader)
    first = next(batches, None)
    if first is None:
        raise ValueError("recalibrate_bn: the calibration loader yielded no batch")
    moments = [_Moments() for _ in bns]
    for bn, m in zip(bns, moments):
        bn.forward = m.forward_for(bn)
    DynamicBatchNorm2d.SET_RUNNING_STATISTICS = True  # elastic layers call bn(x), not F.batch_norm
    was_training = model.training
    model.eval()  # dropout (after the last BN) off: no random draws, the same statistics
    try:
        device = next(model.parameters()).device
        for x, _ in chain([first], batches):
            model(x.to(device, non_blocking=True))
    finally:
        DynamicBatchNorm2d.SET_RUNNING_STATISTICS = False
        model.train(was_training)
        for bn in bns:
            del bn.forward
    for bn, m in zip(bns, moments):
        if m.count > 0:
            c = m.mean.size(0)
            bn.running_mean[:c].copy_(m.mean / m.count)
            bn.running_var[:c].copy_(m.var / m.count)
