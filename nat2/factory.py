"""Config -> search space and supernets."""
from __future__ import annotations

from dataclasses import replace

from supernets import Space, Supernet

from .space import SearchSpace


def build_space(config: dict) -> SearchSpace:
    sn = config["supernet"]
    return SearchSpace(Space(
        resolutions=tuple(sn["resolutions"]), widths=tuple(float(w) for w in sn["widths"]),
        kernels=tuple(sn["kernels"]), expands=tuple(sn["expands"]), depths=tuple(sn["depths"]),
        keys=(1, 2, 3, 4, 5, 6, 7) if sn["parallel"] else (4,),
        exits=(1, 2, 3, 4, 5) if sn["early_exits"] else (5,)))


def build_supernets(config: dict, space: SearchSpace, n_classes: int) -> dict[float, Supernet]:
    """One supernet per width multiplier (the W gene chooses among them)."""
    sn = config["supernet"]
    return {w: Supernet(n_classes, w, dense=sn["dense"], parallel=sn["parallel"], early_exits=sn["early_exits"],
                        space=replace(space.space, widths=(w,)), dropout=sn["dropout"],
                        bn_momentum=sn["bn_momentum"], bn_eps=sn["bn_eps"])
            for w in space.space.widths}
