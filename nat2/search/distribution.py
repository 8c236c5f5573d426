"""A categorical model of archive encodings, for sampling the subnets that supernet adaptation trains.

Factorised as the encoding is built (resolution; exit; each stage's depth given the exit; each existing block's choice),
not gene by gene, which would count the filler genes of stages after a row's exit as architecture and lose the link
between the exit and the depths it reaches. Unlike whole archive rows, `smoothing` pseudo-counts keep values the archive
lacks reachable, so adaptation still trains their weights a little.
"""
from __future__ import annotations

import numpy as np

from supernets.arch import BLOCKS_PER_STAGE, N_STAGES

from ..space import SearchSpace


def categorical(values: np.ndarray, size: int, smoothing: float) -> np.ndarray:
    """Probabilities of 0..size-1 among `values` plus `smoothing` pseudo-counts each; uniform when
    there is no evidence at all (such a factor is never sampled unless smoothing reaches it)."""
    counts = np.bincount(np.asarray(values, dtype=np.int64), minlength=size).astype(float) + smoothing
    total = counts.sum()
    return counts / total if total > 0 else np.full(size, 1.0 / size)


class ArchiveDistribution:
    """Resolution, exit, depth per (exit, stage) and block choice per position, fitted on canonical rows."""

    def __init__(self, space: SearchSpace, X: np.ndarray, smoothing: float = 0.0) -> None:
        self.space = space
        X = space.repair(space.validate(X)).reshape(-1, space.n_var)
        sp = space.space
        self.min_depth = min(sp.depths)
        n_exits, n_depths = len(sp.exits), len(sp.depths)
        self.n_blocks = int(space.xu[space.n_head:].max())
        exits = X[:, 2] if space.early_exits else np.zeros(len(X), dtype=np.int64)
        genes = X[:, space.n_head:].reshape(-1, N_STAGES, BLOCKS_PER_STAGE)
        depths = (genes > 0).sum(axis=2) - self.min_depth
        # the depths of stages after exit x are filler; they are fitted but repair overwrites them
        self.resolution = categorical(X[:, 0], len(sp.resolutions), smoothing)
        self.exit = categorical(exits, n_exits, smoothing)
        self.depth = np.array([[categorical(depths[exits == x, s], n_depths, smoothing) for s in range(N_STAGES)]
                               for x in range(n_exits)])
        reached = np.arange(1, N_STAGES + 1)[None, :] <= np.asarray(sp.exits)[exits][:, None]
        present = ((genes > 0) & reached[:, :, None]).reshape(len(X), -1)
        flat = genes.reshape(len(X), -1)
        self.block = np.array([categorical(flat[present[:, p], p] - 1, self.n_blocks, smoothing)
                               for p in range(flat.shape[1])])

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` canonical encodings (width index 0): the exit first, then the depths of the stages
        it reaches given that exit, then a choice for each existing block."""
        space = self.space
        x = np.zeros((n, space.n_var), dtype=np.int64)
        x[:, 0] = rng.choice(len(self.resolution), size=n, p=self.resolution)
        exits = rng.choice(len(self.exit), size=n, p=self.exit)
        if space.early_exits:
            x[:, 2] = exits
        cdf = np.cumsum(self.depth[exits], axis=-1)
        depth_index = np.minimum((rng.random((n, N_STAGES, 1)) > cdf).sum(axis=-1), cdf.shape[-1] - 1)
        exists = np.arange(BLOCKS_PER_STAGE)[None, None, :] < (self.min_depth + depth_index)[:, :, None]
        blocks = 1 + np.stack([rng.choice(self.n_blocks, size=n, p=p) for p in self.block], axis=1)
        x[:, space.n_head:] = np.where(exists.reshape(n, -1), blocks, 0)
        return space.repair(x)
