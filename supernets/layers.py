"""The OFA MobileNetV3 backbone plan and the static modules shared by supernets and subnets.
Module names mirror `ofa`'s static layers (conv / bn / act, inverted_bottleneck / depth_conv /
point_linear) so that weights map one to one between `ofa`, the supernet and extracted subnets."""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from ofa.utils import make_divisible
from torch import nn

from .arch import MBCONV, CONV1X1, TRANSFORM

CHANNEL_DIVISIBLE = 8
STEM_WIDTH = 16
# (base output channels, stride, activation, squeeze-excite) of the five body stages.
STAGES = ((24, 2, "relu", False), (40, 2, "relu", True), (80, 2, "h_swish", False),
          (112, 1, "h_swish", True), (160, 2, "h_swish", True))
HEAD_EXPAND, HEAD_MIX = 6, 8  # head widths as multiples of the stage's base width
SE_REDUCTION = 4

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "h_swish": nn.Hardswish}
ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": F.relu, "h_swish": F.hardswish}


def divisible(channels: float) -> int:
    return make_divisible(channels, CHANNEL_DIVISIBLE)


def middle_channels(in_channels: int, expand: int) -> int:
    """Channels inside an MBConv, as `ofa` computes them for an active expand ratio."""
    return divisible(round(in_channels * expand))


def se_channels(channels: int) -> int:
    return divisible(channels // SE_REDUCTION)


@dataclass(frozen=True)
class Position:
    """A block position of the body: fixed channels, stride and activation."""

    stage: int
    index: int
    in_channels: int
    out_channels: int
    stride: int
    act: str
    se: bool

    @property
    def residual(self) -> bool:
        return self.index > 0


@dataclass(frozen=True)
class Plan:
    """Channel widths of the backbone for one width multiplier (applied once, heads included)."""

    width: float

    @property
    def stem_channels(self) -> int:
        return divisible(STEM_WIDTH * self.width)

    def stage_channels(self, stage: int) -> int:
        return divisible(STAGES[stage][0] * self.width)

    @lru_cache(maxsize=None)
    def position(self, stage: int, index: int) -> Position:
        out, stride, act, se = STAGES[stage]
        cout = self.stage_channels(stage)
        cin = (self.stage_channels(stage - 1) if stage else self.stem_channels) if index == 0 else cout
        return Position(stage, index, cin, cout, stride if index == 0 else 1, act, se)

    def head_channels(self, stage: int) -> tuple[int, int]:
        base = STAGES[stage][0]
        return divisible(HEAD_EXPAND * base * self.width), divisible(HEAD_MIX * base * self.width)


def spatial(size: int, stride: int) -> int:
    """Output size of a 'same'-padded conv or a ceil-mode pool."""
    return math.ceil(size / stride)


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = None, bn: bool = True, bias: bool = False) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias))
        if bn:
            layers["bn"] = nn.BatchNorm2d(cout)
        if act:
            layers["act"] = ACTIVATIONS[act]()
        super().__init__(layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        mid = se_channels(channels)
        self.reduce = nn.Conv2d(channels, mid, 1)
        self.expand = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * F.hardsigmoid(self.expand(y))


class MBConv(nn.Module):
    """Static inverted bottleneck: 1x1 expand (absent for expand 1), depthwise k x k (+SE), 1x1."""

    def __init__(self, cin: int, cout: int, kernel: int, expand: int, stride: int, act: str,
                 se: bool) -> None:
        super().__init__()
        mid = middle_channels(cin, expand)
        self.inverted_bottleneck = ConvBNAct(cin, mid, act=act) if expand != 1 else None
        self.depth_conv = ConvBNAct(mid, mid, kernel, stride, groups=mid, act=act)
        if se:
            self.depth_conv.add_module("se", SqueezeExcite(mid))
        self.point_linear = ConvBNAct(mid, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class Transformation(nn.Sequential):
    """Third parallel branch: ceil-mode max-pool when strided, 1x1 conv when channels change."""

    def __init__(self, cin: int, cout: int, stride: int, act: str) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if stride > 1:
            layers["pool"] = nn.MaxPool2d(stride, stride, ceil_mode=True)
        if cin != cout:
            layers["conv"] = nn.Conv2d(cin, cout, 1, bias=True)
        layers["bn"] = nn.BatchNorm2d(cout)
        layers["act"] = ACTIVATIONS[act]()
        super().__init__(layers)


class ParallelBlock(nn.Module):
    """Sum of the branches selected by the key A: MBConv (+identity), 1x1 conv, transformation.
    A plain OFA block is the special case key = 4 with only the MBConv branch present."""

    def __init__(self, mbconv: nn.Module | None, conv1x1: nn.Module | None = None,
                 transform: nn.Module | None = None, residual: bool = False, key: int = MBCONV) -> None:
        super().__init__()
        self.mbconv, self.conv1x1, self.transform = mbconv, conv1x1, transform
        self.residual = residual
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        if self.key & MBCONV:
            out = self.mbconv(x)
            if self.residual:
                out = out + x
        for bit, branch in ((CONV1X1, self.conv1x1), (TRANSFORM, self.transform)):
            if self.key & bit:
                y = branch(x)
                out = y if out is None else out + y
        return out


def parallel_branches(pos: Position) -> tuple[nn.Module, nn.Module]:
    """The two static branches that parallel blocks add beside the MBConv."""
    conv1x1 = ConvBNAct(pos.in_channels, pos.out_channels, 1, pos.stride, act=pos.act)
    return conv1x1, Transformation(pos.in_channels, pos.out_channels, pos.stride, pos.act)


class Head(nn.Module):
    """Exit head: 1x1 conv C->6C, BN, h-swish; pool; 1x1 conv 6C->8C, h-swish; dropout; linear."""

    def __init__(self, cin: int, expand: int, mix: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.final_expand = ConvBNAct(cin, expand, act="h_swish")
        self.feature_mix = ConvBNAct(expand, mix, act="h_swish", bn=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(mix, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_expand(x).mean((2, 3), keepdim=True)
        return self.classifier(self.dropout(self.feature_mix(x).flatten(1)))


def stage_forward(blocks: Sequence[nn.Module], x: torch.Tensor, dense: bool) -> torch.Tensor:
    """Run the active blocks of one stage. Dense skips are additive and stay inside the stage: the
    input of block k is o_{k-1} plus o_0 + ... + o_{k-3}; the stage output is formed as the input
    of block d would be."""
    outs: list[torch.Tensor] = []
    for block in blocks:
        x = block(x)
        if dense:
            outs.append(x)
            for skip in outs[:-2]:
                x = x + skip
    return x


class Body(nn.Module):
    """Stem, first block, stages and exit heads; subclasses choose which blocks run."""

    dense: bool

    def build_fixed(self, plan: Plan, n_classes: int, exits: Sequence[int], dropout: float) -> None:
        self.stem = ConvBNAct(3, plan.stem_channels, 3, 2, act="h_swish")
        self.first_block = ParallelBlock(
            MBConv(plan.stem_channels, plan.stem_channels, 3, 1, 1, "relu", False), residual=True)
        self.exits = nn.ModuleDict(
            {str(x): Head(plan.stage_channels(x - 1), *plan.head_channels(x - 1), n_classes, dropout)
             for x in exits})

    def run(self, x: torch.Tensor, stages: Sequence[Sequence[nn.Module]],
            exits: Sequence[int]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits of each exit in `exits` (a tensor when there is one exit)."""
        x = self.first_block(self.stem(x))
        logits = []
        for s, blocks in enumerate(stages):
            x = stage_forward(blocks, x, self.dense)
            if s + 1 in exits:
                logits.append(self.exits[str(s + 1)](x))
        return logits[0] if len(logits) == 1 else tuple(logits)

    def set_bn(self, momentum: float, eps: float) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum, m.eps = momentum, eps
