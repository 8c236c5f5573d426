"""The NAT2 search space: integer encodings of OFAv2 architectures.

Layout `[R, W, (X), G_1 .. G_20]`: indices into the resolution, width and (early-exit spaces only) exit lists, then one
gene per block position (5 stages x 4). A gene is 0 for an absent block, else `1 + nK*nE*idx(A) + nK*idx(e) + idx(k)`
where idx(A) is the branch key's place in the popcount-grouped order [1, 2, 4, 3, 5, 6, 7]; narrow spaces (key 4 only)
give NAT's original 0..9 mapping. Decoding is deterministic: every vector is first brought to canonical form by
`repair`, so genes that do not change the network never reach the predictor or the archive.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from supernets import Architecture, Block, Space
from supernets.arch import BLOCKS_PER_STAGE, MBCONV, N_STAGES
from supernets.costs import block_cost, head_cost, stage_input_sizes, stem_cost
from supernets.layers import Plan

N_GENES = N_STAGES * BLOCKS_PER_STAGE


class EncodingError(ValueError):
    """An integer encoding has the wrong length, a non-integer or an out-of-range gene."""


def encoding_key(encoding: Iterable[int]) -> tuple[int, ...]:
    """An encoding as a hashable key (caches, archives and metric stores are keyed by it)."""
    return tuple(int(g) for g in encoding)


def unique_rows(X: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row, in their original order."""
    if not len(X):
        return np.empty(0, dtype=np.int64)
    return np.sort(np.unique(X, axis=0, return_index=True)[1])


class SearchSpace:
    """Integer encoding of a `supernets.Space` (widths list = the supernets searched over)."""

    def __init__(self, space: Space) -> None:
        depths = sorted(space.depths)
        if depths != list(range(depths[0], depths[-1] + 1)):
            raise EncodingError(f"Space.depths = {space.depths} must be consecutive integers")
        self.space = space
        self.key_order = tuple(sorted(space.keys, key=lambda a: (bin(a).count("1"), a)))
        self.early_exits = space.exits != (N_STAGES,)
        self.n_head = 3 if self.early_exits else 2
        self.n_var = self.n_head + N_GENES
        nk, ne = len(space.kernels), len(space.expands)
        self._nk, self._nke = nk, nk * ne
        gene_max = len(self.key_order) * nk * ne
        block_lb = [1 if b < depths[0] else 0 for b in range(BLOCKS_PER_STAGE)]
        block_ub = [gene_max if b < depths[-1] else 0 for b in range(BLOCKS_PER_STAGE)]
        head_ub = [len(space.resolutions) - 1, len(space.widths) - 1] + ([len(space.exits) - 1] if self.early_exits else [])
        self.xl = np.array([0] * self.n_head + block_lb * N_STAGES, dtype=np.int64)
        self.xu = np.array(head_ub + block_ub * N_STAGES, dtype=np.int64)
        self._mbconv_genes = np.array(
            [g >= 1 and bool(self.key_order[(g - 1) // self._nke] & MBCONV) for g in range(gene_max + 1)])
        self._tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cost tables per number of classes
        self._blocks = [None] + [self._block(g) for g in range(1, gene_max + 1)]  # decoded genes, built once

    def gene_name(self, i: int) -> str:
        heads = ["R (resolution index)", "W (width index)", "X (exit index)"][: self.n_head]
        if i < self.n_head:
            return f"gene {i}: {heads[i]}"
        s, b = divmod(i - self.n_head, BLOCKS_PER_STAGE)
        return f"gene {i}: stage {s + 1} block {b + 1}"

    def validate(self, x: np.ndarray | list) -> np.ndarray:
        """`x` as an int array of shape (n_var,) or (n, n_var); raise EncodingError if invalid."""
        arr = np.asarray(x)
        if arr.ndim not in (1, 2) or arr.shape[-1] != self.n_var:
            raise EncodingError(f"encoding has shape {arr.shape}; expected ({self.n_var},) or "
                                f"(n, {self.n_var}) for this space")
        if arr.dtype.kind not in "iuf" or (arr.dtype.kind == "f" and not np.all(np.isfinite(arr))):
            raise EncodingError(f"encoding has dtype {arr.dtype}; expected integers")
        rows = arr.reshape(-1, self.n_var)
        bad = np.argwhere(rows != np.round(rows))
        if len(bad):
            r, i = bad[0]
            raise EncodingError(f"{self.gene_name(i)} = {rows[r, i].item()!r} is not an integer")
        bad = np.argwhere((rows < self.xl) | (rows > self.xu))
        if len(bad):
            r, i = bad[0]
            raise EncodingError(f"{self.gene_name(i)} = {rows[r, i].item()!r} is out of range "
                                f"{self.xl[i]}..{self.xu[i]}")
        return arr.astype(np.int64)

    def repair(self, x: np.ndarray) -> np.ndarray:
        """Canonical vectors for any real vectors: rounded and clipped to the bounds, absent
        blocks moved to the end of their stage, stages after the exit and k/e genes of blocks
        without an MBConv branch set to fixed values. Idempotent; vectorised over rows."""
        arr = np.asarray(x, dtype=float)
        rows = np.clip(np.round(arr.reshape(-1, self.n_var)), self.xl, self.xu).astype(np.int64)
        genes = rows[:, self.n_head:].reshape(-1, N_STAGES, BLOCKS_PER_STAGE)
        order = np.argsort(genes == 0, axis=2, kind="stable")
        genes = np.take_along_axis(genes, order, axis=2)
        no_mbconv = (genes > 0) & ~self._mbconv_genes[genes]
        genes = np.where(no_mbconv, 1 + (genes - 1) // self._nke * self._nke, genes)
        if self.early_exits:
            exit_ = np.asarray(self.space.exits)[rows[:, 2]]
            after = np.arange(1, N_STAGES + 1)[None, :] > exit_[:, None]
            lower = self.xl[self.n_head:].reshape(N_STAGES, BLOCKS_PER_STAGE)
            genes = np.where(after[:, :, None], lower[None], genes)
        rows[:, self.n_head:] = genes.reshape(-1, N_GENES)
        return rows.reshape(arr.shape)

    def is_canonical(self, x: np.ndarray) -> np.ndarray:
        x = self.validate(x)
        return np.all(self.repair(x) == x, axis=-1)

    def decode(self, x: np.ndarray | list) -> Architecture:
        """The architecture of one encoding (valid integers; non-canonical genes are repaired)."""
        x = self.validate(x)
        if x.ndim != 1:
            raise EncodingError(f"decode takes one encoding of shape ({self.n_var},); got {x.shape}")
        x = self.repair(x)
        sp = self.space
        exit_ = sp.exits[x[2]] if self.early_exits else N_STAGES
        genes = x[self.n_head:].reshape(N_STAGES, BLOCKS_PER_STAGE)
        stages = [[self._blocks[g] for g in genes[s] if g > 0] for s in range(exit_)]
        return Architecture(sp.resolutions[x[0]], sp.widths[x[1]], stages)

    def _block(self, gene: int) -> Block:
        v = gene - 1
        return Block(kernel=self.space.kernels[v % self._nk], expand=self.space.expands[v % self._nke // self._nk],
                     key=self.key_order[v // self._nke])

    def encode(self, arch: Architecture) -> np.ndarray:
        """The canonical encoding of an architecture of this space."""
        sp = self.space
        sp.check(arch)
        head = [sp.resolutions.index(arch.resolution), sp.widths.index(arch.width)]
        if self.early_exits:
            head.append(sp.exits.index(arch.exit))
        genes = self.xl[self.n_head:].reshape(N_STAGES, BLOCKS_PER_STAGE).copy()
        for s, b, block in arch.blocks():
            genes[s, b] = (1 + self._nke * self.key_order.index(block.key)
                           + self._nk * sp.expands.index(block.expand) + sp.kernels.index(block.kernel))
        return self.repair(np.concatenate([head, genes.ravel()]))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` canonical encodings drawn uniformly over architectures (see `Space.sample`)."""
        return np.stack([self.encode(a) for a in self.space.sample(rng, n)]) if n else np.empty((0, self.n_var), np.int64)

    @property
    def min_encoding(self) -> np.ndarray:
        return self.encode(self.space.min_arch())

    @property
    def max_encoding(self) -> np.ndarray:
        return self.encode(self.space.max_arch())

    def costs(self, x: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(params, MACs) of the single-exit subnets of many encodings, from cached tables."""
        if n_classes not in self._tables:
            def block(width: float, resolution: int, s: int, b: int, block: Block) -> tuple[int, int]:
                sizes = stage_input_sizes(resolution)
                c = block_cost(Plan(width).position(s, b), block, sizes[s] if b == 0 else sizes[s + 1])
                return c.params, c.macs

            def base(width: float, resolution: int, x: int) -> tuple[int, int]:
                plan, size = Plan(width), stage_input_sizes(resolution)[x]
                c = stem_cost(width, resolution) + head_cost(plan.stage_channels(x - 1), *plan.head_channels(x - 1),
                                                             n_classes, size)
                return c.params, c.macs
            self._tables[n_classes] = self.part_tables(block, base, np.int64)
        total = self.sum_parts(x, self._tables[n_classes])
        return total[:, 0], total[:, 1]

    def part_tables(self, block: Callable[[float, int, int, int, Block], Sequence[float]],
                    base: Callable[[float, int, int], Sequence[float]], dtype: type) -> tuple[np.ndarray, np.ndarray]:
        """A sum-of-parts model (costs, latency) as arrays for `sum_parts`: blocks[w, r, position, gene]
        holds `block(width, resolution, stage, index, Block)`, base[w, r, exit - 1] holds `base(width,
        resolution, exit)` (stem and head). Positions no subnet can use are left at zero."""
        sp = self.space
        n_genes, n_values = int(self.xu.max()) + 1, len(base(sp.widths[0], sp.resolutions[0], sp.exits[0]))
        blocks = np.zeros((len(sp.widths), len(sp.resolutions), N_GENES, n_genes, n_values), dtype=dtype)
        bases = np.zeros((len(sp.widths), len(sp.resolutions), N_STAGES, n_values), dtype=dtype)
        for wi, width in enumerate(sp.widths):
            for ri, res in enumerate(sp.resolutions):
                for x in sp.exits:
                    bases[wi, ri, x - 1] = base(width, res, x)
                for s in range(max(sp.exits)):
                    for b in range(max(sp.depths)):
                        for g in range(1, n_genes):
                            blocks[wi, ri, s * BLOCKS_PER_STAGE + b, g] = block(width, res, s, b, self._blocks[g])
        return blocks, bases

    def sum_parts(self, x: np.ndarray, tables: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """(n, values) sums of a `part_tables` model over the single-exit subnets of many encodings."""
        rows = self.repair(self.validate(x).reshape(-1, self.n_var))
        blocks, base = tables
        w, r = rows[:, 1], rows[:, 0]
        exit_ = np.asarray(self.space.exits)[rows[:, 2]] if self.early_exits else np.full(len(rows), N_STAGES)
        genes = rows[:, self.n_head:]
        stage = np.repeat(np.arange(1, N_STAGES + 1), BLOCKS_PER_STAGE)
        per_block = blocks[w[:, None], r[:, None], np.arange(N_GENES)[None, :], genes]
        per_block = per_block * (stage[None, :] <= exit_[:, None])[..., None]
        return base[w, r, exit_ - 1] + per_block.sum(axis=1)
