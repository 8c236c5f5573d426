"""Loading `ofa` OFAMobileNetV3 checkpoints into our supernet (shared weights map one to one)."""
from __future__ import annotations

import re
from typing import Mapping

import torch

from .arch import BLOCKS_PER_STAGE
from .supernet import Supernet


class CheckpointError(ValueError):
    """A checkpoint does not fit the network it is loaded into."""


def ofa_key(key: str) -> str:
    """Our parameter name for a key of an `ofa` OFAMobileNetV3 state dict."""
    key = key.replace(".mobile_inverted_conv.", ".conv.")
    block = re.match(r"blocks\.(\d+)\.conv\.(.*)", key)
    if block:
        i, rest = int(block.group(1)), block.group(2)
        if i == 0:
            return "first_block.mbconv." + rest.replace(".conv.conv.", ".conv.").replace(".bn.bn.", ".bn.")
        s, b = divmod(i - 1, BLOCKS_PER_STAGE)
        return f"stages.{s}.{b}.mbconv.{rest}"
    for old, new in (("first_conv.", "stem."), ("final_expand_layer.", "exits.5.final_expand."),
                     ("feature_mix_layer.", "exits.5.feature_mix."), ("classifier.linear.", "exits.5.classifier.")):
        if key.startswith(old):
            return new + key[len(old):]
    raise CheckpointError(f"unexpected key {key!r} in an OFAMobileNetV3 state dict")


def load_ofa_state_dict(supernet: Supernet, state: Mapping[str, torch.Tensor]) -> None:
    """Copy an `ofa` OFAMobileNetV3 (ks 3,5,7 / e 3,4,6 / d 2,3,4) state dict into `supernet`: every
    tensor must land on a parameter of the same shape; parameters the checkpoint lacks (parallel
    branches, early exits) keep their values."""
    ours = supernet.state_dict()
    mapped = {}
    for key, value in state.items():
        name = ofa_key(key)
        if name not in ours:
            raise CheckpointError(f"{key!r} -> {name!r}: no such parameter in this supernet")
        if ours[name].shape != value.shape:
            raise CheckpointError(
                f"{key!r}: checkpoint shape {tuple(value.shape)} != supernet shape {tuple(ours[name].shape)} "
                f"(width {supernet.width}, {supernet.n_classes} classes); build the supernet with the "
                "checkpoint's width and classes, load, then reset_heads(n) for a new dataset")
        mapped[name] = value
    supernet.load_state_dict(mapped, strict=False)
