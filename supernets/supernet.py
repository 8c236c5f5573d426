"""The OFAv2 super-network: one class, three flags (dense, parallel, early_exits)."""
from __future__ import annotations

from itertools import chain
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .arch import (BLOCKS_PER_STAGE, BRANCH_KEYS, CONV1X1, MBCONV, N_STAGES, TRANSFORM, Architecture,
                   ArchitectureError, Space)
from .elastic import ElasticMBConv
from .layers import Body, ParallelBlock, Plan, Position, parallel_branches
from .subnet import Subnet, normalize_exits


def default_space(parallel: bool, early_exits: bool, width: float, resolutions: Sequence[int] = (32,)) -> Space:
    """The OFAv2 space of a variant: k {3,5,7}, e {3,4,6}, d {2,3,4}, keys, exits."""
    return Space(resolutions=tuple(resolutions), widths=(width,),
                 keys=BRANCH_KEYS if parallel else (MBCONV,),
                 exits=tuple(range(1, N_STAGES + 1)) if early_exits else (N_STAGES,))


class Supernet(Body):
    """OFA MobileNetV3 with optional parallel blocks, dense skips and early exits, for one width
    multiplier (widths 1.0 and 1.2 are two supernets). Every body position holds an elastic MBConv
    and, when `parallel`, the two static parallel branches."""

    def __init__(self, n_classes: int, width: float = 1.0, *, dense: bool = False,
                 parallel: bool = False, early_exits: bool = False, space: Space | None = None,
                 dropout: float = 0.1, bn_momentum: float = 0.1, bn_eps: float = 1e-5) -> None:
        super().__init__()
        space = space or default_space(parallel, early_exits, width)
        if space.widths != (float(width),):
            raise ArchitectureError(f"Space.widths = {space.widths} must be ({float(width)},), "
                                    "the width of this supernet (one supernet per width)")
        if not parallel and space.keys != (MBCONV,):
            raise ArchitectureError(f"Space.keys = {space.keys} needs parallel=True; expected ({MBCONV},)")
        if not early_exits and space.exits != (N_STAGES,):
            raise ArchitectureError(f"Space.exits = {space.exits} needs early_exits=True; expected ({N_STAGES},)")
        self.n_classes, self.width, self.space = n_classes, float(width), space
        self.dense, self.parallel, self.early_exits = dense, parallel, early_exits
        self.dropout, self.bn_momentum, self.bn_eps = dropout, bn_momentum, bn_eps
        self.plan = Plan(self.width)
        self.build_fixed(self.plan, n_classes, space.exits if early_exits else (N_STAGES,), dropout)
        self.stages = nn.ModuleList(
            nn.ModuleList(self._block(self.plan.position(s, b)) for b in range(BLOCKS_PER_STAGE))
            for s in range(N_STAGES))
        self.set_bn(bn_momentum, bn_eps)
        self.set_max()

    def _block(self, pos: Position) -> ParallelBlock:
        mbconv = ElasticMBConv(pos, self.space.kernels, self.space.expands)
        branches = parallel_branches(pos) if self.parallel else (None, None)
        return ParallelBlock(mbconv, *branches, residual=pos.residual, key=MBCONV)

    def set_active(self, arch: Architecture, exits: Sequence[int] | str | None = None) -> None:
        """Make `arch` the subnet that forward runs; `exits` as in `extract`."""
        self.space.check(arch)
        active_exits = normalize_exits(arch, exits, self.early_exits)
        for s, b, block in arch.blocks():
            pb = self.stages[s][b]
            pb.key, pb.mbconv.active_kernel_size, pb.mbconv.active_expand_ratio = block.key, block.kernel, block.expand
        stages = [list(self.stages[s][:len(stage)]) for s, stage in enumerate(arch.stages)]
        self.active_arch, self.active_exits, self._active_stages = arch, active_exits, stages

    def sample_active(self, rng: np.random.Generator, space: Space | None = None) -> Architecture:
        """Draw an architecture uniformly from `space` (default: the supernet's) and activate it."""
        arch = (space or self.space).sample(rng, 1)[0]
        self.set_active(arch)
        return arch

    def set_max(self) -> None:
        self.set_active(self.space.max_arch())

    def set_min(self) -> None:
        self.set_active(self.space.min_arch())

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.run(x, self._active_stages, self.active_exits)

    def subnet_config(self, arch: Architecture, exits: Sequence[int] | str | None = None) -> dict[str, Any]:
        self.space.check(arch)
        return {"arch": arch.to_dict(), "n_classes": self.n_classes, "dense": self.dense,
                "exits": list(normalize_exits(arch, exits, self.early_exits)),
                "dropout": self.dropout, "bn_momentum": self.bn_momentum, "bn_eps": self.bn_eps}

    def subnet_state(self, arch: Architecture, exits: Sequence[int] | str | None = None) -> dict[str, torch.Tensor]:
        """Weights of the static subnet for `arch`, under `Subnet`'s parameter names."""
        self.space.check(arch)
        state = {**self.stem.state_dict(prefix="stem."), **self.first_block.state_dict(prefix="first_block.")}
        for s, b, block in arch.blocks():
            pb, prefix = self.stages[s][b], f"stages.{s}.{b}."
            if block.key & MBCONV:
                active = pb.mbconv.active_state(self.plan.position(s, b).in_channels, block.kernel, block.expand)
                state.update({f"{prefix}mbconv.{k}": v for k, v in active.items()})
            for bit, name in ((CONV1X1, "conv1x1"), (TRANSFORM, "transform")):
                if block.key & bit:
                    state.update(getattr(pb, name).state_dict(prefix=f"{prefix}{name}."))
        for x in normalize_exits(arch, exits, self.early_exits):
            state.update(self.exits[str(x)].state_dict(prefix=f"exits.{x}."))
        return state

    def extract(self, arch: Architecture, exits: Sequence[int] | str | None = None) -> Subnet:
        """A standalone static subnet with copied weights. `exits`: None for the arch's own exit only,
        "all" for every exit 1..X, or an increasing list ending at X (early-exit supernets)."""
        subnet = Subnet(**self.subnet_config(arch, exits))
        subnet.load_state_dict(self.subnet_state(arch, exits))
        device = next(self.parameters()).device
        return subnet.to(device).train(self.training)

    def sort_channels(self, expand_stage: int = 0) -> None:
        """Sort every elastic MBConv's middle channels by importance (`ofa`'s channel sorting), so
        that smaller expand ratios keep the most important channels; the max network's function
        is unchanged. `expand_stage` 0 before the first expand phase, 1 before the second."""
        for block in chain.from_iterable(self.stages):
            block.mbconv.re_organize_middle_weights(expand_ratio_stage=expand_stage)

    def set_dropout(self, p: float) -> None:
        """Dropout before every exit's classifier (phases differ: 0.2 in the full phase)."""
        for head in self.exits.values():
            head.dropout.p = p
        self.dropout = p

    def reset_heads(self, n_classes: int) -> None:
        """New, freshly initialised classifiers for `n_classes` classes (e.g. a new dataset)."""
        for head in self.exits.values():
            old = head.classifier
            head.classifier = nn.Linear(old.in_features, n_classes).to(old.weight.device)
        self.n_classes = n_classes
