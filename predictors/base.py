"""The base class of every predictor, and the input scaling several share. Inputs are validated in
one place, so that every model rejects bad data with the same ValueError and an unfitted one raises
sklearn's NotFittedError, whatever library sits underneath."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.utils.validation import check_array, check_is_fitted, check_X_y


class Predictor(RegressorMixin, BaseEstimator):
    """A regressor on encodings: a subclass defines `_build` (returning the unfitted sklearn-style
    model that `_fit` fits on the validated data), or overrides `_fit` and `_predict` itself."""

    def fit(self, X, y) -> Predictor:
        """Fit on `X` (n, d) finite numbers, n >= 2, and `y` (n,) finite numbers."""
        X, y = check_X_y(X, y, dtype=np.float64, ensure_min_samples=2, y_numeric=True)
        self.n_features_in_ = X.shape[1]
        self._fit(X, y)
        return self

    def predict(self, X) -> np.ndarray:
        """Predicted targets, shape (n,)."""
        check_is_fitted(self)
        X = check_array(X, dtype=np.float64, input_name="X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return np.asarray(self._predict(X), dtype=np.float64).reshape(len(X))

    def _keep_params(self, init_locals: dict[str, object]) -> None:
        """Store `__init__`'s arguments (pass `locals()`) as they are, where sklearn's get_params reads them."""
        vars(self).update({name: value for name, value in init_locals.items() if name != "self"})

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        self.model_ = self._build().fit(X, y)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(X)


def scaled(model, *, target: bool = False):
    """`model` behind a [0, 1] min-max scaler of the features (fitted on their observed range),
    and with `target`, a standardised target: distance- and margin-based models (kernels, SVR's
    epsilon, weight decay, huber's delta) then mean the same whatever the units of the encoding
    or the accuracy (fraction or percent)."""
    pipe = make_pipeline(MinMaxScaler(), model)
    return TransformedTargetRegressor(pipe, transformer=StandardScaler()) if target else pipe
