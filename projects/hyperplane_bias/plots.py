"""Figures (pure: documents in, ``matplotlib.figure.Figure`` out; no pyplot state, nothing written)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .projections import iter_layer_entries
from .reinit import layer_labels, relative_drop


def heatmap_matrix(doc: Mapping[str, Any]) -> tuple[np.ndarray, list[str], list[str]]:
    """(layers x checkpoints) relative accuracy drops, row labels, column labels ("rand" last)."""
    keys = [k for k in doc["init_from_epoch"] if k != "rand"]
    if "rand" in doc["init_from_epoch"]:
        keys.append("rand")
    top1 = float(doc["top1_test"])
    cols = [[relative_drop(top1, float(a)) for a in doc["init_from_epoch"][k]] for k in keys]
    return np.array(cols, dtype=float).T, layer_labels(doc), keys


def reinit_heatmap(doc: Mapping[str, Any], title: str | None = None) -> Figure:
    """Zhang et al.-style heatmap: rows = layers, columns = checkpoints (+ ``rand``), colour = relative accuracy
    drop (top1_test - acc) / top1_test on a fixed 0..1 scale; each cell shows the accuracy in percent; the chance
    level (100 / classes) is marked on the colour bar and cells at or below it are boxed."""
    drop, rows, cols = heatmap_matrix(doc)
    top1 = float(doc["top1_test"])
    k = doc.get("num_classes")
    chance = 100.0 / k if k else None
    fig = Figure(figsize=(1.2 + 0.75 * len(cols), 1.2 + 0.42 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(drop, cmap="magma_r", norm=Normalize(0.0, 1.0), aspect="auto")
    ax.set_xticks(range(len(cols)), [c if c == "rand" else f"ep {c}" for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("weights re-initialized from checkpoint")
    ax.set_ylabel("layer (stage, block)")
    for (i, j), d in np.ndenumerate(drop):
        acc = top1 * (1 - d) if not math.isnan(d) else math.nan
        ax.text(j, i, f"{acc:.0f}", ha="center", va="center", fontsize=7,
                color="white" if d > 0.5 else "black")
        if chance is not None and acc <= chance + 1e-9:
            ax.add_patch(_box(i, j))
    cb = fig.colorbar(im, ax=ax, label="relative accuracy drop")
    if chance is not None and top1 > 0:
        level = relative_drop(top1, chance)
        cb.ax.axhline(level, color="tab:cyan", lw=2)
        cb.ax.text(1.6, level, "chance", transform=cb.ax.get_yaxis_transform(), va="center", fontsize=7,
                   color="tab:cyan")
    ax.set_title(title or f"{doc.get('arch', '')} on {doc.get('dataset', '')}: re-initialization "
                 f"(top-1 {top1:.1f}%)", fontsize=9)
    return fig


def _box(i: int, j: int):
    from matplotlib.patches import Rectangle
    return Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:cyan", lw=1.5)


def projections_over_training(docs: Sequence[Mapping[str, Any]], stat: str = "mass") -> Figure:
    """One line per layer: ``stat`` (mass or mean) of each projections document against its epoch."""
    epochs = [int(d["epoch"]) for d in docs]
    order = np.argsort(epochs)
    series: dict[str, list[float]] = {}
    for idx in order:
        for s, b, e in iter_layer_entries(docs[idx]):
            series.setdefault(f"s{s}b{b}", []).append(float(e[stat]))
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    xs = [epochs[i] for i in order]
    for lab, ys in series.items():
        ax.plot(xs[:len(ys)], ys, marker="o", ms=3, label=lab)
    if stat == "mass":
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (completed)")
    ax.set_ylabel(f"projection {stat}" + (" P(p <= 0)" if stat == "mass" else ""))
    if docs:
        ax.set_title(f"{docs[0].get('arch', '')} on {docs[0].get('dataset', '')}: projection {stat} per layer",
                     fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return fig


def correlation_figure(result: Mapping[str, Any]) -> Figure:
    """Left: per layer, mass and bias |mass-0.5| beside the re-initialization drop. Right: bias vs drop with rho."""
    rows = result["rows"]
    labels = [r["layer"] for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(x, [r["mass"] for r in rows], "o-", label="mass P(p<=0)")
    ax.plot(x, [r["bias"] for r in rows], "s-", label="bias |mass-0.5|")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_xlabel("layer")
    ax.set_ylabel("projection statistic")
    tw = ax.twinx()
    tw.bar(x, [r["drop"] for r in rows], alpha=0.3, color="tab:red", label=f"drop @ {result['checkpoint']}")
    if any("rand_drop" in r for r in rows):
        tw.plot(x, [r.get("rand_drop", math.nan) for r in rows], "x", color="tab:red", label="drop @ rand")
    tw.set_ylabel("relative accuracy drop")
    ax.set_zorder(tw.get_zorder() + 1)  # lines above the bars
    ax.patch.set_visible(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = tw.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    bx, dy = [r["bias"] for r in rows], [r["drop"] for r in rows]
    ax2.scatter(bx, dy)
    for lab, a, b in zip(labels, bx, dy):
        ax2.annotate(lab, (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    c = result["spearman"]["bias"]
    rho = "undefined" if c["rho"] is None else f"{c['rho']:+.2f} (p={c['p']:.2g})"
    ax2.set_title(f"Spearman rho(bias, drop) = {rho}", fontsize=9)
    ax2.set_xlabel("bias |mass - 0.5|")
    ax2.set_ylabel(f"relative accuracy drop @ {result['checkpoint']}")
    return fig


def layer_bias_figure(labels: Sequence[str], widths: Sequence[int],
                      arms: Mapping[str, Mapping[str, Sequence[float]]]) -> Figure:
    """Per layer: the bias |mass - 0.5| of each arm (mean ± sd over seeds; arm -> layer -> values) beside a random
    layer of the same width (the exact mean, and the band up to its 95% quantile)."""
    from .projections import random_layer_bias_mean, random_layer_bias_quantile

    x = np.arange(len(labels))
    fig = Figure(figsize=(1.5 + 0.9 * len(labels), 4), layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between(x, 0, [random_layer_bias_quantile(n, 0.95) for n in widths], step="mid", color="grey",
                    alpha=0.2, label="random layer: up to its 95% quantile")
    ax.step(x, [random_layer_bias_mean(n) for n in widths], where="mid", color="grey", label="random layer: mean")
    k = max(len(arms), 1)
    for i, (name, per) in enumerate(arms.items()):
        off = (i - (k - 1) / 2) * 0.6 / k
        means = [float(np.mean(per[lab])) if per.get(lab) else math.nan for lab in labels]
        sds = [float(np.std(per[lab], ddof=1)) if len(per.get(lab, ())) > 1 else 0.0 for lab in labels]
        ax.errorbar(x + off, means, yerr=sds, fmt="o", ms=4, capsize=2, label=name)
    ax.set_xticks(x, [f"{lab}\n({n})" for lab, n in zip(labels, widths)])
    ax.set_xlabel("layer (filters)")
    ax.set_ylabel("bias |mass - 0.5|")
    ax.set_ylim(-0.02, 0.52)
    ax.legend(fontsize=7)
    ax.set_title("projection bias per layer against a random layer of the same width", fontsize=9)
    return fig


def rho_vs_null_figure(seeds: Sequence[int], measured: Sequence[float | None],
                       null: Sequence[float | None]) -> Figure:
    """Per seed: the critical-layer rank correlation of the trained network and its null (the initialization's),
    joined by a line, with each arm's mean."""
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.add_subplot()
    nan = lambda v: math.nan if v is None else float(v)  # noqa: E731
    for a, b in zip(measured, null):
        ax.plot([0, 1], [nan(b), nan(a)], color="grey", lw=0.8, alpha=0.6)
    for pos, vals, name in ((0, null, "null: initialization"), (1, measured, "trained")):
        v = [nan(x) for x in vals]
        ax.scatter([pos] * len(v), v, zorder=3)
        ok = [y for y in v if math.isfinite(y)]
        if ok:
            ax.hlines(float(np.mean(ok)), pos - 0.2, pos + 0.2, color="black", lw=2)
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks([0, 1], ["null: initialization", "trained"])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman rho(bias − random-layer mean, drop)")
    ax.set_title(f"critical layers, {len(seeds)} seeds", fontsize=9)
    return fig
