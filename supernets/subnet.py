"""Standalone static subnets, rebuilt from a JSON config without the supernet or search code."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .arch import CONV1X1, MBCONV, TRANSFORM, Architecture, ArchitectureError, Block
from .layers import Body, MBConv, ParallelBlock, Plan, Position, parallel_branches


def normalize_exits(arch: Architecture, exits: Sequence[int] | str | None,
                    early_exits: bool = True) -> tuple[int, ...]:
    """None -> (X,); "all" -> (1..X); else an increasing list of exits ending at X."""
    if exits is None:
        return (arch.exit,)
    if not early_exits:
        raise ArchitectureError(f"exits = {exits!r} needs an early-exit supernet; expected None")
    if exits == "all":
        return tuple(range(1, arch.exit + 1))
    chosen = tuple(exits)
    if (not chosen or any(not isinstance(x, int) for x in chosen) or list(chosen) != sorted(set(chosen))
            or chosen[0] < 1 or chosen[-1] != arch.exit):
        raise ArchitectureError(f"exits = {exits!r} is not allowed; expected None, 'all' or an "
                                f"increasing list of exits in 1..{arch.exit} ending at {arch.exit}")
    return chosen


def static_block(pos: Position, block: Block) -> ParallelBlock:
    """The static module of one active block: the branches its key selects."""
    mbconv = (MBConv(pos.in_channels, pos.out_channels, block.kernel, block.expand, pos.stride, pos.act, pos.se)
              if block.key & MBCONV else None)
    conv1x1, transform = parallel_branches(pos) if block.key & (CONV1X1 | TRANSFORM) else (None, None)
    return ParallelBlock(mbconv, conv1x1 if block.key & CONV1X1 else None,
                         transform if block.key & TRANSFORM else None, residual=pos.residual, key=block.key)


class Subnet(Body):
    """A static OFAv2 subnet; `config` (JSON-serialisable) rebuilds it: `Subnet(**config)`."""

    def __init__(self, arch: Architecture | dict[str, Any], n_classes: int, exits: Sequence[int] | None = None,
                 dense: bool = False, dropout: float = 0.1, bn_momentum: float = 0.1,
                 bn_eps: float = 1e-5) -> None:
        super().__init__()
        arch = arch if isinstance(arch, Architecture) else Architecture.from_dict(arch)
        self.arch, self.n_classes, self.dense = arch, n_classes, dense
        self.exit_list = normalize_exits(arch, exits)
        self.dropout, self.bn_momentum, self.bn_eps = dropout, bn_momentum, bn_eps
        plan = Plan(arch.width)
        self.build_fixed(plan, n_classes, self.exit_list, dropout)
        self.stages = nn.ModuleList(nn.ModuleList() for _ in arch.stages)
        for s, b, block in arch.blocks():
            self.stages[s].append(static_block(plan.position(s, b), block))
        self.set_bn(bn_momentum, bn_eps)

    @property
    def config(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "n_classes": self.n_classes, "exits": list(self.exit_list),
                "dense": self.dense, "dropout": self.dropout, "bn_momentum": self.bn_momentum,
                "bn_eps": self.bn_eps}

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.run(x, self.stages, self.exit_list)
