"""Single and bagged regression trees: CART and E2EPP."""
from __future__ import annotations

from sklearn.ensemble import BaggingRegressor
from sklearn.tree import DecisionTreeRegressor

from .base import Predictor


class CARTPredictor(Predictor):
    """One CART regression tree. Leaves of at least `min_samples_leaf` rows keep a single tree
    from memorising the noise of individual evaluations."""

    def __init__(self, max_depth: int | None = None, min_samples_leaf: int = 5,
                 random_state: int = 0) -> None:
        self._keep_params(locals())

    def _build(self):
        return DecisionTreeRegressor(max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                                     random_state=self.random_state)


class E2EPPPredictor(Predictor):
    """E2EPP (Sun et al., 2019): a pool of CART trees, each fitted on a bootstrap sample of the
    rows and a random `max_features` fraction of the features, averaged. Per-tree (not
    per-split) feature subsets, hence bagging rather than a random forest."""

    def __init__(self, n_estimators: int = 300, max_features: float = 0.5, min_samples_leaf: int = 3,
                 random_state: int = 0) -> None:
        self._keep_params(locals())

    def _build(self):
        return BaggingRegressor(DecisionTreeRegressor(min_samples_leaf=self.min_samples_leaf),
                                n_estimators=self.n_estimators, max_features=self.max_features,
                                bootstrap=True, random_state=self.random_state, n_jobs=1)
