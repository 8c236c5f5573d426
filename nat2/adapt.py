"""Supernet adaptation between search iterations: train the subnets the search is heading for.

A categorical distribution per gene is fitted on the top half of the archive (by validation
top-1); each step samples subnets from it (repaired to canonical form), with ENS-KD from the
warm-up supernet's max network. One adaptation phase spans all iterations (its cosine schedule
covers epochs x iterations); iteration k trains its epochs up to k x epochs.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from supernets import Architecture, Splits, Supernet
from supernets.distributed import Dist
from supernets.phases import Phase
from supernets.train import PhaseTrainer, TrainOptions

from .archive import Record
from .space import SearchSpace

ADAPT_PHASE_INDEX = 100  # seeds the adaptation's data order and sampling apart from the training phases


def gene_distribution(space: SearchSpace, X: np.ndarray, smoothing: float = 0.0) -> list[np.ndarray]:
    """Per gene j, the probabilities of the values xl[j]..xu[j] among the rows of X (plus
    `smoothing` pseudo-counts per value, which keeps unseen values reachable)."""
    X = np.asarray(X, dtype=np.int64)
    probs = []
    for j in range(space.n_var):
        counts = np.bincount(X[:, j] - space.xl[j], minlength=space.xu[j] - space.xl[j] + 1).astype(float) + smoothing
        probs.append(counts / counts.sum())
    return probs


def top_half(records: list[Record]) -> np.ndarray:
    """Encodings of the better half of the records by validation top-1 (at least one)."""
    order = sorted(records, key=lambda r: -r["top1"])
    return np.array([r["encoding"] for r in order[:max(1, len(order) // 2)]], dtype=np.int64)


class ArchiveSampler:
    """Subnets of one width drawn gene by gene from `probs`, at the batch's resolution."""

    def __init__(self, space: SearchSpace, probs: list[np.ndarray], width: float) -> None:
        self.space, self.probs = space, probs
        self.w_index = space.space.widths.index(width)

    def __call__(self, rng: np.random.Generator, resolution: int, n: int) -> list[Architecture]:
        x = np.stack([self.space.xl[j] + rng.choice(len(p), size=n, p=p) for j, p in enumerate(self.probs)], axis=1)
        x[:, 0] = self.space.space.resolutions.index(resolution)
        x[:, 1] = self.w_index
        return [self.space.decode(row) for row in self.space.repair(x)]

    def resolution_weights(self) -> np.ndarray:
        """The resolution gene's probabilities, floored so every resolution keeps some training."""
        p = self.probs[0] + 1e-3
        return p / p.sum()


def adapt(supernets: dict[float, Supernet], teachers: dict[float, nn.Module | None], space: SearchSpace,
          records: list[Record], splits: Splits, options: TrainOptions, settings: dict[str, Any], iteration: int,
          iterations: int, out_dir: Path, ctx: Dist = Dist()) -> None:
    """Train every width's supernet for iteration `iteration` (1-based) of the adaptation phase."""
    epochs = settings["epochs"]
    probs = gene_distribution(space, top_half(records), settings["smoothing"])
    options = replace(options, val_every=epochs * iterations, val_settings=2)
    for width, supernet in supernets.items():
        phase = Phase(name="adapt", space=supernet.space, epochs=epochs * iterations, lr=settings["lr"],
                      subnets_per_step=settings["subnets_per_step"], weight_decay=settings["weight_decay"],
                      grad_clip=settings["grad_clip"])
        sampler = ArchiveSampler(space, probs, width)
        trainer = PhaseTrainer(supernet, phase, ADAPT_PHASE_INDEX, splits, options, out_dir / f"w{width:.1f}", ctx,
                               teachers[width], None, supernet.dropout, arch_sampler=sampler,
                               resolution_weights=sampler.resolution_weights())
        trainer.run(until=epochs * iteration)
