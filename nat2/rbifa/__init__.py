"""RB-IFA (Nguyen et al., ICAART 2025): the rank-based score, the Improved FireFly Algorithm and its Pareto-front
variant PF-IFA, the pseudo-Pareto front, the rank-based selector, and the training-free search that scores subnets by
ICD, Synflow and MACs. Imports the search space and `supernets`; never the application."""
from .ifa import (IFAResult, IFASettings, MetricCache, PseudoFront, check_wp, parse_wps, pf_ifa, pseudo_front,
                  rank_score, rb_ifa, rb_scores, rb_select)
from .training_free import TrainingFreeFiles, TrainingFreeMetrics, training_free_search

__all__ = ["IFAResult", "IFASettings", "MetricCache", "PseudoFront", "TrainingFreeFiles", "TrainingFreeMetrics",
           "check_wp", "parse_wps", "pf_ifa", "pseudo_front", "rank_score", "rb_ifa", "rb_scores", "rb_select",
           "training_free_search"]
