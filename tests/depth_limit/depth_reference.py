"""Test oracles: literal, obviously-correct reference implementations of depth_limit's statistics.

Nothing here is fast: each function is the definition written out, for small inputs, so the fast versions in
``pvar``, ``models``, ``landscape``, ``paths`` and ``curvefit`` can be tested against it.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------------------------
# p-variation


def _points(path) -> np.ndarray:
    x = np.asarray(path, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return x.reshape(x.shape[0], -1)


def pvar_bruteforce(path, p: float) -> float:
    """max over every subset of interior points (2^(n-2) partitions) of sum |x_{t_{j+1}} - x_{t_j}|^p."""
    x = _points(path)
    n = x.shape[0]
    if n == 1:
        return 0.0
    best = -math.inf
    interior = range(1, n - 1)
    for r in range(n - 1):
        for subset in itertools.combinations(interior, r):
            idx = (0, *subset, n - 1)
            s = sum(float(np.linalg.norm(x[b] - x[a])) ** p for a, b in zip(idx[:-1], idx[1:]))
            best = max(best, s)
    return best


# the plain O(n^2) DP is user-facing (--pvar-method reference); it is checked against pvar_bruteforce
from projects.depth_limit.pvar import pvar_dp as pvar_reference  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------------------------
# depth-limit ResNet


def init_values_reference(init: str, L: int, alpha: float, gamma: float) -> list[float]:
    """The per-layer constant of the original's inits, one formula per name, written term by term."""
    beta = 1.0 - alpha
    s = 1.0 / gamma + beta
    m = 1.0 / (L ** s)

    def sgn(v):
        return -1.0 if v < 0 else 1.0

    out = []
    for i in range(L):
        if init in ("constant", "ntrunc"):
            out.append(m / 2)
        elif init == "lin_dec":
            out.append((L - i - 1) ** s * m ** 2)
        elif init == "lin_inc":
            out.append(i ** s * m ** 2)
        elif init == "quad":
            out.append(((L - i - 1) * i) ** s * m ** 3)
        elif init == "lin_dec_sym":
            out.append(sgn(L - 2 * (i - 1)) / 2 ** s * abs(L - 2 * (i - 1)) ** s * m ** 2)
        elif init == "lin_inc_sym":
            out.append(sgn(2 * i - L) / 2 ** s * abs(2 * i - L) ** s * m ** 2)
        else:
            raise ValueError(init)
    return out


def resnet_forward_reference(x, U_in, U_out, Ws, delta, act, augmentation: str):
    """One sample at a time, column vectors, one block at a time: the update rules of the original code.

    x: (B, in); U_in: (dim, in); U_out: (out, dim); Ws: list of L (dim, dim) matrices in PyTorch [out, in] layout.
    """
    outs = []
    for b in range(x.shape[0]):
        h = U_in @ x[b]
        prev_w = torch.zeros_like(Ws[0])
        for W in Ws:
            if augmentation == "skip":
                h = h + delta * act(W @ h)
            elif augmentation == "none":
                h = delta * act(W @ h)
            elif augmentation == "linear_skip":
                h = h + W @ act(h)
            elif augmentation == "inc_skip":
                # row form: h + act(h W_prev^T) (W - W_prev); as a column vector: (W - W_prev)^T act(W_prev h)
                h = h + (W - prev_w).T @ act(prev_w @ h)
                prev_w = W
            else:
                raise ValueError(augmentation)
        outs.append(U_out @ h)
    return torch.stack(outs)


def omega_reference(yhat: torch.Tensor, y: torch.Tensor, per_sample_loss, convention: str = "code") -> float:
    """Omega from per-sample gradients, each taken on its own.

    code:   (1/B) sum_i |g_i|^2 with g_i = d(mean_k l_k)/d yhat_i = (1/B) grad l_i  -> (1/B^3) sum_i |grad l_i|^2
    readme: (1/B) sum_i |grad l_i|^2
    """
    B = yhat.shape[0]
    total = 0.0
    for i in range(B):
        yi = yhat[i:i + 1].detach().clone().requires_grad_(True)
        li = per_sample_loss(yi, y[i:i + 1]).sum()
        (g,) = torch.autograd.grad(li, yi)
        total += float((g ** 2).sum())
    if convention == "code":
        return total / B ** 3
    return total / B


def macro_scores_reference(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy (micro and macro), macro precision and recall; classes absent from both pred and target are
    left out of the macro average (torchmetrics' rule)."""
    prec, rec = [], []
    for c in range(num_classes):
        tp = sum(1 for a, b in zip(pred, target) if a == c and b == c)
        fp = sum(1 for a, b in zip(pred, target) if a == c and b != c)
        fn = sum(1 for a, b in zip(pred, target) if a != c and b == c)
        if tp + fp + fn == 0:
            continue
        prec.append(tp / (tp + fp) if tp + fp else 0.0)
        rec.append(tp / (tp + fn) if tp + fn else 0.0)
    return {
        "accuracy_micro": sum(1 for a, b in zip(pred, target) if a == b) / len(target),
        "accuracy": sum(rec) / len(rec),
        "precision": sum(prec) / len(prec),
        "recall": sum(rec) / len(rec),
    }


# ---------------------------------------------------------------------------------------------------------------
# landscape


def surface_reference(loss_at, theta: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, steps: int) -> np.ndarray:
    """surface[i, j] = loss(theta + (j - steps//2) d1 + (i - steps//2) d2), one point at a time."""
    out = np.zeros((steps, steps))
    c = steps // 2
    for i in range(steps):
        for j in range(steps):
            out[i, j] = float(loss_at(theta + (j - c) * d1 + (i - c) * d2))
    return out


# ---------------------------------------------------------------------------------------------------------------
# curve fit preprocessing


def clean_series_reference(values, filter_period: int, window_size: int) -> tuple[list[int], list[float]]:
    """Index t = 1..n; drop t % filter_period == 0 (if > 0); split into n' // window_size contiguous nearly equal
    chunks (the first n' % k chunks one longer); in each chunk drop every value equal to its max or min."""
    ts = list(range(1, len(values) + 1))
    pairs = [(t, float(v)) for t, v in zip(ts, values)]
    if filter_period > 0:
        pairs = [(t, v) for t, v in pairs if t % filter_period != 0]
    if window_size < 1:
        return [t for t, _ in pairs], [v for _, v in pairs]
    k = len(pairs) // window_size
    base, extra = divmod(len(pairs), k)
    out = []
    start = 0
    for c in range(k):
        size = base + (1 if c < extra else 0)
        chunk = pairs[start:start + size]
        start += size
        hi = max(v for _, v in chunk)
        lo = min(v for _, v in chunk)
        out.extend((t, v) for t, v in chunk if v != hi and v != lo)
    return [t for t, _ in out], [v for _, v in out]
