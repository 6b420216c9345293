"""Literal, obviously-correct constructions of the definitions, for tests and benchmarks (small sizes only).

Nothing here is fast: the rotation builds the D x D circulant, the product of D-1 Givens rotations (O(D^4)), its
inverse and the shear exactly as written in the definition; the student convolution loops over channels.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from projects.cone_geometry.nesting import (IN_FULL_OUT, IN_PARTIAL_OUT, OUT_FULL_IN, OUT_PARTIAL_IN)


def embed(w: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Place the kernel in the top-left corner of an H x W zero image (wrapping if it does not fit), flatten."""
    h, wd = size
    img = np.zeros((h, wd))
    kh, kw = w.shape
    for r in range(kh):
        for s in range(kw):
            img[r % h, s % wd] += w[r, s]
    return img.reshape(-1)


def unit(x: np.ndarray) -> np.ndarray:
    n = math.sqrt(float(np.sum(x * x)))
    return x if n == 0 else x / n


def opening_angle(w_tilde: np.ndarray) -> float:
    """alpha = pi/2 - arccos(<w_hat, 1_hat>) (clipped), negated when the cosine is <= 0: in [0, pi/2]."""
    ones = unit(np.ones_like(w_tilde))
    dot = float(np.dot(unit(w_tilde), ones))
    dot = min(1.0, max(-1.0, dot))
    alpha = 0.5 * math.pi - math.acos(dot)
    if dot <= 0:
        alpha = -alpha
    return alpha


def givens_product(D: int) -> np.ndarray:
    """R = G_{D-2} ... G_0; G_i rotates in the plane (i, i+1) so as to zero component i of the running vector."""
    prod = np.eye(D)
    x = np.ones(D) / math.sqrt(D)
    for i in range(D - 1):
        g = np.eye(D)
        length = math.hypot(x[i], x[i + 1])
        c, s = x[i + 1] / length, x[i] / length
        g[i:i + 2, i:i + 2] = [[c, -s], [s, c]]
        x = g @ x
        prod = g @ prod
    return prod


def circulant(u: np.ndarray) -> np.ndarray:
    """Row j is u cyclically shifted right by j."""
    return np.stack([np.roll(u, j) for j in range(u.size)])


def rotation_angle(u: np.ndarray, v: np.ndarray, delta: float) -> float:
    """min_j arccos(<row_j(R^-1 S R C(u)), v_hat>) with rows normalized; no shear when delta == 0."""
    D = u.size
    C = circulant(u)
    if delta > 0:
        R = givens_product(D)
        S = np.eye(D)
        S[D - 1, 0] = 1.0 / math.tan(delta)
        C = np.linalg.inv(R) @ S @ R @ C
    C = np.stack([unit(row) for row in C])
    dots = np.clip(C @ unit(v), -1.0, 1.0)
    return float(np.min(np.arccos(dots)))


def pairwise_nesting(w1: np.ndarray, b1: float, w2: np.ndarray, b2: float, size: tuple[int, int],
                     quick: bool = False) -> tuple[float, float, float]:
    """(signed apex distance, opening offset alpha_bar1 - alpha_bar2, rho_bar) for cones (w1, b1), (w2, b2)."""
    u1 = embed(np.asarray(w1, dtype=np.float64), size)
    u2 = embed(np.asarray(w2, dtype=np.float64), size)
    D = u1.size
    t1 = -float(b1) / float(np.sum(u1))
    t2 = -float(b2) / float(np.sum(u2))
    diff = (t1 - t2) * np.ones(D)
    dist = math.copysign(math.sqrt(float(np.sum(diff * diff))), t1 - t2) if t1 != t2 else 0.0
    a1, a2 = opening_angle(u1), opening_angle(u2)
    if quick:
        rho = 0.0
    else:
        u, v = (u1, u2) if a1 > a2 else (u2, u1)
        rho = rotation_angle(u, v, abs(a1 - a2))
    return dist, 2 * a1 / math.pi - 2 * a2 / math.pi, 2 * rho / math.pi


def state(distances: Sequence[float], openings: Sequence[float]) -> int:
    """The original if-chain on A = max distance and B = min opening offset."""
    A = max(distances)
    B = min(openings)
    if A >= 0:
        return OUT_PARTIAL_IN if B > 0 else OUT_FULL_IN
    return IN_FULL_OUT if B >= 0 else IN_PARTIAL_OUT


def pair_nesting(w_next: np.ndarray, b_next: np.ndarray, w_prev: np.ndarray, b_prev: np.ndarray,
                 size: tuple[int, int], quick: bool = False) -> list[dict]:
    """Loop version of nesting.pair_nesting: c-major list of {distance, opening, rotation, binary_nesting}."""
    n_c, n_o = w_next.shape[:2]
    n_i = w_prev.shape[0]
    out = []
    for c in range(n_c):
        for o in range(n_o):
            ds, ops, rots = [], [], []
            for i in range(n_i):
                d, op, rho = pairwise_nesting(w_next[c, o], b_next[c, o], w_prev[i, c], b_prev[i, c], size, quick)
                ds.append(d)
                ops.append(op)
                rots.append(rho)
            out.append({"distance": float(np.mean(np.abs(ds))), "opening": float(np.mean(np.abs(ops))),
                        "rotation": float(np.mean(np.abs(rots))), "binary_nesting": state(ds, ops)})
    return out


def student_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """O(o, i, j) = sum_c relu(b_{c,o} + conv(X_c, W_{c,o})), W_{c,o} = weight[c * n_out + o, 0]."""
    k = weight.shape[-1]
    outs = []
    for o in range(n_out):
        acc = 0
        for c in range(n_in):
            idx = c * n_out + o
            pre = F.conv2d(x[:, c:c + 1], weight[idx:idx + 1], bias[idx:idx + 1], padding=k // 2)
            acc = acc + torch.relu(pre)
        outs.append(acc)
    return torch.cat(outs, dim=1)
