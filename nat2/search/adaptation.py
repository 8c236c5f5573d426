"""Supernet adaptation between search iterations: train the subnets the search is heading for.

Each step samples subnets from an `ArchiveDistribution` fitted on the archive's better half (by its
own survival), with ENS-KD from the warm-up supernet's max network. One adaptation phase spans all
iterations (its cosine schedule covers epochs x iterations); iteration k trains up to k x epochs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from supernets import Architecture, Splits, Supernet
from supernets.distributed import Dist
from supernets.phases import Phase
from supernets.settings import check_fields
from supernets.train import PhaseTrainer, TrainOptions

from .archive import Archive, Record, objective_matrix, survive
from .distribution import ArchiveDistribution
from ..space import SearchSpace

ADAPT_PHASE_INDEX = 100  # seeds the adaptation's data order and sampling apart from the training phases


@dataclass(frozen=True)
class AdaptSettings:
    """Adaptation between search iterations (config `search.adapt`): `epochs` per iteration (0: off);
    `smoothing`: pseudo-counts per value of every factor of the `ArchiveDistribution` (the exit, a
    stage's depth given the exit, a block's choice); > 0 keeps values the better half lacks reachable."""

    epochs: int = 5
    lr: float = 7.5e-3
    subnets_per_step: int = 4
    weight_decay: float = 3.0e-4
    grad_clip: float | None = 5.0
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "search.adapt", integers={"epochs": 0, "subnets_per_step": 1}, nullable=("grad_clip",),
                     numbers=dict.fromkeys(("lr", "weight_decay", "grad_clip", "smoothing"), (0, math.inf)))


def better_half(records: list[Record], objectives: Sequence[str]) -> np.ndarray:
    """Encodings of the half (at least one) of the records that the archive's survival keeps: the search's
    notion of better, so the cheap end of the front is trained too (top-1 alone picks the expensive half)."""
    kept = survive(objective_matrix(records, objectives), max(1, len(records) // 2))
    return np.array([records[i]["encoding"] for i in kept], dtype=np.int64)


class ArchiveSampler:
    """Subnets of one width drawn from `distribution`, at the batch's resolution."""

    def __init__(self, space: SearchSpace, distribution: ArchiveDistribution, width: float) -> None:
        self.space, self.distribution = space, distribution
        self.w_index = space.space.widths.index(width)

    def __call__(self, rng: np.random.Generator, resolution: int, n: int) -> list[Architecture]:
        x = self.distribution.sample(rng, n)
        x[:, 0] = self.space.space.resolutions.index(resolution)
        x[:, 1] = self.w_index
        return [self.space.decode(row) for row in x]

    def resolution_weights(self) -> np.ndarray:
        """The resolution's probabilities, floored so every resolution keeps some training."""
        p = self.distribution.resolution + 1e-3
        return p / p.sum()


def adapt(supernets: dict[float, Supernet], teachers: dict[float, nn.Module | None], space: SearchSpace,
          archive: Archive, splits: Splits, options: TrainOptions, settings: AdaptSettings, iteration: int,
          iterations: int, folders: Mapping[float, Path], ctx: Dist = Dist()) -> None:
    """Train every width's supernet for iteration `iteration` (1-based) of the adaptation phase;
    each width's checkpoint lives in `folders[width]`."""
    epochs = settings.epochs
    distribution = ArchiveDistribution(space, better_half(archive.records, archive.objectives), settings.smoothing)
    options = replace(options, val_every=epochs * iterations, val_settings=2)
    for width, supernet in supernets.items():
        phase = Phase(name="adapt", space=supernet.space, epochs=epochs * iterations, lr=settings.lr,
                      subnets_per_step=settings.subnets_per_step, weight_decay=settings.weight_decay,
                      grad_clip=settings.grad_clip)
        sampler = ArchiveSampler(space, distribution, width)
        trainer = PhaseTrainer(supernet, phase, ADAPT_PHASE_INDEX, splits, options, folders[width], ctx,
                               teachers[width], None, supernet.dropout, arch_sampler=sampler,
                               resolution_weights=sampler.resolution_weights())
        trainer.run(until=epochs * iteration)
