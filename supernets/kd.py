"""Knowledge distillation from a frozen teacher, with the ENS-KD signal for early-exit teachers:
the teacher of an early-exit supernet is its max network with every exit, its signal the AEP
ensemble z_T = sum_i beta_i z_i. A single-exit teacher gives its one output."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from .aep import as_exits, ensemble_logits
from .bn import recalibrate_bn

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
    teacher.requires_grad_(False).eval()
    if bn_mode == "train":
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.train()
                m.track_running_stats = False
    return teacher


class ResolutionTeacher(nn.Module):
    """A frozen eval-mode teacher with one set of BN running statistics per input resolution (one
    calibrated at 64 px would normalise a 48-px batch with the wrong moments): `model` is
    recalibrated on `batches_at(r)` for every training resolution r, and each forward first loads
    the set of the input's size."""

    def __init__(self, model: nn.Module, batches_at: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
                 resolutions: Sequence[int]) -> None:
        super().__init__()
        self.model = freeze(model, "eval")
        self.exit_list = getattr(model, "exit_list", None)
        self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.stats: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for r in resolutions:
            recalibrate_bn(model, batches_at(r))
            self.stats[int(r)] = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in self.bns]
        self.resolution = int(resolutions[-1])
        self.train(False)

    def forward(self, x: torch.Tensor) -> Any:
        """The teacher's output for square images `x`, with the statistics of their size."""
        r = x.shape[-1]
        if r != self.resolution:
            if r not in self.stats:
                raise ValueError(f"the teacher was calibrated at {sorted(self.stats)} px, not at {r} px")
            with torch.no_grad():
                for bn, (mean, var) in zip(self.bns, self.stats[r]):
                    bn.running_mean.copy_(mean)
                    bn.running_var.copy_(var)
            self.resolution = r
        return self.model(x)


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor, beta: Sequence[float]) -> torch.Tensor:
    """z_T: the teacher's output, or the beta-weighted sum of its exits' logits, in fp32 (the
    forward may run under bf16 autocast; the ensemble and the loss do not)."""
    return ensemble_logits(tuple(z.float() for z in as_exits(teacher(x))), beta)
