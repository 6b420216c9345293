"""Weights as paths over layers (path_norm.py and path_weights.py), as pure functions.

A run contributes one weight stack W (L, dim, dim) (the list of L matrices the training exports). Runs are grouped
by their L; runs with the same L are repeats and are averaged.

* :func:`norm_curves`: for every L, the mean over runs of |L^beta W_k|_F against x_k = k / (L - 1), k = 0..L-1
  (numpy.linspace(0, 1, L), as the original), with a normal 95% band mean +- z * sd / sqrt(R) (R runs, sd with
  ddof = 1; the original hard-coded sqrt(3) and ddof = 0).
* :func:`pvar_table`: for every L and run, V_p(x)^(1/p) of the path x_k = L^beta vec(W_k); the original prints the
  maximum over runs.
* :func:`entry_curves`: chosen entries L^beta W_k[i, j] against x_k (the original hard-coded six entries).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from projects.depth_limit.models import weight_path
from projects.depth_limit.pvar import p_variation
from shared.errors import UsageError

DEFAULT_ENTRIES = ((0, 0), (1, 1), (2, 2), (7, 3), (8, 5), (9, 6))  # the original's (px, py) pairs


def as_stack(weights) -> np.ndarray:
    """A list of L (dim, dim) matrices or an (L, dim, dim) array/tensor -> float64 array (L, dim, dim)."""
    if isinstance(weights, (list, tuple)):
        if not weights:
            raise UsageError("a weight file holds an empty list; it must hold the L block matrices")
        weights = torch.stack([torch.as_tensor(w) for w in weights])
    w = torch.as_tensor(weights).detach().cpu().double().numpy()
    if w.ndim == 2:  # L scalars per layer, or L vectors
        w = w[:, :, None]
    if w.ndim != 3:
        raise UsageError(f"expected L weight matrices of shape (L, dim, dim), got shape {w.shape}")
    return w


def group_by_depth(runs: list[tuple[str, np.ndarray]]) -> dict[int, list[tuple[str, np.ndarray]]]:
    """{L: [(label, stack), ...]} sorted by L."""
    out: dict[int, list[tuple[str, np.ndarray]]] = {}
    for label, w in runs:
        w = as_stack(w)
        out.setdefault(int(w.shape[0]), []).append((label, w))
    return dict(sorted(out.items()))


def layer_axis(L: int) -> np.ndarray:
    """x_k = k / (L - 1), k = 0..L-1 (numpy.linspace(0, 1, L), the original's axis)."""
    return np.linspace(0.0, 1.0, L)


def layer_norms(w, beta: float) -> np.ndarray:
    """|L^beta W_k|_F for k = 0..L-1."""
    w = as_stack(w)
    L = w.shape[0]
    return (float(L) ** beta) * np.sqrt((w.reshape(L, -1) ** 2).sum(axis=1))


def mean_band(values: np.ndarray, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the first axis (runs) and the half-width z * sd(ddof=1) / sqrt(R) (0 for a single run)."""
    values = np.asarray(values, dtype=np.float64)
    R = values.shape[0]
    mean = values.mean(axis=0)
    if R < 2:
        return mean, np.zeros_like(mean)
    return mean, z * values.std(axis=0, ddof=1) / np.sqrt(R)


@dataclass
class NormCurve:
    L: int
    x: np.ndarray
    mean: np.ndarray
    half_width: np.ndarray
    runs: int


def norm_curves(groups: dict[int, list[tuple[str, np.ndarray]]], beta: float, z: float = 1.96) -> list[NormCurve]:
    """One mean curve with its band per depth L."""
    curves = []
    for L, runs in groups.items():
        vals = np.stack([layer_norms(w, beta) for _, w in runs])
        mean, half = mean_band(vals, z)
        curves.append(NormCurve(L, layer_axis(L), mean, half, len(runs)))
    return curves


def pvar_table(groups: dict[int, list[tuple[str, np.ndarray]]], p: float, beta: float) -> dict[int, list[float]]:
    """{L: [V_p(L^beta vec W)^(1/p) for each run]}."""
    return {L: [p_variation(weight_path(w, beta), p).norm for _, w in runs] for L, runs in groups.items()}


def format_pvar_table(table: dict[int, list[float]], p: float) -> str:
    """A plain table (L, runs, max, mean) and the original's LaTeX row of the maxima (with the right p)."""
    lines = [f"{'L':>8} {'runs':>5} {'max':>14} {'mean':>14}"]
    for L, vals in table.items():
        lines.append(f"{L:>8d} {len(vals):>5d} {max(vals):>14.6g} {float(np.mean(vals)):>14.6g}")
    row = " & ".join(f"{max(v):.4g}" for v in table.values())
    lines.append(f"Max {p:g}-variation for $W_L$ & {row} \\\\")
    return "\n".join(lines)


def parse_entries(text: str | None) -> tuple[tuple[int, int], ...]:
    """'0,0;1,1;7,3' -> ((0, 0), (1, 1), (7, 3)); None -> the original's six pairs."""
    if text is None or text == "":
        return DEFAULT_ENTRIES
    out = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        try:
            i, j = (int(v) for v in part.split(","))
        except ValueError:
            raise UsageError(f"bad entry {part!r} in --entries; use row,col pairs separated by ';', e.g. 0,0;1,1") from None
        if i < 0 or j < 0:
            raise UsageError(f"entry {part!r} has a negative index; use row,col >= 0")
        out.append((i, j))
    if not out:
        raise UsageError("--entries is empty; give row,col pairs separated by ';', e.g. 0,0;1,1")
    return tuple(out)


def entry_curves(groups: dict[int, list[tuple[str, np.ndarray]]], entries, beta: float) -> dict[tuple[int, int], list[tuple[int, str, np.ndarray, np.ndarray]]]:
    """{(i, j): [(L, label, x, L^beta W_k[i, j]), ...]}; an entry outside dim x dim is a UsageError."""
    out: dict[tuple[int, int], list] = {tuple(e): [] for e in entries}
    for L, runs in groups.items():
        for label, w in runs:
            for (i, j) in out:
                if i >= w.shape[1] or j >= w.shape[2]:
                    raise UsageError(f"entry ({i},{j}) is outside the {w.shape[1]}x{w.shape[2]} weights of {label}; "
                                     "choose --entries inside the matrices")
                out[(i, j)].append((L, label, layer_axis(L), (float(L) ** beta) * w[:, i, j]))
    return out


def weight_change(trained, initial) -> np.ndarray:
    """W_k(trained) - W_k(initial) as an (L, dim, dim) float64 stack (what training added to each layer)."""
    a, b = as_stack(trained), as_stack(initial)
    if a.shape != b.shape:
        raise UsageError(f"the trained weights have shape {a.shape} but the initial ones {b.shape}; pair the weights "
                         "of one fit")
    return a - b


def layer_order_ratio(w, p: float, beta: float = 0.0, shuffles: int = 16, seed: int = 0) -> float:
    """The order ratio (:func:`projects.depth_limit.pvar.order_ratio`) of the path x_k = L^beta vec W_k: its
    p-variation norm over that of the same layers in random orders. Scale-free, so beta does not change it."""
    from projects.depth_limit.pvar import order_ratio

    return order_ratio(weight_path(as_stack(w), beta), p, shuffles, seed).ratio


def order_ratio_table(groups: dict[int, list[tuple[str, np.ndarray]]], p: float, beta: float = 0.0,
                      shuffles: int = 16, seed: int = 0) -> dict[int, list[float]]:
    """{L: [layer_order_ratio of each run]} (the permutations are the same for every run of one L)."""
    return {L: [layer_order_ratio(w, p, beta, shuffles, seed) for _, w in runs] for L, runs in groups.items()}
