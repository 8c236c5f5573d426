"""How well predictions rank and fit true accuracies. The search only needs the predictor to ORDER
architectures, so rank correlations (Kendall's tau-b, Spearman's rho, both tie-aware) are the
headline figures; RMSE says whether the values are calibrated. A correlation is undefined when
either input is constant (or has fewer than two values): scipy then returns nan with a warning;
these functions return nan without one."""
from __future__ import annotations

import numpy as np
from scipy import stats


def _pair(y, p) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or y.shape != p.shape:
        raise ValueError(f"y and p must be 1-D of the same length; got shapes {y.shape} and {p.shape}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(p))):
        raise ValueError("y and p must be finite (no nan or inf)")
    return y, p


def _constant(a: np.ndarray) -> bool:
    return len(a) < 2 or bool(np.all(a == a[0]))


def kendall_tau(y, p) -> float:
    """Kendall's tau-b of `p` against `y`; nan if either is constant."""
    y, p = _pair(y, p)
    return float("nan") if _constant(y) or _constant(p) else float(stats.kendalltau(y, p).statistic)


def spearman_rho(y, p) -> float:
    """Spearman's rho (Pearson on average ranks) of `p` against `y`; nan if either is constant."""
    y, p = _pair(y, p)
    return float("nan") if _constant(y) or _constant(p) else float(stats.spearmanr(y, p).statistic)


def rmse(y, p) -> float:
    """Root mean squared error; needs at least one pair."""
    y, p = _pair(y, p)
    if not len(y):
        raise ValueError("rmse of empty arrays")
    return float(np.sqrt(np.mean((y - p) ** 2)))


def correlation_report(y, p) -> dict[str, float]:
    """{"kendall_tau", "spearman_rho", "rmse"} of `p` against `y`, as logged per search iteration."""
    return {"kendall_tau": kendall_tau(y, p), "spearman_rho": spearman_rho(y, p), "rmse": rmse(y, p)}
