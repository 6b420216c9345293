"""The poster's figures from aggregated nesting statistics (matplotlib figures; saving/logging is the caller's).

- :func:`states_net`: net-wise distribution of the four states (bars, mean +- std over runs);
- :func:`states_blocks`: block-wise distribution (grouped bars per block);
- :func:`continuous`: distributions of the per-filter-channel distance (normalized), opening and rotation, per block;
- :func:`evolution_states` / :func:`evolution_continuous`: the same statistics over teacher epochs;
- :func:`normalized_variance` / :func:`step_distances`: the study's statistics beside their nulls, per run.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from projects.cone_geometry.nesting import CONTINUOUS, STATE_NAMES
from shared.plotting import new_figure

COLORS = ("#4C72B0", "#55A868", "#C44E52", "#8172B2")
CONT_LABELS = {"distance": "apex distance (normalized)", "opening": "opening offset |Δᾱ|", "rotation": "rotation ρ̄"}


def _subtitle(agg: dict) -> str:
    return f"{agg['runs']} run{'s' if agg['runs'] != 1 else ''}"


def states_net(agg: dict, title: str):
    fig, ax = new_figure(figsize=(6, 3.6))
    x = np.arange(len(STATE_NAMES))
    ax.bar(x, agg["net"]["mean"], yerr=agg["net"]["std"], color=COLORS, capsize=4)
    ax.set_xticks(x, STATE_NAMES, rotation=15)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of filter-channels")
    ax.set_title(f"{title}: net-wise distribution ({_subtitle(agg)})", fontsize=10)
    return fig


def states_blocks(agg: dict, title: str):
    nb = len(agg["blocks"])
    fig, ax = new_figure(figsize=(max(6, 1.8 * nb + 2), 3.6))
    width = 0.8 / len(STATE_NAMES)
    x = np.arange(nb)
    for s, name in enumerate(STATE_NAMES):
        ax.bar(x + (s - 1.5) * width, [b["mean"][s] for b in agg["blocks"]], width,
               yerr=[b["std"][s] for b in agg["blocks"]], color=COLORS[s], capsize=3, label=name)
    ax.set_xticks(x, [f"block {b}" for b in range(nb)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of filter-channels")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{title}: block-wise distribution ({_subtitle(agg)})", fontsize=10)
    return fig


def continuous(values: dict, title: str, bins: int = 30):
    """Histograms (density) of the per-filter-channel means over runs, one line per block."""
    fig, axes = new_figure(1, 3, figsize=(12, 3.4))
    for k, (ax, stat) in enumerate(zip(axes, CONTINUOUS)):
        for b, block in enumerate(values["blocks"]):
            v = block["mean"][:, k]
            v = v[np.isfinite(v)]
            if v.size == 0:
                continue
            lo, hi = float(v.min()), float(v.max())
            if hi <= lo:
                hi = lo + 1e-12
            hist, edges = np.histogram(v, bins=bins, range=(lo, hi), density=True)
            ax.step(edges[:-1], hist, where="post", label=f"block {b}")
        ax.set_xlabel(CONT_LABELS[stat])
        ax.set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: continuous statistics ({_subtitle(values)})", fontsize=10)
    return fig


def _epochs_axis(evo: dict) -> np.ndarray:
    try:
        return np.array([float(e) for e in evo["epochs"]])
    except ValueError:
        return np.arange(len(evo["epochs"]), dtype=float)


def evolution_states(evo: dict, title: str):
    """State fractions over teacher epochs: the network and each block (mean +- std over runs)."""
    x = _epochs_axis(evo)
    nb = evo["block_mean"].shape[1]
    fig, axes = new_figure(1, nb + 1, figsize=(3.6 * (nb + 1), 3.2), squeeze=False)
    panels = [("network", evo["net_mean"], evo["net_std"])] + \
        [(f"block {b}", evo["block_mean"][:, b], evo["block_std"][:, b]) for b in range(nb)]
    for ax, (name, mean, std) in zip(axes[0], panels):
        for s, state in enumerate(STATE_NAMES):
            ax.plot(x, mean[:, s], marker="o", ms=3, color=COLORS[s], label=state)
            ax.fill_between(x, mean[:, s] - std[:, s], mean[:, s] + std[:, s], color=COLORS[s], alpha=0.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("teacher epoch")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("fraction of filter-channels")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{title}: states over the teacher's training", fontsize=10)
    return fig


def evolution_continuous(evo: dict, title: str):
    x = _epochs_axis(evo)
    nb = evo["cont_mean"].shape[1]
    fig, axes = new_figure(1, 3, figsize=(12, 3.2))
    for k, (ax, stat) in enumerate(zip(axes, CONTINUOUS)):
        for b in range(nb):
            m, s = evo["cont_mean"][:, b, k], evo["cont_std"][:, b, k]
            ax.plot(x, m, marker="o", ms=3, label=f"block {b}")
            ax.fill_between(x, m - s, m + s, alpha=0.2)
        ax.set_xlabel("teacher epoch")
        ax.set_ylabel(CONT_LABELS[stat])
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: continuous statistics over the teacher's training", fontsize=10)
    return fig


def normalized_variance(arms: dict[str, np.ndarray], trend: list[int], title: str):
    """Per block, each run's share of the variance across runs in units of the sampling floor (``arms``: name ->
    (runs, blocks)); bars are the means, points the runs; blocks outside ``trend`` are marked."""
    names = list(arms)
    nb = next(iter(arms.values())).shape[1]
    fig, ax = new_figure(figsize=(max(6, 1.8 * nb + 2), 3.6))
    width = 0.8 / max(len(names), 1)
    x = np.arange(nb)
    for i, name in enumerate(names):
        v = np.asarray(arms[name], dtype=float)
        pos = x + (i - (len(names) - 1) / 2) * width
        ax.bar(pos, np.nanmean(v, axis=0), width, color=COLORS[i % len(COLORS)], alpha=0.6, label=name)
        for b in range(nb):
            ax.plot(np.full(v.shape[0], pos[b]), v[:, b], "k.", ms=4)
    ax.axhline(1.0, color="0.4", lw=0.8, ls="--")
    ax.set_xticks(x, [f"block {b}" + ("" if b in trend else " (not in slope)") for b in range(nb)])
    ax.set_ylabel("variance / sampling floor")
    ax.legend(fontsize=7)
    ax.set_title(f"{title}: variance across runs per block, normalized", fontsize=10)
    return fig


def step_distances(arms: dict[str, np.ndarray], steps: list[str], title: str):
    """Per run, the distance per teacher epoch between consecutive students (``arms``: name -> (runs, steps))."""
    fig, ax = new_figure(figsize=(6, 3.6))
    x = np.arange(len(steps))
    for i, (name, v) in enumerate(arms.items()):
        v = np.asarray(v, dtype=float)
        for r, row in enumerate(v):
            ax.plot(x, row, marker="o", ms=3, color=COLORS[i % len(COLORS)], alpha=0.7,
                    label=name if r == 0 else None)
    ax.set_xticks(x, steps)
    ax.set_xlabel("consecutive trained teacher epochs")
    ax.set_ylabel("total variation per epoch")
    if steps:
        ax.legend(fontsize=7)
    ax.set_title(f"{title}: how much each step changes the net-wise distribution", fontsize=10)
    return fig


def figure_set(agg_states: dict, agg_values: dict, title: str) -> dict[str, Any]:
    """The three per-epoch figures, by file stem."""
    return {"netwise_states": states_net(agg_states, title), "blockwise_states": states_blocks(agg_states, title),
            "continuous": continuous(agg_values, title)}
