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


def figure_curves(curves: dict[str, Sequence[Sequence[float]]], title: str = "", tolerance: float | None = None):
    """Validation top-1 per epoch of each network (label -> one curve per seed): the mean over seeds, and the
    band from the lowest to the highest seed. ``tolerance``: a bar of that height beside the legend's networks,
    to judge a gap by (pp)."""
    if not curves or not any(len(c) for c in curves.values()):
        raise UsageError("no training curves to plot")
    fig, axes = new_figure(1, 2, figsize=(13, 4.6), layout="constrained")
    for label, runs in curves.items():
        n = min((len(r) for r in runs), default=0)
        if n == 0:
            continue
        a = np.asarray([list(r)[:n] for r in runs], dtype=float)
        ep = np.arange(1, n + 1)
        for ax in axes:
            line, = ax.plot(ep, a.mean(axis=0), marker="o", ms=3, label=f"{label} ({len(runs)} seeds)")
            ax.fill_between(ep, a.min(axis=0), a.max(axis=0), color=line.get_color(), alpha=0.2)
    top = max(float(np.max(np.asarray(list(r), dtype=float))) for runs in curves.values() for r in runs if len(r))
    axes[1].set_ylim(top - 8.0, top + 1.0)  # the end of training, where the verdicts are read
    if tolerance:
        axes[1].axhspan(top - tolerance, top, color="0.85", alpha=0.5, label=f"{tolerance:g} pp below the best")
    for ax, t in zip(axes, ("whole curve", "last points (zoom)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation top-1 [%]")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def figure_profiles(profiles: dict[str, Sequence[float]], title: str = ""):
    """The widths per layer of each network (label -> widths), as the share of its features per layer: where the
    budget is; dashed lines end the first third of the layers and begin the last."""
    if not profiles:
        raise UsageError("no networks to draw")
    fig, ax = new_figure(figsize=(8, 4.4), layout="constrained")
    k = len(profiles)
    for j, (label, widths) in enumerate(profiles.items()):
        w = np.asarray(widths, dtype=float)
        x = np.arange(w.size) + (j - (k - 1) / 2) * 0.8 / k
        ax.bar(x, 100.0 * w / w.sum(), width=0.8 / k, label=f"{label} ({int(w.sum())} features)")
    n = max(len(w) for w in profiles.values())
    for edge, text in ((n / 3, "first third |"), (2 * n / 3, "| last third")):
        ax.axvline(edge - 0.5, color="0.4", ls="--", lw=1)
        ax.text(edge - 0.5, ax.get_ylim()[1] * 0.97, text, ha="right" if text[0] != "|" else "left", va="top",
                fontsize=8, color="0.3")
    ax.set_xticks(range(n))
    ax.set_xlabel("layer (13 convolutions, then 2 hidden linear layers, for VGG-16)")
    ax.set_ylabel("share of the features [%]")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return fig
