"""Figures of a sweep: accuracy against the mean and skew of the feature distribution, and against capacity.

Each function takes the sweep's records (dicts with the CSV columns) and returns a matplotlib figure; saving and
logging happen in sweep_runs.py.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from shared.errors import UsageError
from shared.plotting import new_figure


def _variants(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [r for r in records if r.get("Mean") is not None and r.get("Skew") is not None
            and r.get("BestVal") is not None]
    if not rows:
        raise UsageError("no skew-normal variants with results to plot; pass the results of a sweep")
    return rows


def mean_skew_grid(records: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(means, skews, acc) with acc[i, j] = the best BestVal over scales at (means[i], skews[j]); NaN where absent."""
    rows = _variants(records)
    means = np.array(sorted({float(r["Mean"]) for r in rows}))
    skews = np.array(sorted({float(r["Skew"]) for r in rows}))
    acc = np.full((len(means), len(skews)), np.nan)
    mi = {m: i for i, m in enumerate(means)}
    si = {s: j for j, s in enumerate(skews)}
    for r in rows:
        i, j = mi[float(r["Mean"])], si[float(r["Skew"])]
        v = float(r["BestVal"])
        if math.isnan(acc[i, j]) or v > acc[i, j]:
            acc[i, j] = v
    return means, skews, acc


def figure_mean_skew(records: Sequence[dict[str, Any]], title: str = ""):
    """Heat map of the best accuracy over (mean, skew) (best over scales), and accuracy against mean and skew."""
    rows = _variants(records)
    means, skews, acc = mean_skew_grid(rows)
    fig, axes = new_figure(1, 3, figsize=(17, 4.8), layout="constrained")
    ax = axes[0]
    # one cell per observed (mean, skew) pair, on categorical axes labelled with the values
    im = ax.imshow(np.ma.masked_invalid(acc.T), origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(means)))
    ax.set_xticklabels([f"{m:g}" for m in means], fontsize=7)
    ax.set_yticks(range(len(skews)))
    ax.set_yticklabels([f"{s:g}" for s in skews], fontsize=7)
    ax.set_xlabel("mean (layer index of the feature mass)")
    ax.set_ylabel("skew")
    ax.set_title("best top-1 [%] over scales (blank: no valid variant)")
    fig.colorbar(im, ax=ax)
    m = np.array([float(r["Mean"]) for r in rows])
    s = np.array([float(r["Skew"]) for r in rows])
    a = np.array([float(r["BestVal"]) for r in rows])
    sc = axes[1].scatter(m, a, c=s, cmap="coolwarm", s=18)
    axes[1].set_xlabel("mean")
    axes[1].set_ylabel("best validation top-1 [%]")
    fig.colorbar(sc, ax=axes[1], label="skew")
    sc = axes[2].scatter(s, a, c=m, cmap="viridis", s=18)
    axes[2].set_xlabel("skew")
    axes[2].set_ylabel("best validation top-1 [%]")
    fig.colorbar(sc, ax=axes[2], label="mean")
    for ax in axes[1:]:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def figure_parameters(records: Sequence[dict[str, Any]], title: str = ""):
    """Accuracy against the original's capacity ("Parameters"), coloured by mean; references marked with a star."""
    rows = [r for r in records if r.get("BestVal") is not None and r.get("Parameters")]
    if not rows:
        raise UsageError("no results with a parameter count to plot; pass the results of a sweep")
    fig, ax = new_figure(figsize=(7, 4.6), layout="constrained")
    var = [r for r in rows if r.get("Mean") is not None]
    ref = [r for r in rows if r.get("Mean") is None]
    if var:
        sc = ax.scatter([r["Parameters"] for r in var], [r["BestVal"] for r in var],
                        c=[float(r["Mean"]) for r in var], cmap="viridis", s=18)
        fig.colorbar(sc, ax=ax, label="mean")
    for r in ref:
        ax.scatter([r["Parameters"]], [r["BestVal"]], marker="*", s=160, color="crimson",
                   label=str(r.get("VariantId") or "reference"))
    if ref:
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("parameters (the original's capacity formula)")
    ax.set_ylabel("best validation top-1 [%]")
    ax.grid(alpha=0.3, which="both")
    if title:
        ax.set_title(title)
    return fig
