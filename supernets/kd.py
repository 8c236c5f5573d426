"""Knowledge distillation from a frozen teacher, with the ENS-KD signal for early-exit teachers.

The teacher of an early-exit supernet is its max network with every exit; its signal is the
AEP ensemble z_T = sum_i beta_i z_i. A single-exit teacher gives its one output.
"""
from __future__ import annotations

from typing import Sequence

import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from .aep import ensemble_logits

TEACHER_BN_MODES = ("eval", "train")

_soft_ce = SoftTargetCrossEntropy()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """H(softmax(z_T / T), softmax(z_S / T)) * T^2: soft-target cross-entropy (T^2 keeps the
    gradient scale independent of T; T = 1 is the papers' setting)."""
    target = torch.softmax(teacher.detach().float() / temperature, dim=-1)
    return _soft_ce(student.float() / temperature, target) * temperature ** 2


def freeze(teacher: nn.Module, bn_mode: str = "eval") -> nn.Module:
    """No gradients; BN in eval mode (running statistics, the clean choice) or in train mode
    (batch statistics, as the reference implementation ran it). Dropout is always off."""
    if bn_mode not in TEACHER_BN_MODES:
        raise ValueError(f"teacher BN mode {bn_mode!r}; expected one of {', '.join(TEACHER_BN_MODES)}")
    teacher.requires_grad_(False)
    teacher.eval()
    if bn_mode == "train":
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
                m.track_running_stats = False
    return teacher


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, beta: Sequence[float]) -> torch.Tensor:
    """z_T: the teacher's output, or the beta-weighted sum of its exits' logits."""
    return ensemble_logits(teacher(x), beta)
