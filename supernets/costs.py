"""Exact params and MACs of subnets from an analytic model. MACs are the multiply-accumulates of
conv and linear layers (FLOPs = 2 x MACs); params are the trainable parameters of the extracted
subnet. A block's cost depends only on its position, configuration and input size, so it is
computed once and cached; an architecture's cost is a sum of cached parts."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from .arch import CONV1X1, MBCONV, N_STAGES, TRANSFORM, Architecture, Block
from .layers import Plan, Position, middle_channels, se_channels, spatial
from .subnet import normalize_exits


@dataclass(frozen=True)
class Cost:
    params: int
    macs: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.params + other.params, self.macs + other.macs)


ZERO = Cost(0, 0)


def _conv(cin: int, cout: int, size_out: int, kernel: int = 1, groups: int = 1, bias: bool = False,
          bn: bool = True) -> Cost:
    weights = cout * (cin // groups) * kernel * kernel
    return Cost(weights + (cout if bias else 0) + (2 * cout if bn else 0), weights * size_out * size_out)


def _mbconv(cin: int, cout: int, kernel: int, expand: int, stride: int, se: bool, size: int) -> Cost:
    mid, out = middle_channels(cin, expand), spatial(size, stride)
    cost = _conv(cin, mid, size) if expand != 1 else ZERO
    cost += _conv(mid, mid, out, kernel, groups=mid)
    if se:
        r = se_channels(mid)
        cost += _conv(mid, r, 1, bias=True, bn=False) + _conv(r, mid, 1, bias=True, bn=False)
    return cost + _conv(mid, cout, out)


@lru_cache(maxsize=None)
def block_cost(pos: Position, block: Block, size: int) -> Cost:
    """Cost of one active block at a position whose input is `size` x `size`."""
    out = spatial(size, pos.stride)
    cost = ZERO
    if block.key & MBCONV:
        cost += _mbconv(pos.in_channels, pos.out_channels, block.kernel, block.expand, pos.stride, pos.se, size)
    if block.key & CONV1X1:
        cost += _conv(pos.in_channels, pos.out_channels, out)
    if block.key & TRANSFORM:
        changes = pos.in_channels != pos.out_channels
        cost += _conv(pos.in_channels, pos.out_channels, out, bias=True) if changes else Cost(2 * pos.out_channels, 0)
    return cost


@lru_cache(maxsize=None)
def head_cost(cin: int, expand: int, mix: int, n_classes: int, size: int) -> Cost:
    return (_conv(cin, expand, size) + _conv(expand, mix, 1, bn=False)
            + Cost(mix * n_classes + n_classes, mix * n_classes))


@lru_cache(maxsize=None)
def stem_cost(width: float, resolution: int) -> Cost:
    """Stem conv and the fixed first block."""
    c, size = Plan(width).stem_channels, spatial(resolution, 2)
    return _conv(3, c, size, 3) + _mbconv(c, c, 3, 1, 1, False, size)


def stage_input_sizes(resolution: int) -> list[int]:
    """Input size of each body stage (the stem halves the resolution)."""
    sizes = [spatial(resolution, 2)]
    for s in range(N_STAGES):
        sizes.append(spatial(sizes[-1], Plan(1.0).position(s, 0).stride))
    return sizes


def arch_cost(arch: Architecture, n_classes: int, exits: Sequence[int] | str | None = None) -> Cost:
    """Params and MACs of the subnet `Supernet.extract(arch, exits)` would build."""
    plan = Plan(arch.width)
    sizes = stage_input_sizes(arch.resolution)
    cost = stem_cost(arch.width, arch.resolution)
    for s, b, block in arch.blocks():
        cost += block_cost(plan.position(s, b), block, sizes[s] if b == 0 else sizes[s + 1])
    for x in normalize_exits(arch, exits):
        cost += head_cost(plan.stage_channels(x - 1), *plan.head_channels(x - 1), n_classes, sizes[x])
    return cost
