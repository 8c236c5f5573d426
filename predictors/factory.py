"""The registry of predictors by name, and `make_predictor`, which builds one from a config."""
from __future__ import annotations

from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from .boosting import CatBoostPredictor, LGBPredictor
from .classic import BayesianRidgePredictor, KNNPredictor, MLPPredictor, RidgePredictor, SVRPredictor
from .kernels import GPPredictor, RBFEnsemble, RBFPredictor
from .trees import CARTPredictor, E2EPPPredictor

PREDICTORS = {
    "lgb": LGBPredictor, "catboost": CatBoostPredictor, "gp": GPPredictor, "rbf": RBFPredictor,
    "rbf_ensemble": RBFEnsemble, "mlp": MLPPredictor, "cart": CARTPredictor, "e2epp": E2EPPPredictor,
    "svr": SVRPredictor, "ridge": RidgePredictor, "knn": KNNPredictor, "bayesian_ridge": BayesianRidgePredictor,
}
FEATURES = ("integer", "onehot")


def make_predictor(name: str, *, features: str = "integer", random_state: int = 0, **params):
    """An unfitted predictor `name` (a key of PREDICTORS) with `params` for its constructor, and
    `random_state` if it draws random numbers. `features="onehot"` puts it behind a one-hot encoder
    of every gene (an unseen value encodes as all zeros), for models that cannot read an ordinal
    gene as a category."""
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; known: {', '.join(PREDICTORS)}")
    if features not in FEATURES:
        raise ValueError(f"unknown features {features!r}; known: {', '.join(FEATURES)}")
    cls = PREDICTORS[name]
    if "random_state" in cls._get_param_names():
        params["random_state"] = random_state
    model = cls(**params)
    if features == "integer":
        return model
    return Pipeline([("check", FunctionTransformer(validate=True)),  # finite 2-D numbers, as Predictor.fit
                     ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                     ("model", model)])
