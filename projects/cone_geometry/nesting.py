"""Cone nesting statistics between consecutive student convolutions (Gamba et al. 2019; sections 0.3-0.5 of the
notes).

Every channel c of every filter of a student convolution is a ReLU "cone": weights w (k x k) and bias b.  A cone
is embedded in R^D, D = H W (the feature-map size of its block), by placing the kernel in the top-left corner of an
H x W zero image and flattening it row-major (for blocks smaller than the kernel the kernel wraps around, see
:func:`embedding`).  For two cones (w1, b1) and (w2, b2):

* apex:      t = -b / sum(w), the point where the hyperplane meets the identity line x = t 1;
             signed distance d = (t1 - t2) sqrt(D);
* opening:   alpha = arcsin(|cos theta|), cos theta = sum(w) / (|w| sqrt(D)) clipped to [-1, 1];
             normalized alpha_bar = 2 alpha / pi; opening offset alpha_bar1 - alpha_bar2;
* rotation:  u = the cone with the larger alpha (ties: u = cone 2), v = the other, Delta = |alpha1 - alpha2|;
             C = D x D circulant of u (row j = u cyclically shifted right by j); if Delta > 0,
             C <- R^-1 S R C with R the product of D-1 Givens rotations that maps 1/sqrt(D) onto e_{D-1} and
             S = I + cot(Delta) e_{D-1} e_0^T; rows of C and v normalized (zero rows left alone);
             rho = min_j arccos(<C_j, v_hat>), normalized rho_bar = 2 rho / pi.

Closed form of the rotation (what :func:`triple_nesting` computes; the literal construction is in the test oracle
``tests/cone_geometry/cone_reference.py``).  Only row 0 of R matters: every Givens rotation after the first leaves
row 0 alone, so e_0^T R = e_0^T G_0 = (e_0 - e_1)^T / sqrt(2), and R^T e_{D-1} = 1 / sqrt(D).  Hence

    R^-1 S R = I + beta 1 (e_0 - e_1)^T,   beta = cot(Delta) / sqrt(2 D),

a rank-one update: row j of the sheared circulant is C_j + beta delta with delta = C_0 - C_1.  With
X(j) = <C_j, v_hat> (a circular cross-correlation), A(m) = <u, shift_m u> (the circular autocorrelation), and
Y = X(0) - X(1):

    <C_j + beta delta, v_hat> = X(j) + beta Y
    |C_j + beta delta|^2      = A(0) + 2 beta (A(j) - A(j-1)) + beta^2 (2 A(0) - 2 A(1)).

The kernel has k^2 nonzeros in R^D, so X and A vanish outside the (at most (2k-1)^2) lags F = {p_b - p_a mod D}
of pairs of kernel positions, and A(j) - A(j-1) vanishes outside F u (F + 1): the minimum over all D rows is a
minimum over at most ~(2k-1)(2k) lags plus one "background" value shared by all other rows.  The cost per pair
of cones is O(k^4), independent of D.  Multiplying numerator and denominator by sin(Delta) > 0 keeps the formula
finite as Delta -> 0 (the Delta = 0 case has no shear, as in the definition).

All functions here are pure (arrays in, arrays out); float64 throughout.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from shared.errors import UsageError

# The four discrete states and their integer codes in the JSON (as the original constants.py).
OUT_PARTIAL_IN = 0
OUT_FULL_IN = 1
IN_PARTIAL_OUT = 2
IN_FULL_OUT = 3
STATE_NAMES: tuple[str, ...] = ("OUT_PARTIAL_IN", "OUT_FULL_IN", "IN_PARTIAL_OUT", "IN_FULL_OUT")
CONTINUOUS: tuple[str, ...] = ("distance", "opening", "rotation")

DEFAULT_CHUNK_ELEMENTS = 1 << 18  # float64 elements per (c, o, i, lag) work array: 2 MiB (stays in cache)


# --------------------------------------------------------------------------------------------------------------
# Embedding geometry


@dataclass(frozen=True, eq=False)  # hashed by identity (instances are cached by embedding())
class Embedding:
    """Where the k_h x k_w kernel lands in R^D and which circular lags matter (see the module docstring)."""

    size: tuple[int, int]
    kernel: tuple[int, int]
    D: int
    positions: np.ndarray  # (k2,) flat index of kernel entry (r, s)
    lags: np.ndarray  # F: sorted distinct lags p_b - p_a mod D
    pair_lag: np.ndarray  # (k2, k2) index into `lags` of lag(a, b) = p_b - p_a mod D
    grid: np.ndarray  # G = F u (F+1) u (F-1) mod D, sorted
    grid_in_F: np.ndarray  # (nG,) index of G_g in F, or len(F) (a zero column) if G_g is not in F
    grid_minus1_in_F: np.ndarray  # index of G_g - 1 in F, or len(F)
    grid_plus1_in_F: np.ndarray  # index of G_g + 1 in F, or len(F)
    g0: int  # index of lag 0 in G
    gp1: int  # index of lag +1 in G
    gm1: int  # index of lag -1 in G
    f0: int  # index of lag 0 in F
    f1: int  # index of lag 1 in F, or len(F)
    background: bool  # True when some lag of Z_D is not in G
    collisions: bool  # True when two kernel entries land on the same pixel (block smaller than the kernel)

    @property
    def k2(self) -> int:
        return int(self.positions.size)


@lru_cache(maxsize=64)
def embedding(size: tuple[int, int], kernel: tuple[int, int] = (3, 3)) -> Embedding:
    """The embedding of a kernel into an H x W block.

    Kernel entry (r, s) goes to pixel ((r mod H), (s mod W)), flat index (r mod H) W + (s mod W).  For H, W at
    least the kernel size this is exactly the original's top-left placement; for smaller blocks (the 2x2 last block
    of VGG11/13/16/19 on 32x32 inputs, where the original crashed) colliding entries add up, i.e. the kernel is
    laid on the torus.
    """
    h, w = int(size[0]), int(size[1])
    kh, kw = int(kernel[0]), int(kernel[1])
    if h < 1 or w < 1:
        raise UsageError(f"block size must be at least 1x1, got {h}x{w}; the input is too small for the network")
    D = h * w
    pos = np.array([(r % h) * w + (s % w) for r in range(kh) for s in range(kw)], dtype=np.int64)
    raw = (pos[None, :] - pos[:, None]) % D  # lag(a, b) = p_b - p_a
    lags = np.unique(raw)
    pair_lag = np.searchsorted(lags, raw)
    grid = np.unique(np.concatenate([lags, (lags + 1) % D, (lags - 1) % D]))
    nF = lags.size

    def index_in(values: np.ndarray, table: np.ndarray, missing: int) -> np.ndarray:
        idx = np.searchsorted(table, values)
        idx = np.minimum(idx, table.size - 1)
        return np.where(table[idx] == values, idx, missing)

    def one(v: int, table: np.ndarray, missing: int) -> int:
        return int(index_in(np.array([v % D]), table, missing)[0])

    return Embedding(
        size=(h, w), kernel=(kh, kw), D=D, positions=pos, lags=lags, pair_lag=pair_lag, grid=grid,
        grid_in_F=index_in(grid, lags, nF), grid_minus1_in_F=index_in((grid - 1) % D, lags, nF),
        grid_plus1_in_F=index_in((grid + 1) % D, lags, nF),
        g0=one(0, grid, -1), gp1=one(1, grid, -1), gm1=one(-1, grid, -1), f0=one(0, lags, nF),
        f1=one(1, lags, nF), background=grid.size < D, collisions=np.unique(pos).size < pos.size,
    )


@lru_cache(maxsize=64)
def _position_matrix(emb: Embedding) -> np.ndarray:
    """(k2, n_pixels) 0/1 matrix sending kernel entries to the distinct pixels they land on."""
    pixels, where = np.unique(emb.positions, return_inverse=True)
    m = np.zeros((emb.k2, pixels.size))
    m[np.arange(emb.k2), where.reshape(-1)] = 1.0
    return m


@lru_cache(maxsize=64)
def _lag_indicator(emb: Embedding) -> np.ndarray:
    """(k2 * k2, nF) 0/1 matrix: entry ((a, b), f) = [lag(a, b) == F_f]."""
    k2, nF = emb.k2, emb.lags.size
    ind = np.zeros((k2 * k2, nF))
    ind[np.arange(k2 * k2), emb.pair_lag.reshape(-1)] = 1.0
    return ind


@lru_cache(maxsize=64)
def _grid_indicator(emb: Embedding) -> np.ndarray:
    """(k2_b, k2_a * nG) 0/1 matrix: entry (b, (a, g)) = [lag(a, b) == G_g] (b first, for a single matmul)."""
    k2, nG = emb.k2, emb.grid.size
    lag_of_pair = emb.lags[emb.pair_lag]  # (a, b) -> lag value
    g_of_pair = np.searchsorted(emb.grid, lag_of_pair)  # every lag of F is in G
    ind = np.zeros((k2, k2, nG))
    a_idx, b_idx = np.meshgrid(np.arange(k2), np.arange(k2), indexing="ij")
    ind[b_idx.reshape(-1), a_idx.reshape(-1), g_of_pair.reshape(-1)] = 1.0
    return ind.reshape(k2, k2 * nG)


# --------------------------------------------------------------------------------------------------------------
# Per-cone quantities


@dataclass
class Cones:
    """Per-cone quantities for a batch of cones (any leading shape ``S``)."""

    apex: torch.Tensor  # S: t = -b / sum(w)
    alpha: torch.Tensor  # S: opening angle in radians, [0, pi/2]
    norm: torch.Tensor  # S: |w_tilde|
    auto0: torch.Tensor  # S: A(0) = |w_tilde|^2
    delta2: torch.Tensor  # S: |C_0 - C_1|^2 = 2 A(0) - 2 A(1)
    e_fwd: torch.Tensor  # S x nG: A(g) - A(g - 1)
    e_bwd: torch.Tensor  # S x nG: A(g) - A(g + 1)


def cone_stats(w: torch.Tensor, b: torch.Tensor, emb: Embedding, rotation: bool = True) -> Cones:
    """Per-cone apex, opening angle and (if ``rotation``) the autocorrelation terms; ``w`` is ``S x k_h x k_w``."""
    w = w.to(torch.float64)
    b = b.to(torch.float64)
    shape = w.shape[:-2]
    flat = w.reshape(-1, emb.k2)
    # the nonzero entries of the embedded vector (entries that land on the same pixel add up)
    values = flat @ torch.from_numpy(_position_matrix(emb)) if emb.collisions else flat
    total = values.sum(-1)
    apex = -b.reshape(-1) / total
    ind = torch.from_numpy(_lag_indicator(emb))
    auto = (flat[:, :, None] * flat[:, None, :]).reshape(flat.shape[0], -1) @ ind  # (n, nF)
    auto0 = (values * values).sum(-1)  # = A(0), computed as the literal squared norm
    norm = auto0.sqrt()
    # cosine between w_tilde and the identity direction, clipped; zero vectors give 0 (as the original)
    cos = torch.where(norm > 0, total / (norm * math.sqrt(emb.D)), torch.zeros_like(total)).clamp(-1.0, 1.0)
    alpha = 0.5 * math.pi - torch.arccos(cos)
    alpha = torch.where(cos <= 0, -alpha, alpha)
    nG = emb.grid.size
    if rotation:
        auto_ext = torch.cat([auto, torch.zeros_like(auto[:, :1])], dim=1)
        a_g = auto_ext[:, torch.from_numpy(emb.grid_in_F)]
        e_fwd = a_g - auto_ext[:, torch.from_numpy(emb.grid_minus1_in_F)]
        e_bwd = a_g - auto_ext[:, torch.from_numpy(emb.grid_plus1_in_F)]
        delta2 = (2.0 * auto0 - 2.0 * auto_ext[:, emb.f1]).clamp(min=0.0)
    else:
        e_fwd = e_bwd = torch.zeros(flat.shape[0], nG, dtype=torch.float64)
        delta2 = torch.zeros_like(auto0)
    return Cones(apex=apex.reshape(shape), alpha=alpha.reshape(shape), norm=norm.reshape(shape),
                 auto0=auto0.reshape(shape), delta2=delta2.reshape(shape),
                 e_fwd=e_fwd.reshape(*shape, nG), e_bwd=e_bwd.reshape(*shape, nG))


def _take(c: Cones, sl: tuple) -> Cones:
    return Cones(*(getattr(c, f)[sl] for f in ("apex", "alpha", "norm", "auto0", "delta2", "e_fwd", "e_bwd")))


# --------------------------------------------------------------------------------------------------------------
# Pairs of cones


def triple_nesting(w1: torch.Tensor, w2: torch.Tensor, c1: Cones, c2: Cones, emb: Embedding,
                   quick: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairwise statistics for cones 1 = ``w1[c, o]`` against cones 2 = ``w2[c, i]``, for all (c, o, i).

    ``w1``: ``(C, O, k_h, k_w)``, ``w2``: ``(C, I, k_h, k_w)``; ``c1`` / ``c2`` their :func:`cone_stats`.
    Returns (signed apex distance, opening offset, normalized rotation), each ``(C, O, I)``.
    """
    sqrt_d = math.sqrt(emb.D)
    distance = (c1.apex[:, :, None] - c2.apex[:, None, :]) * sqrt_d
    a1 = c1.alpha[:, :, None]
    a2 = c2.alpha[:, None, :]
    opening = (2.0 / math.pi) * a1 - (2.0 / math.pi) * a2
    if quick:
        return distance, opening, torch.zeros_like(distance)

    C, O = w1.shape[:2]
    I = w2.shape[1]
    k2, nG = emb.k2, emb.grid.size
    # K[c, o, i, g] = sum_m u1[m] u2[m + G_g]  (circular cross-correlation of the embedded kernels)
    t = torch.from_numpy(_grid_indicator(emb))  # (b, a * nG)
    z = (w2.reshape(C * I, k2).to(torch.float64) @ t).reshape(C, I, k2, nG).permute(0, 2, 1, 3)
    K = torch.bmm(w1.reshape(C, O, k2).to(torch.float64), z.reshape(C, k2, I * nG)).reshape(C, O, I, nG)

    swap = ~(a1 > a2)  # u = cone 2, v = cone 1 (the lags are then read backwards: X(j) = K(-j) / |w1|)
    delta = (a1 - a2).abs()
    no_shear = delta == 0
    s = torch.where(no_shear, torch.ones_like(delta), torch.sin(delta))
    g = torch.where(no_shear, torch.zeros_like(delta), torch.cos(delta) / math.sqrt(2.0 * emb.D))
    v_norm = torch.where(swap, c1.norm[:, :, None], c2.norm[:, None, :])
    inv_v = torch.where(v_norm > 0, 1.0 / v_norm, torch.zeros_like(v_norm))
    u_auto0 = torch.where(swap, c2.auto0[:, None, :], c1.auto0[:, :, None])
    u_delta2 = torch.where(swap, c2.delta2[:, None, :], c1.delta2[:, :, None])
    k0 = K[..., emb.g0]
    k1 = torch.where(swap, K[..., emb.gm1], K[..., emb.gp1])
    y = k0 - k1  # |v| * (X(0) - X(1))
    q = s * s * u_auto0 + g * g * u_delta2  # |row|^2 (times sin^2) where A(j) - A(j-1) = 0
    gy = g * y

    # maximize cos_j = num_j / sqrt(den2_j) through the increasing map x -> x |x|: f_j = num_j |num_j| / den2_j
    # (no square root per lag); zero rows have num = den2 = 0 and give 0, as a zero row in the definition.
    # den2_j = q + 2 s g E_j with E_j from u: A_u(j) - A_u(j-1) (no swap) or A_u(j) - A_u(j+1) (swap, lags
    # reversed); m in {0, 1} selects the term exactly (the other is multiplied by 0).
    m = swap.to(torch.float64)
    sg2 = 2.0 * s * g
    num = torch.addcmul(gy[..., None], K, s[..., None])
    den2 = torch.addcmul(q[..., None], (sg2 * (1.0 - m))[..., None], c1.e_fwd[:, :, None, :])
    den2.addcmul_((sg2 * m)[..., None], c2.e_bwd[:, None, :, :]).clamp_(min=1e-300)
    f = num.abs().mul_(num).div_(den2)
    best = f.amax(dim=-1)
    if emb.background:  # all rows whose lag is outside G share one value
        best = torch.maximum(best, gy * gy.abs() / q.clamp(min=1e-300))
    cos = (torch.sign(best) * best.abs().sqrt() * inv_v).clamp(-1.0, 1.0)
    rotation = torch.arccos(cos) * (2.0 / math.pi)
    return distance, opening, rotation


def pairwise_nesting(w1: Any, b1: Any, w2: Any, b2: Any, size: tuple[int, int], quick: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statistics of N independent pairs of cones: ``w1``, ``w2`` are ``(N, k, k)``, ``b1``, ``b2`` are ``(N,)``.

    Returns (signed apex distance d, opening offset alpha_bar1 - alpha_bar2, rho_bar), each ``(N,)``.
    """
    w1t, w2t = _as_tensor(w1), _as_tensor(w2)
    b1t, b2t = _as_tensor(b1).reshape(-1), _as_tensor(b2).reshape(-1)
    if w1t.ndim != 3 or w1t.shape != w2t.shape or b1t.shape[0] != w1t.shape[0] or b2t.shape != b1t.shape:
        raise UsageError("pairwise_nesting needs w1, w2 of shape (N, k, k) and b1, b2 of shape (N,)")
    emb = embedding(tuple(size), tuple(w1t.shape[-2:]))
    w1t, w2t = w1t[:, None], w2t[:, None]
    c1 = cone_stats(w1t, b1t[:, None], emb, rotation=not quick)
    c2 = cone_stats(w2t, b2t[:, None], emb, rotation=not quick)
    d, op, rot = triple_nesting(w1t, w2t, c1, c2, emb, quick=quick)
    return d.reshape(-1).numpy(), op.reshape(-1).numpy(), rot.reshape(-1).numpy()


def binary_state(apex_max: np.ndarray | torch.Tensor, opening_min: np.ndarray | torch.Tensor) -> np.ndarray:
    """The four states from A = max_i d_i and B = min_i (alpha_bar1 - alpha_bar2_i), as the original's if-chain.

    A >= 0 and B > 0: OUT_PARTIAL_IN (0); A >= 0 and not B > 0: OUT_FULL_IN (1);
    not A >= 0 and B >= 0: IN_FULL_OUT (3); otherwise IN_PARTIAL_OUT (2).  NaN compares false, as in Python.
    """
    a = np.asarray(apex_max)
    b = np.asarray(opening_min)
    out = np.where(a >= 0, np.where(b > 0, OUT_PARTIAL_IN, OUT_FULL_IN),
                   np.where(b >= 0, IN_FULL_OUT, IN_PARTIAL_OUT))
    return out.astype(np.int64)


@dataclass
class PairResult:
    """Statistics of one layer pair, each ``(n_L, n_{L+1})`` indexed [c, o] (c-major is the JSON order)."""

    distance: np.ndarray  # mean_i |d_i|
    opening: np.ndarray  # mean_i |alpha_bar1 - alpha_bar2_i|
    rotation: np.ndarray  # mean_i |rho_bar_i|
    state: np.ndarray  # int codes 0..3
    apex_max: np.ndarray  # A = max_i d_i
    opening_min: np.ndarray  # B = min_i (alpha_bar1 - alpha_bar2_i)

    FIELDS = ("distance", "opening", "rotation", "state", "apex_max", "opening_min")

    @staticmethod
    def concat(parts: Sequence["PairResult"]) -> "PairResult":
        return PairResult(*(np.concatenate([getattr(p, f) for p in parts], axis=0) for f in PairResult.FIELDS))


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def pair_nesting(w_next: Any, b_next: Any, w_prev: Any, b_prev: Any, size: tuple[int, int],
                 quick: bool = False, c_range: tuple[int, int] | None = None,
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> PairResult:
    """Statistics of one pair of consecutive student convolutions L, L+1 inside a block of size ``size``.

    ``w_next``: ``(n_L, n_{L+1}, k, k)``, entry [c, o] = channel c of filter o of layer L+1 (cone 1);
    ``b_next``: ``(n_L, n_{L+1})``.  ``w_prev``: ``(n_{L-1}, n_L, k, k)``, entry [i, c] = channel i of filter c
    of layer L (the cones 2_i compared with every cone 1 of channel c); ``b_prev``: ``(n_{L-1}, n_L)``.
    ``c_range`` restricts the computation to channels c in [start, stop) (the MPI split).  Work arrays hold at most
    about ``chunk_elements`` float64 values.
    """
    w1 = _as_tensor(w_next)
    b1 = _as_tensor(b_next)
    w2 = _as_tensor(w_prev)
    b2 = _as_tensor(b_prev)
    if w1.ndim != 4 or w2.ndim != 4 or w1.shape[-2:] != w2.shape[-2:]:
        raise UsageError(f"layer weights must be (n_in, n_out, k, k) with equal kernels, got {tuple(w1.shape)} "
                         f"and {tuple(w2.shape)}")
    if w1.shape[0] != w2.shape[1]:
        raise UsageError(f"layer L+1 has {w1.shape[0]} input channels but layer L has {w2.shape[1]} filters; "
                         "the two convolutions are not consecutive")
    if b1.shape != w1.shape[:2] or b2.shape != w2.shape[:2]:
        raise UsageError("biases must have one entry per (input channel, filter)")
    emb = embedding(tuple(size), tuple(w1.shape[-2:]))
    n_c, n_o = w1.shape[:2]
    lo, hi = (0, n_c) if c_range is None else (int(c_range[0]), int(c_range[1]))
    w2c = w2.permute(1, 0, 2, 3)  # (n_L, n_{L-1}, k, k): [c, i]
    b2c = b2.t()
    n_i = w2c.shape[1]
    if hi <= lo:
        empty = np.zeros((0, n_o))
        return PairResult(empty, empty.copy(), empty.copy(), np.zeros((0, n_o), np.int64), empty.copy(),
                          empty.copy())
    cones1 = cone_stats(w1[lo:hi], b1[lo:hi], emb, rotation=not quick)
    cones2 = cone_stats(w2c[lo:hi], b2c[lo:hi], emb, rotation=not quick)
    per_o = n_i * (1 if quick else emb.grid.size)
    o_step = max(1, min(n_o, chunk_elements // max(per_o, 1)))
    c_step = max(1, chunk_elements // max(per_o * n_o, 1)) if o_step == n_o else 1
    out = {f: np.empty((hi - lo, n_o)) for f in ("distance", "opening", "rotation", "apex_max", "opening_min")}
    for c0 in range(0, hi - lo, c_step):
        c1_ = min(hi - lo, c0 + c_step)
        for o0 in range(0, n_o, o_step):
            o1 = min(n_o, o0 + o_step)
            sl1 = (slice(c0, c1_), slice(o0, o1))
            sl2 = (slice(c0, c1_),)
            d, op, rot = triple_nesting(w1[lo + c0:lo + c1_, o0:o1], w2c[lo + c0:lo + c1_],
                                        _take(cones1, sl1), _take(cones2, sl2), emb, quick=quick)
            out["distance"][sl1] = d.abs().mean(-1).numpy()
            out["opening"][sl1] = op.abs().mean(-1).numpy()
            out["rotation"][sl1] = rot.abs().mean(-1).numpy()
            out["apex_max"][sl1] = _nan_max(d).numpy()
            out["opening_min"][sl1] = _nan_min(op).numpy()
    state = binary_state(out["apex_max"], out["opening_min"])
    return PairResult(out["distance"], out["opening"], out["rotation"], state, out["apex_max"],
                      out["opening_min"])


def _nan_max(x: torch.Tensor) -> torch.Tensor:
    """max over the last axis, NaN if any entry is NaN (numpy's np.max semantics, as the original)."""
    return torch.where(x.isnan().any(-1), torch.full_like(x[..., 0], float("nan")), x.amax(-1))


def _nan_min(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.isnan().any(-1), torch.full_like(x[..., 0], float("nan")), x.amin(-1))


# --------------------------------------------------------------------------------------------------------------
# Networks: blocks, pairs, the MPI split, JSON


@dataclass
class ConvLayer:
    """One student convolution as channel filters: weight ``(n_in, n_out, k, k)``, bias ``(n_in, n_out)``."""

    weight: np.ndarray  # the model's dtype (float32); the statistics convert to float64
    bias: np.ndarray

    @property
    def n_in(self) -> int:
        return int(self.weight.shape[0])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[1])


@dataclass
class Block:
    """The convolutions between two pooling layers, with the spatial size they work at."""

    index: int  # position of the block among all pooling blocks (0-based)
    size: tuple[int, int]
    convs: list[ConvLayer] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return [(k, k + 1) for k in range(len(self.convs) - 1)]


def conv_blocks(model: nn.Module, input_size: int | Sequence[int]) -> list[Block]:
    """Split a student network's ``features`` into pooling blocks of :class:`ConvLayer`.

    Every block is kept, including blocks with a single convolution (they have no pairs but still advance the
    spatial size and the channel count; the original's bookkeeping skipped them wrongly).
    """
    from projects.cone_geometry.models import StudentConv

    h, w = (input_size, input_size) if isinstance(input_size, int) else (int(input_size[0]), int(input_size[1]))
    features = getattr(model, "features", None)
    if features is None:
        raise UsageError("the network has no .features; nesting needs a Student_<arch> network of this project")
    blocks = [Block(0, (h, w))]
    for m in features.modules() if not isinstance(features, nn.Sequential) else features:
        if isinstance(m, StudentConv):
            if m.stride != (1, 1) or m.dilation != (1, 1) or 2 * m.padding[0] != m.kernel_size[0] - 1:
                raise UsageError("nesting supports stride-1 'same' student convolutions only")
            wt, bs = m.channel_filters()
            blocks[-1].convs.append(ConvLayer(wt.cpu().numpy().copy(), bs.cpu().numpy().copy()))
        elif isinstance(m, nn.Conv2d):
            raise UsageError("nesting needs a student network (per-channel cones); this is a teacher: distill a "
                             "Student_<arch> first or pass the student's snapshot")
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
            s = m.stride if isinstance(m.stride, int) else m.stride[0]
            p = m.padding if isinstance(m.padding, int) else m.padding[0]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            blocks.append(Block(len(blocks), (h, w)))
    return [b for b in blocks if b.convs]


def split_range(n: int, parts: int, rank: int) -> tuple[int, int]:
    """Contiguous near-equal split of range(n) into ``parts`` (sizes differ by at most 1); part ``rank``."""
    base, extra = divmod(n, parts)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def compute_pair(block: Block, pair: int, quick: bool = False, c_range: tuple[int, int] | None = None,
                 chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> PairResult:
    prev, nxt = block.convs[pair], block.convs[pair + 1]
    return pair_nesting(nxt.weight, nxt.bias, prev.weight, prev.bias, block.size, quick=quick, c_range=c_range,
                        chunk_elements=chunk_elements)


def network_nesting(blocks: Sequence[Block] | None, quick: bool = False, comm: Any = None,
                    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, threads: int | None = 1,
                    on_pair: Callable[[int, int, Block, float], None] | None = None
                    ) -> list[list[PairResult]] | None:
    """Statistics of every intra-block pair of a network: ``result[b][p]`` for the b-th block with pairs.

    With an MPI communicator of P ranks, ``blocks`` is needed on rank 0 only (it is broadcast); every pair's
    channels c are split into P contiguous near-equal ranges, rank r computes range r of every pair, and rank 0
    gathers and concatenates them in rank order (c-major, the original's order).  Any P works, including P larger
    than a layer's channel count.  Returns the result on rank 0 and None elsewhere.

    ``threads``: torch intra-op threads while computing (restored afterwards); the default 1 is fastest here
    (the work is split into cache-sized chunks; use MPI ranks for parallelism); None keeps the current setting.
    ``on_pair(block_position, pair, block, seconds)`` is called after each pair of this rank (progress reports).
    """
    if threads is None:
        return _network_nesting(blocks, quick, comm, chunk_elements, on_pair)
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        return _network_nesting(blocks, quick, comm, chunk_elements, on_pair)
    finally:
        torch.set_num_threads(before)


def _network_nesting(blocks: Sequence[Block] | None, quick: bool, comm: Any, chunk_elements: int,
                     on_pair: Callable[[int, int, Block, float], None] | None) -> list[list[PairResult]] | None:
    size, rank = (1, 0) if comm is None else (comm.Get_size(), comm.Get_rank())
    if size > 1:
        blocks = comm.bcast(blocks if rank == 0 else None, root=0)
    assert blocks is not None
    with_pairs = [b for b in blocks if len(b.convs) >= 2]
    mine: list[list[PairResult]] = []
    for bi, block in enumerate(with_pairs):
        row = []
        for p in range(len(block.pairs)):
            n_c = block.convs[p + 1].n_in
            t0 = time.perf_counter()
            row.append(compute_pair(block, p, quick=quick, c_range=split_range(n_c, size, rank),
                                    chunk_elements=chunk_elements))
            if on_pair is not None:
                on_pair(bi, p, block, time.perf_counter() - t0)
        mine.append(row)
    if size == 1:
        return mine
    gathered = comm.gather(mine, root=0)
    if rank != 0:
        return None
    return [[PairResult.concat([g[bi][p] for g in gathered]) for p in range(len(mine[bi]))]
            for bi in range(len(mine))]


def to_json(results: Sequence[Sequence[PairResult]], blocks: Sequence[Block], meta: dict[str, Any]) -> dict:
    """The original JSON schema: ``{name, arch, dataset, epoch, run, blocks: [{layer_pairs: [[{distance, opening,
    rotation, binary_nesting}, ...] (c-major), ...]}, ...]}``.  Blocks without pairs are left out, as in the
    original; each block also records its ``block`` index and ``input_size`` (extra keys)."""
    with_pairs = [b for b in blocks if len(b.convs) >= 2]
    out = {"name": str(meta.get("name", "")), "arch": str(meta.get("arch", "")),
           "dataset": str(meta.get("dataset", "")), "epoch": str(meta.get("epoch", "")),
           "run": str(meta.get("run", "")), "blocks": []}
    for k, v in meta.items():
        out.setdefault(k, v)
    for block, pairs in zip(with_pairs, results):
        layer_pairs = []
        for r in pairs:
            entries = [{"distance": float(d), "opening": float(o), "rotation": float(rt), "binary_nesting": int(s)}
                       for d, o, rt, s in zip(r.distance.reshape(-1), r.opening.reshape(-1),
                                              r.rotation.reshape(-1), r.state.reshape(-1))]
            layer_pairs.append(entries)
        out["blocks"].append({"layer_pairs": layer_pairs, "block": block.index, "input_size": list(block.size)})
    return out


def summarize(doc: dict) -> dict[str, float]:
    """State fractions/counts and continuous means per pair, per block and for the network, from a JSON doc.

    Keys: ``net/<stat>``, ``block<b>/<stat>``, ``block<b>_pair<p>/<stat>`` where ``<stat>`` is
    ``count_<STATE>``, ``frac_<STATE>`` (count / number of filter-channels), ``mean_distance``,
    ``mean_opening``, ``mean_rotation``, and ``n`` (number of filter-channels).  ``<b>`` is the position among the
    blocks with pairs (0-based), as in the original plots.
    """
    out: dict[str, float] = {}

    def add(prefix: str, entries: list[dict]) -> None:
        n = len(entries)
        out[f"{prefix}/n"] = float(n)
        states = np.array([e["binary_nesting"] for e in entries], dtype=np.int64)
        for code, name in enumerate(STATE_NAMES):
            cnt = float(np.sum(states == code))
            out[f"{prefix}/count_{name}"] = cnt
            out[f"{prefix}/frac_{name}"] = cnt / n if n else float("nan")
        for stat in CONTINUOUS:
            vals = np.array([e[stat] for e in entries], dtype=np.float64)
            out[f"{prefix}/mean_{stat}"] = float(vals.mean()) if n else float("nan")

    everything: list[dict] = []
    for b, block in enumerate(doc["blocks"]):
        block_entries: list[dict] = []
        for p, pair in enumerate(block["layer_pairs"]):
            add(f"block{b}_pair{p}", pair)
            block_entries += pair
        add(f"block{b}", block_entries)
        everything += block_entries
    add("net", everything)
    return out
