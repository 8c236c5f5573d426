"""AEP (Anticipate, Ensemble and Prune) for multi-exit networks: exit weights, loss, ensemble.
Training weighs each active exit's cross-entropy by alpha_i; prediction takes the argmax of the
beta-weighted sum of the exits' raw logits."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

SCHEMES = ("unif", "asc", "desc", "mix")


def aep_weights(scheme: str, n: int) -> tuple[list[float], list[float]]:
    """(alpha, beta) for `n` exits: UNIF 1/n; ASC i / (n(n+1)/2); DESC reversed; MIX alpha
    descending, beta ascending."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown AEP weight scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of exits = {n!r}; expected a positive integer")
    total = n * (n + 1) / 2
    asc = [i / total for i in range(1, n + 1)]
    desc = asc[::-1]
    return {"unif": ([1 / n] * n, [1 / n] * n), "asc": (asc, asc), "desc": (desc, desc), "mix": (desc, asc)}[scheme]


def as_exits(logits: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """A network's output as a tuple of per-exit logits (one exit gives a bare tensor)."""
    return (logits,) if isinstance(logits, torch.Tensor) else tuple(logits)


def ensemble_logits(logits: torch.Tensor | Sequence[torch.Tensor], beta: Sequence[float]) -> torch.Tensor:
    """sum_i beta_i z_i: the AEP prediction (argmax) and the ENS-KD teacher signal z_T."""
    exits = as_exits(logits)
    if len(exits) != len(beta):
        raise ValueError(f"{len(exits)} exits but {len(beta)} beta weights")
    return sum(b * z for b, z in zip(beta, exits))


def aep_loss(logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, alpha: Sequence[float],
             label_smoothing: float = 0.0) -> torch.Tensor:
    """sum_i alpha_i CE(z_i, y) over the active exits."""
    exits = as_exits(logits)
    if len(exits) != len(alpha):
        raise ValueError(f"{len(exits)} exits but {len(alpha)} alpha weights")
    return sum(a * F.cross_entropy(z, target, label_smoothing=label_smoothing) for a, z in zip(alpha, exits))
