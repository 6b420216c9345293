"""Aggregation of nesting JSON documents over runs and teacher epochs (pure functions, as the original plot.py).

A document is the nesting JSON (``blocks -> layer_pairs -> [{distance, opening, rotation, binary_nesting}]``).
Discrete statistics are the fractions of the four states among the filter-channels of a pair, a block or the
network; continuous statistics are the per-filter-channel values.  Over several runs (documents with the same
architecture, dataset and teacher epoch) the mean and the standard deviation (ddof = 0, as numpy's default in the
original) are taken; distances are first divided by their maximum over all runs at that level (pair, block or
network), as the original did.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from projects.cone_geometry.nesting import CONTINUOUS, STATE_NAMES
from shared.errors import UsageError


def _entries(doc: dict) -> list[list[list[dict]]]:
    try:
        return [list(block["layer_pairs"]) for block in doc["blocks"]]
    except (KeyError, TypeError):
        raise UsageError(f"document {doc.get('name', '?') if isinstance(doc, dict) else '?'} is not a nesting JSON "
                         "(no blocks -> layer_pairs); pass the files the nesting command wrote") from None


def structure(doc: dict) -> list[list[int]]:
    """Number of filter-channels of every pair: ``[[n_pair, ...] per block]``."""
    return [[len(pair) for pair in block] for block in _entries(doc)]


def state_counts(entries: Sequence[dict]) -> np.ndarray:
    counts = np.zeros(len(STATE_NAMES))
    for e in entries:
        counts[int(e["binary_nesting"])] += 1
    return counts


def doc_fractions(doc: dict) -> dict[str, Any]:
    """State fractions per pair, block and network: ``{"net": (4,), "blocks": [(4,)], "pairs": [[(4,)]]}``."""
    blocks = _entries(doc)
    pairs = [[_frac(state_counts(pair)) for pair in block] for block in blocks]
    block_fr = [_frac(sum((state_counts(pair) for pair in block), np.zeros(4))) for block in blocks]
    net = _frac(sum((state_counts(pair) for block in blocks for pair in block), np.zeros(4)))
    return {"net": net, "blocks": block_fr, "pairs": pairs}


def _frac(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.full(len(counts), np.nan)


def doc_values(doc: dict) -> dict[str, Any]:
    """Continuous values ``(n, 3)`` (distance, opening, rotation) per pair, block and network, in JSON order."""
    blocks = _entries(doc)

    def arr(entries):
        return np.array([[float(e[k]) for k in CONTINUOUS] for e in entries], dtype=np.float64).reshape(-1, 3)

    pairs = [[arr(pair) for pair in block] for block in blocks]
    block_vals = [np.concatenate(p, axis=0) if p else np.zeros((0, 3)) for p in pairs]
    net = np.concatenate(block_vals, axis=0) if block_vals else np.zeros((0, 3))
    return {"net": net, "blocks": block_vals, "pairs": pairs}


def _check_same_structure(docs: Sequence[dict]) -> None:
    shapes = [structure(d) for d in docs]
    if any(s != shapes[0] for s in shapes[1:]):
        names = ", ".join(str(d.get("name", "?")) for d in docs)
        raise UsageError(f"the documents do not have the same blocks and pairs ({names}); aggregate runs of one "
                         "architecture only")


def _mean_std_by_level(docs: Sequence[dict], extract: Callable[[dict], dict],
                       transform: Callable[[np.ndarray], np.ndarray] = lambda a: a) -> dict[str, Any]:
    """Mean and std over documents of ``extract(doc)``'s arrays at each level (net, blocks, pairs), each level's
    stack of documents passed through ``transform`` first."""
    if not docs:
        raise UsageError("nothing to aggregate: no nesting documents given")
    _check_same_structure(docs)
    per_doc = [extract(d) for d in docs]

    def ms(values: list[np.ndarray]) -> dict[str, np.ndarray]:
        a = transform(np.stack(values))
        return {"mean": a.mean(axis=0), "std": a.std(axis=0)}

    nb = len(per_doc[0]["blocks"])
    return {
        "runs": len(docs),
        "net": ms([f["net"] for f in per_doc]),
        "blocks": [ms([f["blocks"][b] for f in per_doc]) for b in range(nb)],
        "pairs": [[ms([f["pairs"][b][p] for f in per_doc]) for p in range(len(per_doc[0]["pairs"][b]))]
                  for b in range(nb)],
    }


def aggregate_states(docs: Sequence[dict]) -> dict[str, Any]:
    """Mean and std over documents of the state fractions: ``{"net": {"mean", "std"}, "blocks": [...], "pairs":
    [[...]], "runs": n}``."""
    return _mean_std_by_level(docs, doc_fractions)


def normalize_distances(values: np.ndarray) -> np.ndarray:
    """``values``: (runs, n, 3); divides the distance column by its maximum over runs and entries (if > 0)."""
    out = np.array(values, dtype=np.float64, copy=True)
    if out.size:
        finite = out[..., 0][np.isfinite(out[..., 0])]
        top = finite.max() if finite.size else 0.0
        if top > 0:
            out[..., 0] = out[..., 0] / top
    return out


def aggregate_values(docs: Sequence[dict]) -> dict[str, Any]:
    """Per-filter-channel mean and std over documents of (normalized distance, opening, rotation).

    Returns ``{"net": {"mean": (n, 3), "std": (n, 3)}, "blocks": [...], "pairs": [[...]], "runs": k}``; the
    distance is normalized by its maximum over all documents at each level.
    """
    return _mean_std_by_level(docs, doc_values, normalize_distances)


def epoch_key(doc: dict) -> tuple[int, str]:
    """Sort key of a document's teacher epoch (numeric first; '' and non-numbers last)."""
    e = str(doc.get("epoch", ""))
    try:
        return (int(e), e)
    except ValueError:
        return (10**9, e)


def group_documents(docs: Sequence[dict]) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """``{(arch, dataset): {epoch: [documents of that epoch, one per run]}}`` with epochs in numeric order."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for d in sorted(docs, key=lambda d: (str(d.get("arch", "")), str(d.get("dataset", "")), epoch_key(d),
                                         str(d.get("run", "")))):
        groups.setdefault((str(d.get("arch", "")), str(d.get("dataset", ""))), {}).setdefault(
            str(d.get("epoch", "")), []).append(d)
    return groups


def evolution(by_epoch: dict[str, list[dict]]) -> dict[str, Any]:
    """State fractions and continuous means over teacher epochs.

    Returns ``{"epochs": [...], "net_mean": (E, 4), "net_std": (E, 4), "block_mean": (E, B, 4), "block_std":
    (E, B, 4), "cont_mean": (E, B, 3), "cont_std": (E, B, 3), "runs": [k per epoch]}``; continuous values are
    the block means of the per-run block means (distance normalized by its maximum over all epochs and runs of
    that block, so that curves are comparable across epochs).
    """
    epochs = list(by_epoch)
    if not epochs:
        raise UsageError("nothing to aggregate: no nesting documents given")
    _check_same_structure([d for e in epochs for d in by_epoch[e]])
    states = [aggregate_states(by_epoch[e]) for e in epochs]
    nb = len(states[0]["blocks"])
    raw = [[doc_values(d) for d in by_epoch[e]] for e in epochs]
    cont_mean = np.full((len(epochs), nb, 3), np.nan)
    cont_std = np.full((len(epochs), nb, 3), np.nan)
    for b in range(nb):
        dist = np.concatenate([v["blocks"][b][:, 0] for per_epoch in raw for v in per_epoch])
        finite = dist[np.isfinite(dist)]
        top = finite.max() if finite.size else 0.0
        for i, per_epoch in enumerate(raw):
            means = []
            for v in per_epoch:
                a = v["blocks"][b].copy()
                if top > 0:
                    a[:, 0] /= top
                means.append(a.mean(axis=0))
            m = np.stack(means)
            cont_mean[i, b], cont_std[i, b] = m.mean(axis=0), m.std(axis=0)
    return {
        "epochs": epochs,
        "runs": [len(by_epoch[e]) for e in epochs],
        "net_mean": np.stack([s["net"]["mean"] for s in states]),
        "net_std": np.stack([s["net"]["std"] for s in states]),
        "block_mean": np.stack([[s["blocks"][b]["mean"] for b in range(nb)] for s in states]).reshape(-1, nb, 4),
        "block_std": np.stack([[s["blocks"][b]["std"] for b in range(nb)] for s in states]).reshape(-1, nb, 4),
        "cont_mean": cont_mean,
        "cont_std": cont_std,
    }


def to_jsonable(obj: Any) -> Any:
    """numpy arrays -> lists (NaN -> None) for JSON artifacts."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return to_jsonable(obj.item())
    return obj


# --------------------------------------------------------------------------------------------------------------
# Nulls and replicates of the study (pure; they do not change any statistic above)


def block_sizes(doc: dict) -> np.ndarray:
    """Filter-channels per block (the sum over its pairs): the ``n`` whose fractions a block's state distribution
    averages (36, 256 and 4096 in LeNet9)."""
    return np.array([sum(len(pair) for pair in block) for block in _entries(doc)], dtype=np.float64)


def block_fraction_stack(docs: Sequence[dict]) -> np.ndarray:
    """``(networks, blocks, 4)``: the block-wise state fractions of each document (one network each)."""
    if not docs:
        raise UsageError("nothing to stack: no nesting documents given")
    _check_same_structure(docs)
    return np.stack([np.stack(doc_fractions(d)["blocks"]) for d in docs])


def sampling_floor(p: np.ndarray, n: np.ndarray | float) -> np.ndarray:
    """``sum_s p_s (1 - p_s) / n`` over the last axis: the variance (summed over the states) that the fractions of
    ``n`` independent filter-channels with state probabilities ``p`` have from sampling alone."""
    p = np.asarray(p, dtype=np.float64)
    return (p * (1.0 - p)).sum(axis=-1) / np.asarray(n, dtype=np.float64)


def variance_shares(fractions: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Each network's share of the across-network variance of every block's state fractions, in units of the
    block's sampling floor: ``(K, B)`` from ``fractions`` ``(K, B, S)`` and ``n`` ``(B,)``,

        r_kb = K / (K - 1) * sum_s (p_kbs - mean_k p_kbs)^2 / floor_b,  floor_b = sum_s pbar_bs (1 - pbar_bs) / n_b,

    so that the mean over k is the variance across networks (ddof 1, summed over the states) divided by the floor:
    about 1 for networks whose filter-channels are independent draws of one distribution, whatever ``n_b``; above 1
    when networks differ beyond sampling. NaN where the floor is 0 (every network in one state). Needs K >= 2."""
    fr = np.asarray(fractions, dtype=np.float64)
    k = fr.shape[0]
    if k < 2:
        raise UsageError("variance shares need at least two networks")
    pbar = fr.mean(axis=0)
    dev2 = ((fr - pbar) ** 2).sum(axis=-1) * (k / (k - 1))
    floor = sampling_floor(pbar, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(floor > 0, dev2 / np.where(floor > 0, floor, 1.0), np.nan)


def slope(xs: Sequence[float], ys: np.ndarray) -> np.ndarray:
    """Least-squares slope of ``ys`` (last axis) against ``xs``; NaN where a row has a non-finite value."""
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size < 2:
        raise UsageError("a slope needs at least two points")
    xc = x - x.mean()
    return (y - y.mean(axis=-1, keepdims=True)) @ xc / float(xc @ xc)


def tv_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total-variation distance 0.5 sum_s |p_s - q_s| over the last axis."""
    return 0.5 * np.abs(np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)).sum(axis=-1)


def contrast(first: float, last: float) -> float:
    """``(first - last) / (first + last)`` in [-1, 1]: how much ``last`` shrank from ``first`` (1: to 0; 0: no
    change; -1: from 0); 0 when both are 0 (nothing changed, so nothing shrank)."""
    total = first + last
    return 0.0 if total == 0 else float((first - last) / total)
