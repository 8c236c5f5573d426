"""The architecture value type: the one seam between the network side and the search side.

An `Architecture` is a decoded, validated subnet: input resolution, width multiplier (which of the
two supernets) and the active blocks of each stage up to the exit. A `Space` lists the values a
supernet offers along each elastic dimension; the supernet checks architectures against it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

N_STAGES = 5
BLOCKS_PER_STAGE = 4
MBCONV, CONV1X1, TRANSFORM = 4, 2, 1  # branch bits of the key A
BRANCH_KEYS = (1, 2, 3, 4, 5, 6, 7)


class ArchitectureError(ValueError):
    """An architecture or space field holds a value that is not allowed."""


def _require(ok: bool, name: str, value: Any, allowed: Any) -> None:
    if not ok:
        raise ArchitectureError(f"{name} = {value!r} is not allowed; expected {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Block:
    """One active block: depthwise kernel, expand ratio and branch key (4 = MBConv only)."""

    kernel: int
    expand: int
    key: int = MBCONV

    def __post_init__(self) -> None:
        _require(_is_int(self.kernel) and self.kernel in (3, 5, 7), "kernel", self.kernel, "one of 3, 5, 7")
        _require(_is_int(self.expand) and self.expand >= 1, "expand", self.expand, "an integer >= 1")
        _require(_is_int(self.key) and self.key in BRANCH_KEYS, "key", self.key, "an integer in 1..7")

    @property
    def has_mbconv(self) -> bool:
        return bool(self.key & MBCONV)


@dataclass(frozen=True)
class Architecture:
    """A subnet: `stages[s]` holds the active blocks of body stage s+1; the exit is len(stages)."""

    resolution: int
    width: float
    stages: tuple[tuple[Block, ...], ...]

    def __post_init__(self) -> None:
        _require(_is_int(self.resolution) and self.resolution >= 8, "resolution", self.resolution, "an integer >= 8")
        _require(isinstance(self.width, (int, float)) and not isinstance(self.width, bool)
                 and self.width > 0, "width", self.width, "a positive number such as 1.0 or 1.2")
        object.__setattr__(self, "width", float(self.width))
        stages = tuple(tuple(stage) for stage in self.stages)
        _require(1 <= len(stages) <= N_STAGES, "number of stages (exit)", len(stages), f"1..{N_STAGES}")
        for s, stage in enumerate(stages):
            _require(1 <= len(stage) <= BLOCKS_PER_STAGE, f"depth of stage {s + 1}", len(stage),
                     f"1..{BLOCKS_PER_STAGE}")
            for b, block in enumerate(stage):
                _require(isinstance(block, Block), f"stages[{s}][{b}]", block, "a Block")
        object.__setattr__(self, "stages", stages)

    @property
    def exit(self) -> int:
        return len(self.stages)

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(stage) for stage in self.stages)

    def blocks(self) -> Iterable[tuple[int, int, Block]]:
        """(stage index, position in stage, block) for every active block, in order."""
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                yield s, b, block

    def to_dict(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "width": self.width,
                "stages": [[asdict(block) for block in stage] for stage in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        if not isinstance(data, dict) or set(data) != {"resolution", "width", "stages"}:
            raise ArchitectureError(
                f"architecture must be a mapping with keys resolution, width, stages; got {data!r:.200}")
        try:
            stages = [[Block(**block) for block in stage] for stage in data["stages"]]
        except TypeError as err:
            raise ArchitectureError(
                f"each block must be a mapping with keys kernel, expand, key: {err}") from None
        return cls(resolution=data["resolution"], width=data["width"], stages=stages)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchitectureError(f"architecture JSON is malformed: {err}") from None
        return cls.from_dict(data)

    def __str__(self) -> str:
        stages = " | ".join(" ".join(f"k{b.kernel}e{b.expand}" + ("" if b.key == MBCONV else f"a{b.key}")
                                     for b in stage) for stage in self.stages)
        return f"r{self.resolution} w{self.width:g} x{self.exit} [{stages}]"


@dataclass(frozen=True)
class Space:
    """The values each elastic dimension may take (a supernet's, or a training phase's subset)."""

    resolutions: tuple[int, ...] = (32,)
    widths: tuple[float, ...] = (1.0, 1.2)
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    keys: tuple[int, ...] = (MBCONV,)
    exits: tuple[int, ...] = (N_STAGES,)

    def __post_init__(self) -> None:
        for name in ("resolutions", "widths", "kernels", "expands", "depths", "keys", "exits"):
            values = tuple(getattr(self, name))
            _require(len(values) > 0 and len(set(values)) == len(values), f"Space.{name}", values,
                     "a non-empty list of distinct values")
            object.__setattr__(self, name, values)
        for k in self.kernels:
            Block(kernel=k, expand=self.expands[0])
        for e in self.expands:
            Block(kernel=self.kernels[0], expand=e)
        for a in self.keys:
            Block(kernel=self.kernels[0], expand=self.expands[0], key=a)
        _require(all(1 <= d <= BLOCKS_PER_STAGE for d in self.depths), "Space.depths", self.depths,
                 f"values in 1..{BLOCKS_PER_STAGE}")
        _require(all(1 <= x <= N_STAGES for x in self.exits), "Space.exits", self.exits,
                 f"values in 1..{N_STAGES}")

    def check(self, arch: Architecture) -> None:
        """Raise ArchitectureError naming the first field of `arch` outside this space."""
        _require(arch.resolution in self.resolutions, "resolution", arch.resolution, self.resolutions)
        _require(arch.width in self.widths, "width", arch.width, self.widths)
        _require(arch.exit in self.exits, "exit", arch.exit, self.exits)
        for s, stage in enumerate(arch.stages):
            _require(len(stage) in self.depths, f"depth of stage {s + 1}", len(stage), self.depths)
            for b, block in enumerate(stage):
                where = f"stage {s + 1} block {b + 1}"
                _require(block.key in self.keys, f"key of {where}", block.key, self.keys)
                _require(block.kernel in self.kernels, f"kernel of {where}", block.kernel, self.kernels)
                _require(block.expand in self.expands, f"expand of {where}", block.expand, self.expands)

    def max_arch(self, width: float | None = None) -> Architecture:
        block = Block(max(self.kernels), max(self.expands), max(self.keys))
        return Architecture(max(self.resolutions), max(self.widths) if width is None else width,
                            [[block] * max(self.depths)] * max(self.exits))

    def min_arch(self, width: float | None = None) -> Architecture:
        block = Block(min(self.kernels), min(self.expands),
                      MBCONV if MBCONV in self.keys else min(self.keys))
        return Architecture(min(self.resolutions), min(self.widths) if width is None else width,
                            [[block] * min(self.depths)] * min(self.exits))

    def sample(self, rng: np.random.Generator, n: int) -> list[Architecture]:
        """`n` architectures drawn uniformly over the architecture, not the genotype.

        Per stage, depth is drawn first, then per block the number of active branches, the key
        among keys with that many branches, and kernel / expand. Depth and branch-count columns
        are stratified: over the `n` draws every allowed value appears floor or ceil of n / len
        times (in random order), so their frequencies are exactly uniform."""
        groups = [tuple(a for a in self.keys if bin(a).count("1") == c) for c in (1, 2, 3)]
        groups = [g for g in groups if g]
        res = _pick(rng, self.resolutions, n)
        widths = _pick(rng, self.widths, n)
        exits = _stratified(rng, self.exits, n)
        depth = [_stratified(rng, self.depths, n) for _ in range(N_STAGES)]
        shape = (N_STAGES, BLOCKS_PER_STAGE, n)
        group = np.stack([_stratified(rng, range(len(groups)), n) for _ in range(N_STAGES * BLOCKS_PER_STAGE)])
        group = group.reshape(shape)
        within = rng.random(shape)
        kernel = rng.integers(0, len(self.kernels), size=shape)
        expand = rng.integers(0, len(self.expands), size=shape)

        def block(s: int, b: int, i: int) -> Block:
            keys = groups[group[s, b, i]]
            key = keys[int(within[s, b, i] * len(keys))]
            if key & MBCONV:
                return Block(self.kernels[kernel[s, b, i]], self.expands[expand[s, b, i]], key)
            return Block(min(self.kernels), min(self.expands), key)

        return [Architecture(res[i], widths[i], [[block(s, b, i) for b in range(depth[s][i])] for s in range(exits[i])])
                for i in range(n)]


def _pick(rng: np.random.Generator, values: Sequence[Any], n: int) -> list[Any]:
    return [values[i] for i in rng.integers(0, len(values), size=n)]


def _stratified(rng: np.random.Generator, values: Sequence[Any], n: int) -> list[Any]:
    """n draws in which every value appears floor(n/len) or ceil(n/len) times, randomly placed."""
    k = len(values)
    counts = np.repeat(np.arange(k), n // k)
    order = rng.permutation(np.concatenate([counts, rng.choice(k, n % k, replace=False)]))
    values = list(values)
    return [values[i] for i in order]


def space_from_dict(data: dict[str, Any]) -> Space:
    """Build a Space from a config mapping, naming unknown keys."""
    known = set(Space.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ArchitectureError(f"unknown space keys {sorted(unknown)}; expected some of {sorted(known)}")
    return Space(**{k: tuple(v) for k, v in data.items()})

