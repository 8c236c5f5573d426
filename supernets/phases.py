"""Training phases as data: each names the elastic values it opens, its epochs, lr and subnets.
A phase's sampling space accumulates: dimensions opened by earlier phases stay open, dimensions
never opened stay at their maximum. Resolution is elastic in every phase."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from .arch import MBCONV, Architecture, Block, Space

OPEN_DIMS = ("kernels", "expands", "depths", "keys", "exits")
ONLY = ("parallel", "early_exits")
_NUMBERS = {"epochs": int, "warmup_epochs": int, "lr": float, "subnets_per_step": int, "dropout": float,
            "weight_decay": float, "grad_clip": float}
_FLAGS = ("sort_channels", "aep")
KNOWN_KEYS = ("name", "only", *OPEN_DIMS, *_NUMBERS, *_FLAGS)


class PhaseError(ValueError):
    """A phase table entry is malformed, unknown, or opens values the supernet does not have."""


@dataclass(frozen=True)
class Phase:
    """One row of the phase table, resolved against a supernet's space (`space`: what the phase
    samples from); `weight_decay`, `dropout` and `grad_clip` of None mean the training defaults."""

    name: str
    space: Space
    epochs: int
    warmup_epochs: int = 0
    lr: float = 0.0
    subnets_per_step: int = 1
    dropout: float | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    sort_channels: bool = False
    aep: bool = False

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.epochs

    @property
    def expand_stage(self) -> int:
        """`ofa`'s expand_ratio_stage for channel sorting: 0 for two expand values, 1 for three."""
        return max(len(self.space.expands) - 2, 0)


def _check_number(where: str, key: str, value: Any) -> Any:
    kind = _NUMBERS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise PhaseError(f"{where}: {key} = {value!r}; expected {'an integer' if kind is int else 'a number'}")
    minimum = 1 if key in ("epochs", "subnets_per_step") else 0
    if value < minimum or (key == "lr" and value <= 0):
        raise PhaseError(f"{where}: {key} = {value!r}; expected {'> 0' if key == 'lr' else f'>= {minimum}'}")
    return kind(value)


def _open_values(where: str, key: str, value: Any, full: tuple) -> tuple:
    if value == "all":
        return full
    if not isinstance(value, (list, tuple)) or not value:
        raise PhaseError(f"{where}: {key} = {value!r}; expected 'all' or a non-empty list of values from {list(full)}")
    outside = [v for v in value if v not in full]
    if outside:
        raise PhaseError(f"{where}: {key} = {list(value)} has {outside}, which the supernet does not have; "
                         f"expected values from {list(full)}")
    return tuple(sorted(set(value)))


def parse_phases(table: Sequence[dict[str, Any]], space: Space, *, parallel: bool, early_exits: bool) -> list[Phase]:
    """Resolve a phase table (a list of mappings, as in the config) against a supernet's space;
    rows with `only: parallel` / `only: early_exits` are skipped for supernets without that flag."""
    if not isinstance(table, (list, tuple)) or not table:
        raise PhaseError(f"the phase table must be a non-empty list of mappings; got {table!r}")
    flags = {"parallel": parallel, "early_exits": early_exits}
    current = replace(space, **{d: (max(getattr(space, d)),) for d in OPEN_DIMS})
    phases, names = [], set()
    for i, row in enumerate(table):
        where = f"phase {i + 1}" + (f" ({row.get('name')!r})" if isinstance(row, dict) else "")
        if not isinstance(row, dict):
            raise PhaseError(f"{where}: expected a mapping; got {row!r}")
        unknown = sorted(set(row) - set(KNOWN_KEYS))
        if unknown:
            raise PhaseError(f"{where}: unknown keys {unknown}; expected some of {list(KNOWN_KEYS)}")
        name = row.get("name")
        if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
            raise PhaseError(f"{where}: name = {name!r}; expected a word of letters, digits, '-' or '_'")
        if name in names:
            raise PhaseError(f"{where}: the name {name!r} is used twice; phase names must be unique")
        names.add(name)
        only = row.get("only")
        if only is not None and only not in ONLY:
            raise PhaseError(f"{where}: only = {only!r}; expected one of {list(ONLY)}")
        for key in ("epochs", "lr"):
            if key not in row:
                raise PhaseError(f"{where}: {key} is missing")
        if only is not None and not flags[only]:
            continue
        numbers = {k: _check_number(where, k, row[k]) for k in _NUMBERS if row.get(k) is not None}
        for key in _FLAGS:
            if not isinstance(row.get(key, False), bool):
                raise PhaseError(f"{where}: {key} = {row[key]!r}; expected true or false")
        current = replace(current, **{d: _open_values(where, d, row[d], getattr(space, d))
                                      for d in OPEN_DIMS if d in row})
        phases.append(Phase(name=name, space=current, sort_channels=row.get("sort_channels", False),
                            aep=row.get("aep", False), **numbers))
    return phases


def _uniform_arch(space: Space, resolution: int, kernel: int, expand: int, depth: int, key: int,
                  exit_: int) -> Architecture:
    if not key & MBCONV:
        kernel, expand = min(space.kernels), min(space.expands)
    return Architecture(resolution, space.widths[0], [[Block(kernel, expand, key)] * depth] * exit_)


def validation_grid(space: Space, cap: int = 32) -> list[Architecture]:
    """Architectures at the min and max of every open dimension of `space` (one value per
    dimension for the whole network), at most `cap` of them, always including the all-min and
    all-max settings; the others are spread evenly over the grid."""
    keys_min = MBCONV if MBCONV in space.keys else min(space.keys)
    dims = [(min(space.resolutions), max(space.resolutions)), (min(space.kernels), max(space.kernels)),
            (min(space.expands), max(space.expands)), (min(space.depths), max(space.depths)),
            (keys_min, max(space.keys)), (min(space.exits), max(space.exits))]
    grid = list(itertools.product(*[sorted(set(d)) for d in dims]))
    if len(grid) > cap:
        grid = [grid[i] for i in np.unique(np.linspace(0, len(grid) - 1, max(cap, 2)).round().astype(int))]
    return [_uniform_arch(space, *setting) for setting in grid]
