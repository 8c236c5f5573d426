"""Wrappers over predictors: a K-fold ensemble and an adaptive choice of model."""
from __future__ import annotations

import numpy as np
from sklearn.base import clone
from sklearn.metrics import make_scorer
from sklearn.model_selection import KFold, cross_val_score

from .base import Predictor
from .factory import make_predictor
from .metrics import kendall_tau


class KFoldEnsemble(Predictor):
    """`n_splits` clones of `base`, each fitted on all folds but one; predicts their average. Each
    misses a different fold of the archive, so the average is smoother than one model on all rows
    (bagging without bootstrap), at `n_splits` times the cost."""

    def __init__(self, base, n_splits: int = 10, random_state: int = 0) -> None:
        self._keep_params(locals())

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        folds = KFold(self.n_splits, shuffle=True, random_state=self.random_state).split(X)
        self.estimators_ = [clone(self.base).fit(X[train], y[train]) for train, _ in folds]

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return np.mean([e.predict(X) for e in self.estimators_], axis=0)


def _cv_kendall_tau(y, p) -> float:
    tau = kendall_tau(y, p)
    return 0.0 if np.isnan(tau) else tau  # a constant prediction ranks nothing


class AdaptivePredictor(Predictor):
    """The candidate (a name of PREDICTORS) with the best `n_splits`-fold cross-validated Kendall
    tau on the training rows, refitted on all of them (`model_`): which model ranks the archive best
    changes as the archive grows. A fold of constant predictions counts as tau 0; ties go to the
    earlier candidate. Also fitted: `name_` (the choice), `cv_tau_` ({candidate: mean fold tau})."""

    def __init__(self, candidates: tuple[str, ...] = ("lgb", "catboost", "gp", "rbf", "e2epp", "cart", "ridge"),
                 n_splits: int = 5, features: str = "integer", random_state: int = 0) -> None:
        self._keep_params(locals())

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        if not self.candidates:
            raise ValueError("AdaptivePredictor needs at least one candidate")
        models = {c: make_predictor(c, features=self.features, random_state=self.random_state)
                  for c in self.candidates}
        cv = KFold(self.n_splits, shuffle=True, random_state=self.random_state)
        scorer = make_scorer(_cv_kendall_tau)
        self.cv_tau_ = {c: float(np.mean(cross_val_score(m, X, y, cv=cv, scoring=scorer, error_score="raise")))
                        for c, m in models.items()}
        self.name_ = max(self.candidates, key=self.cv_tau_.__getitem__)
        self.model_ = models[self.name_].fit(X, y)
