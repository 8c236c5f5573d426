"""Accuracy predictors on integer encodings of architectures (numpy / scikit-learn / LightGBM /
CatBoost / scipy only; never torch). Build one by name with `make_predictor`."""
from .base import Predictor
from .boosting import CatBoostPredictor, LGBPredictor
from .classic import BayesianRidgePredictor, KNNPredictor, MLPPredictor, RidgePredictor, SVRPredictor
from .ensemble import AdaptivePredictor, KFoldEnsemble
from .factory import FEATURES, PREDICTORS, make_predictor
from .kernels import GPPredictor, RBFEnsemble, RBFPredictor
from .metrics import correlation_report, kendall_tau, rmse, spearman_rho
from .trees import CARTPredictor, E2EPPPredictor

__all__ = [
    "AdaptivePredictor", "BayesianRidgePredictor", "CARTPredictor", "CatBoostPredictor",
    "E2EPPPredictor", "FEATURES", "GPPredictor", "KFoldEnsemble", "KNNPredictor", "LGBPredictor",
    "MLPPredictor", "PREDICTORS", "Predictor", "RBFEnsemble", "RBFPredictor", "RidgePredictor",
    "SVRPredictor", "correlation_report", "kendall_tau", "make_predictor", "rmse", "spearman_rho",
]
