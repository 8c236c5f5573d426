"""The NAT2 search: archive, predictor-driven NSGA-II candidates, evaluation with the supernets' shared weights,
supernet adaptation, and the loop. Imports the search space, `supernets` and `predictors`; never the application."""
from .adaptation import AdaptSettings, adapt, better_half
from .archive import Archive, ArchiveError, hypervolume, initial_archive, reference_point, survive
from .candidates import choose_candidates, generate
from .distribution import ArchiveDistribution
from .evaluate import Evaluator
from .loop import (Search, SearchFiles, SearchSettings, build_predictor, high_tradeoff_points, iterations_done,
                   read_front)

__all__ = ["AdaptSettings", "Archive", "ArchiveDistribution", "ArchiveError", "Evaluator", "Search", "SearchFiles",
           "SearchSettings", "adapt", "better_half", "build_predictor", "choose_candidates", "generate",
           "high_tradeoff_points", "hypervolume", "initial_archive", "iterations_done", "read_front",
           "reference_point", "survive"]
