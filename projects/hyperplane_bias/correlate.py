"""Projection bias beside re-initialization robustness, per layer, with Spearman rank correlations.

The paper's claim (Gamba et al., section 5): layers whose hyperplane arrangement is biased are the critical ones,
i.e. re-initializing them costs accuracy. Per layer we put

* ``mass`` and ``mean`` of the projections (from a projections document of the *trained* model),
* ``bias`` = |mass - 0.5| (0 for a symmetric arrangement, as at a random initialization; 0.5 when every filter
  projects to the same side),
* ``drop`` = (top1_test - acc) / top1_test after re-initializing the layer to one checkpoint (default: the
  initialization, key "0"), and ``rand_drop`` for re-randomization when present,

and report Spearman's rho (scipy.stats.spearmanr) of ``mass``, ``mean`` and ``bias`` against ``drop``.
Pure functions on the two JSON documents.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from scipy.stats import spearmanr

from shared.errors import UsageError

from .projections import iter_layer_entries, layer_biases
from .reinit import relative_drop

MIN_LAYERS = 3
STATS = ("mass", "mean", "bias")


def _reinit_keys(reinit_doc: Mapping[str, Any]) -> list[tuple[int, int] | None]:
    if "layers" in reinit_doc:
        return [(int(l["stage"]), int(l["block"])) for l in reinit_doc["layers"]]
    return []


def correlate(proj_doc: Mapping[str, Any], reinit_doc: Mapping[str, Any],
              checkpoint: str | None = None) -> dict[str, Any]:
    """Align the two documents layer by layer and compute the table and the rank correlations."""
    accs_by_key = reinit_doc.get("init_from_epoch") or {}
    if not accs_by_key:
        raise UsageError("the re-initialization results hold no checkpoint; run reinit with at least one checkpoint")
    keys = [k for k in accs_by_key if k != "rand"]
    if checkpoint is None:
        checkpoint = "0" if "0" in accs_by_key else (keys[0] if keys else "rand")
    if checkpoint not in accs_by_key:
        raise UsageError(f"checkpoint {checkpoint!r} not in the re-initialization results; choose one of: "
                         f"{', '.join(accs_by_key)}")
    top1 = float(reinit_doc["top1_test"])
    proj = {(s, b): e for s, b, e in iter_layer_entries(proj_doc)}
    rkeys = _reinit_keys(reinit_doc)
    n = len(accs_by_key[checkpoint])
    if not rkeys:  # the original's files: conv layers in order
        if n > len(proj):
            raise UsageError(f"re-initialization results have {n} layers but the projections only {len(proj)}; "
                             "compute both with the same --with-linear setting")
        rkeys = sorted(proj)[:n]
    names = [l.get("name", "") for l in reinit_doc.get("layers", [{}] * n)]
    rows = []
    for i, key in enumerate(rkeys):
        if key not in proj:
            continue
        e = proj[key]
        acc = float(accs_by_key[checkpoint][i])
        row = {"layer": f"s{key[0]}b{key[1]}", "name": names[i] if i < len(names) else "",
               "mass": float(e["mass"]), "mean": float(e["mean"]), "bias": abs(float(e["mass"]) - 0.5),
               "acc": acc, "drop": relative_drop(top1, acc)}
        if "rand" in accs_by_key:
            row["rand_drop"] = relative_drop(top1, float(accs_by_key["rand"][i]))
        rows.append(row)
    if len(rows) < MIN_LAYERS:
        raise UsageError(f"only {len(rows)} layers are common to the projections and the re-initialization "
                         f"results; a rank correlation needs at least {MIN_LAYERS}")
    drops = [r["drop"] for r in rows]
    corr = {}
    for stat in STATS:
        xs = [r[stat] for r in rows]
        corr[stat] = _spearman(xs, drops)
    return {"checkpoint": checkpoint, "top1_test": top1, "rows": rows, "spearman": corr,
            "num_classes": reinit_doc.get("num_classes")}


def _spearman(xs: list[float], ys: list[float]) -> dict[str, float | None]:
    """Spearman's rho and its p-value; None when undefined (a constant column)."""
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return {"rho": None, "p": None}
    r = spearmanr(xs, ys)
    rho, p = float(r.statistic), float(r.pvalue)
    return {"rho": None if math.isnan(rho) else rho, "p": None if math.isnan(p) else p}


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of the rows and the correlations."""
    has_rand = any("rand_drop" in r for r in result["rows"])
    head = f"{'layer':<7} {'module':<14} {'mass':>6} {'mean':>9} {'bias':>6} {'acc%':>7} " \
           f"{'drop@' + result['checkpoint']:>9}" + (f" {'drop@rand':>9}" if has_rand else "")
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        line = f"{r['layer']:<7} {r['name']:<14} {r['mass']:>6.3f} {r['mean']:>9.4f} {r['bias']:>6.3f} " \
               f"{r['acc']:>7.2f} {r['drop']:>9.3f}"
        if has_rand:
            line += f" {r.get('rand_drop', math.nan):>9.3f}"
        lines.append(line)
    lines.append("")
    for stat, c in result["spearman"].items():
        rho = "undefined (constant column)" if c["rho"] is None else f"{c['rho']:+.3f} (p = {c['p']:.3g})"
        lines.append(f"Spearman rho({stat}, drop@{result['checkpoint']}) = {rho}")
    return "\n".join(lines)


def correlation_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    return {f"correlate/spearman_{s}": c["rho"] for s, c in result["spearman"].items() if c["rho"] is not None}


def excess_vs_drop(proj_doc: Mapping[str, Any], drops: Mapping[str, float], stat: str = "excess") -> dict[str, Any]:
    """Spearman's rho between each layer's bias beyond a random layer of its width (``excess`` = |mass - 0.5| minus
    the random-layer null's mean E|mass - 0.5| for its number of filters, see
    :func:`~projects.hyperplane_bias.projections.layer_biases`) and its re-initialization drop, over the layers of
    ``proj_doc`` that ``drops`` (layer label -> drop) has. ``stat`` may also be ``bias`` (the raw |mass - 0.5|, which
    a random layer already ranks by width) or ``n`` (the width alone: how much width ranks the drops by itself).

    With ``proj_doc`` the trained model this is the critical-layer statistic; with the same run's initialization
    (epoch 0, a random layer of every width) it is its null, against the same drops."""
    rows = [dict(r, drop=float(drops[r["layer"]])) for r in layer_biases(proj_doc) if r["layer"] in drops]
    if len(rows) < MIN_LAYERS:
        raise UsageError(f"only {len(rows)} layers are common to the projections and the drops; a rank "
                         f"correlation needs at least {MIN_LAYERS}")
    c = _spearman([float(r[stat]) for r in rows], [r["drop"] for r in rows])
    return {"stat": stat, "rho": c["rho"], "p": c["p"], "rows": rows}


def drops_by_layer(result: Mapping[str, Any]) -> dict[str, float]:
    """Layer label -> re-initialization drop, from a :func:`correlate` result."""
    return {r["layer"]: float(r["drop"]) for r in result["rows"]}
