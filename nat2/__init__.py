"""NAT2: neural architecture search over OFAv2 super-networks.

The library: the search space (`SearchSpace`), the NAT2 search (`Archive`, `Search`,
`Evaluator`, ...) and RB-IFA (`rb_ifa`, `pf_ifa`, `pseudo_front`, `rb_select`, ...). The
command-line application lives in `nat2.app`. Names are imported on first use, so that
`import nat2` alone does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "nat2.space": ("EncodingError", "SearchSpace", "encoding_key"),
    "nat2.search": ("AdaptSettings", "Archive", "ArchiveDistribution", "ArchiveError", "Evaluator", "Search",
                    "SearchFiles", "SearchSettings", "adapt", "build_predictor", "hypervolume", "initial_archive",
                    "iterations_done", "read_front"),
    "nat2.rbifa": ("IFASettings", "MetricCache", "TrainingFreeMetrics", "check_wp", "parse_wps", "pf_ifa",
                   "pseudo_front", "rank_score", "rb_ifa", "rb_scores", "rb_select", "training_free_search"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'nat2' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
