"""Training-free scores of a static network (inherited or fresh weights; a dynamic Supernet is
refused: extract the subnet first): intra-cluster distance (ICD) and Synflow (higher is better for
both); the network is left untouched. Candidates are comparable only when scored with the same
image batch, batch size, initialisation scheme and seeds (the caller fixes those)."""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from .aep import as_exits
from .supernet import Supernet

# Activations whose output is > 0 exactly where their input is > 0, so the binary code of the
# output is the linear-region code of the pre-activation (ReLU, h-swish, SiLU, GELU, ...).
SIGN_PRESERVING = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.LeakyReLU)
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def activation_layers(model: nn.Module) -> list[nn.Module]:
    """The modules ICD hooks by default: every sign-preserving activation module. Their code x > 0
    is the linear-region code of NASWOT / JACOV (on which side of each unit's hyperplane a sample
    falls), so code distances measure how differently the network treats two images. Hooking every
    module's input instead (the IFA code) counts a tensor several times (a Sequential's input is its
    first child's) and binarises images and BN outputs, whose sign means nothing. Functional
    activations (e.g. inside squeeze-excite) are not hooked."""
    return [m for m in model.modules() if isinstance(m, SIGN_PRESERVING)]


@torch.no_grad()
def icd(model: nn.Module, images: torch.Tensor, layers: Sequence[nn.Module] | None = None) -> float:
    """Intra-cluster distance of the binary activation codes of `images` (N >= 2, on the model's device):
    each hooked layer, at every call, adds |c_i - centroid|^2 to sample i, c_i being its output > 0
    flattened and the centroid the batch's mean code; the score is the mean over samples of the
    square root of their sums. Eval mode, no gradients; mode and hooks restored. Every hooked layer
    must run: one that does not is computed some other way (a dynamic module) and would be silently
    missed; a Supernet is refused outright."""
    # a Supernet's elastic blocks compute their activations functionally, out of the hooks' sight
    # (4 of the 32 activation modules of a plain supernet run), so its ICD would be silently wrong
    if any(isinstance(m, Supernet) for m in model.modules()):
        raise TypeError("icd: the model is (or holds) a dynamic Supernet, whose elastic blocks hide their "
                        "activations from the hooks; score the static subnet: supernet.extract(arch)")
    if images.ndim < 2 or images.shape[0] < 2:
        raise ValueError(f"icd needs a batch of at least 2 images; got a tensor of shape {tuple(images.shape)}")
    layers = activation_layers(model) if layers is None else list(layers)
    if not layers:
        raise ValueError("icd: no layer to hook (the model has no ReLU/Hardswish/SiLU/GELU/LeakyReLU module); "
                         "pass `layers` explicitly")
    n = images.shape[0]
    total = torch.zeros(n, dtype=torch.float64, device=images.device)
    seen: set[int] = set()

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not isinstance(output, torch.Tensor) or output.shape[0] != n:
            raise ValueError(f"icd: hooked layer {type(module).__name__} returned "
                             f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}; expected a tensor "
                             f"with the batch of {n} images first")
        codes = (output > 0).flatten(1).to(torch.float64)
        total.add_(((codes - codes.mean(0)) ** 2).sum(1).to(total.device))
        seen.add(id(module))

    was_training = model.training
    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        model.eval()
        model(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    _check_all_ran(model, layers, seen)
    return float(total.sqrt().mean())


def _check_all_ran(model: nn.Module, layers: Sequence[nn.Module], seen: set[int]) -> None:
    """Raise unless every hooked layer fired: the expected activations vs the hooks seen."""
    missed = [layer for layer in dict.fromkeys(layers) if id(layer) not in seen]
    if missed:
        names = {id(m): name or type(m).__name__ for name, m in model.named_modules()}
        shown = ", ".join(names.get(id(m), type(m).__name__) for m in missed[:3])
        raise ValueError(f"icd: {len(missed)} of {len(dict.fromkeys(layers))} hooked layers did not run in the "
                         f"forward pass ({shown}{', ...' if len(missed) > 3 else ''}); a module that computes "
                         "its activations functionally hides them and ICD would be wrong: score a static "
                         "network, or pass only `layers` the model runs")


def _without_bn(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.Identity())
        else:
            _without_bn(child)
    return model


def synflow(model: nn.Module, resolution: int | tuple[int, int], in_channels: int = 3) -> float:
    """log10 of the Synflow score: sum over conv/linear weights of |theta * dR/dtheta|, R the sum of
    all exits' outputs for one all-ones image. On a float64 deep copy (the model is untouched) in
    eval mode, every parameter replaced by its absolute value and every BatchNorm by the identity
    (as in the zero-cost-proxy code: on one all-ones image train-mode BN would erase the signal,
    eval-mode BN would make the score depend on running statistics). The log keeps deep nets'
    scores (beyond 1e60) rankable; 0 gives -inf; a float64 overflow raises."""
    size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError("synflow: the model has no parameters")
    net = _without_bn(copy.deepcopy(model)).to(torch.float64).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
            p.requires_grad_(True)
    x = torch.ones(1, in_channels, *size, dtype=torch.float64, device=first.device)
    with torch.enable_grad():
        torch.stack([z.sum() for z in as_exits(net(x))]).sum().backward()
    with torch.no_grad():
        score = sum(float((m.weight * m.weight.grad).abs().sum()) for m in net.modules()
                    if isinstance(m, WEIGHTED) and m.weight.grad is not None)
    if not math.isfinite(score):
        raise FloatingPointError(f"synflow: the score overflowed float64 ({score}); the network is too deep "
                                 "or its weights too large for a float64 Synflow")
    return math.log10(score) if score > 0 else -math.inf


def training_free_metrics(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """ICD on `images` and log10 Synflow at the images' size and channels: one candidate's scores."""
    if images.ndim != 4:
        raise ValueError(f"training_free_metrics needs images of shape (N, C, H, W); got {tuple(images.shape)}")
    return {"icd": icd(model, images), "synflow": synflow(model, tuple(images.shape[-2:]), images.shape[1])}
