"""Search pictures (matplotlib, Agg): the Pareto view of an iteration and curves over iterations."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

LABELS = {"params": "params (M)", "macs": "MACs (M)", "latency": "latency (ms, predicted)"}
UNITS = {"params": 1e6, "macs": 1e6, "latency": 1.0}


def _cost(records: Sequence[dict[str, Any]], name: str) -> list[float]:
    return [r[name] / UNITS[name] for r in records]


def pareto_plot(path: Path, archive: Sequence[dict[str, Any]], front: Sequence[dict[str, Any]],
                candidates: Sequence[dict[str, Any]], cost: str, title: str,
                knees: Sequence[dict[str, Any]] = ()) -> None:
    """Top-1 against one cost: the archive, its front, the candidates predicted -> measured, and
    the knees (named by their `id`) once the search has chosen them."""
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.scatter(_cost(archive, cost), [r["top1"] for r in archive], s=10, c="0.7", label="archive")
    ordered = sorted(front, key=lambda r: r[cost])
    ax.plot(_cost(ordered, cost), [r["top1"] for r in ordered], "o-", c="C0", ms=4, label="front")
    if knees:
        ax.scatter(_cost(knees, cost), [r["val_top1"] for r in knees], marker="*", s=160, c="C2", zorder=3,
                   label="knees")
        for x, r in zip(_cost(knees, cost), knees):
            ax.annotate(r["id"], (x, r["val_top1"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    measured = [c for c in candidates if "predicted_top1" in c]
    if measured:
        x = _cost(measured, cost)
        ax.scatter(x, [c["predicted_top1"] for c in measured], marker="x", c="C1", label="candidates, predicted")
        ax.scatter(x, [c["top1"] for c in measured], marker="o", facecolors="none", edgecolors="C3",
                   label="candidates, measured")
        for xi, c in zip(x, measured):
            ax.plot([xi, xi], [c["predicted_top1"], c["top1"]], c="0.6", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel(LABELS.get(cost, cost))
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_plot(path: Path, stats: Sequence[dict[str, Any]]) -> None:
    """Hypervolume and the predictor's Kendall tau / Spearman rho over iterations. The hypervolume
    is measured in the box of iteration 0's ideal and reference point (1 = that whole box; it
    passes 1 when the front moves beyond iteration 0's ideal)."""
    fig, (hv, corr) = plt.subplots(1, 2, figsize=(10, 4))
    hv.plot([s["iteration"] for s in stats], [s["hypervolume"] for s in stats], "o-")
    hv.set_ylabel("hypervolume (1 = iteration 0's ideal-reference box)")
    scored = [s for s in stats if s.get("predictor")]
    for key in ("kendall_tau", "spearman_rho"):
        values = [float("nan") if s["predictor"][key] is None else s["predictor"][key] for s in scored]
        corr.plot([s["iteration"] for s in scored], values, "o-", label=key)
    if not scored:
        corr.text(0.5, 0.5, "no predictor yet: it is first fitted and scored\non the candidates of iteration 1",
                  ha="center", va="center", transform=corr.transAxes)
    else:
        corr.legend()
    corr.set_ylabel("predictor on the new candidates")
    for ax in (hv, corr):
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
