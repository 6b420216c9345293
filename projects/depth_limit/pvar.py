"""Exact p-variation of a discrete path in R^d, and the partition that attains it.

For points x_0, ..., x_{n-1} and p >= 1,

    V_p(x) = max over 0 = t_0 < t_1 < ... < t_r = n-1 of  sum_j |x_{t_{j+1}} - x_{t_j}|^p,

with the Euclidean norm and both endpoints always in the partition (as rust-pvar, the library the original code
calls). We return V_p itself (not the p-th root) together with one maximising partition.

Every method computes the same dynamic programme as the plain O(n^2) reference
(``cum[j] = max_{m<j} cum[m] + |x_m - x_j|^p``, answer ``cum[n-1]``) and only skips candidates ``m`` that provably
cannot beat the best value found so far:

* ``p == 1``: the finest partition is optimal (triangle inequality), so V_1 is the sum of the increment norms.
* ``dense``: all pairwise squared distances of a block of rows from one matrix product (float64, on the centred
  path, clamped at 0; pairs that are close relative to their norms are recomputed exactly to avoid cancellation),
  then a numba max-plus DP that scans m downward and stops once ``cum[m] + max_{m' <= m} |x_m' - x_j|^p`` cannot beat
  the best value. Best for short, high-dimensional paths (network weights as a path over layers).
* ``tree``: the Korepanov-Lyons backbone DP. A dyadic tree keeps, for every aligned block of 2^k points, the centre
  of the block's bounding box and the radius of the ball around it that holds the block; scanning m downward, a whole
  block ending at m is skipped when ``d(centre, x_j) + radius <= (best - cum[m])^(1/p)`` (triangle inequality,
  ``cum`` non-decreasing). For d = 1 the bounding box is an interval, so the bound is exact, and the path is first
  reduced to its turning points (removing a point that lies between its neighbours never changes V_p for p >= 1).
  Best for long, low-dimensional paths.
* ``auto`` picks between them from (n, d).

The returned value is recomputed exactly from the returned partition, so ``value`` is always the p-variation sum of
``partition``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from shared.errors import UsageError

METHODS = ("auto", "dense", "tree", "reference")

# auto-selection thresholds (see benchmarks/depth_limit/bench_pvar.py for the measurements behind them): the
# tree's pruning degrades with the dimension, the dense method costs n^2 (d + a few) flops whatever the path
DENSE_MIN_DIM = 128  # d >= this: dense up to DENSE_MAX_N points
DENSE_MAX_N = 20000
TREE_MAX_DIM = 32  # 32 < d < DENSE_MIN_DIM: dense up to DENSE_MAX_N_MID_DIM points; d <= 32: always the tree
DENSE_MAX_N_MID_DIM = 1500
DENSE_BLOCK_ROWS = 256
DENSE_CHUNK = 16  # the dense DP skips aligned chunks of this many candidates at once  # rows of the distance matrix computed per matrix product (memory n * block * 8 bytes)
EXACT_RECOMPUTE_TOL = 1e-4  # recompute |x_m - x_j|^2 exactly when the Gram formula's value is below tol*(|x_m|^2+|x_j|^2)


@dataclass(frozen=True)
class PVariation:
    """Result of :func:`p_variation`: ``value`` is V_p (no root), ``partition`` the maximising indices."""

    value: float
    partition: np.ndarray
    p: float
    method: str

    @property
    def norm(self) -> float:
        """The p-variation norm ``V_p ** (1/p)``."""
        return float(self.value) ** (1.0 / self.p)


def as_path(path) -> np.ndarray:
    """Return ``path`` as a C-contiguous float64 array of shape (n, d).

    A 1-d input is n points on the line; inputs with more than two axes are flattened after the first one
    (a stack of L weight matrices becomes L points in R^(dim*dim)). Torch tensors are accepted. Complex points
    z in C^d are the points (Re z, Im z) of R^(2d): the Euclidean norm there is the modulus
    |z| = (sum_i |z_i|^2)^(1/2), so V_p is that of the complex path (never its real part alone)."""
    if hasattr(path, "detach"):
        t = path.detach().cpu()
        path = t.resolve_conj().numpy() if t.is_complex() else t.double().numpy()
    try:
        x = np.asarray(path)
        is_complex = np.iscomplexobj(x)
        x = x.astype(np.complex128 if is_complex else np.float64)
    except (TypeError, ValueError) as e:
        raise UsageError(f"the path must be a numeric array of shape (n, d); could not convert it ({e})") from None
    if x.ndim == 0:
        raise UsageError("the path must be an array of points of shape (n,) or (n, d); got a scalar")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0:
        raise UsageError("the path is empty; p-variation needs at least one point")
    if x.shape[1] == 0:
        raise UsageError("the path's points have dimension 0; pass points of shape (n, d) with d >= 1")
    if is_complex:
        x = np.concatenate([x.real, x.imag], axis=1)
    if not np.all(np.isfinite(x)):
        raise UsageError("the path contains NaN or infinite values; p-variation needs finite coordinates")
    return np.ascontiguousarray(x)


def check_p(p: float) -> float:
    try:
        p = float(p)
    except (TypeError, ValueError):
        raise UsageError(f"p must be a number >= 1, got {p!r}") from None
    if not (p >= 1.0) or not math.isfinite(p):
        raise UsageError(f"p must be a finite number >= 1 for the p-variation, got {p}; use p >= 1 (e.g. 2)")
    return p


def choose_method(n: int, d: int, p: float) -> str:
    """The method ``auto`` uses for a path of n points in R^d (thresholds measured in bench_pvar.py)."""
    if d >= DENSE_MIN_DIM and n <= DENSE_MAX_N:
        return "dense"
    if d > TREE_MAX_DIM and n <= DENSE_MAX_N_MID_DIM:
        return "dense"
    return "tree"


def pvar_dp(path, p: float) -> tuple[float, list[int]]:
    """The plain O(n^2) dynamic programme (``--pvar-method reference``): cum[0] = 0,
    cum[j] = max_{m<j} cum[m] + |x_m - x_j|^p; returns (cum[n-1], the optimal partition)."""
    x = as_path(path)
    n = x.shape[0]
    cum = np.zeros(n)
    prev = np.zeros(n, dtype=np.int64)
    for j in range(1, n):
        cand = cum[:j] + np.linalg.norm(x[:j] - x[j], axis=1) ** p
        m = int(np.argmax(cand))
        cum[j] = cand[m]
        prev[j] = m
    part = [n - 1]
    while part[-1] != 0:
        part.append(int(prev[part[-1]]))
    return float(cum[n - 1]), part[::-1]


def partition_sum(path, partition, p: float) -> float:
    """sum_j |x_{t_{j+1}} - x_{t_j}|^p over a partition, computed directly from differences."""
    x = as_path(path)
    idx = np.asarray(partition, dtype=np.int64)
    if idx.size < 2:
        return 0.0
    inc = np.diff(x[idx], axis=0)
    return float(np.sum(np.sqrt(np.einsum("ij,ij->i", inc, inc)) ** p))


def p_variation(path, p: float, *, method: str = "auto") -> PVariation:
    """Exact p-variation V_p (without the 1/p root) of ``path`` and one maximising partition.

    ``path``: array-like or tensor of shape (n,), (n, d) or (n, ...); ``p >= 1``; ``method`` in
    ``auto | dense | tree | reference``. Raises :class:`UsageError` for p < 1, an empty path or non-finite values.
    """
    p = check_p(p)
    if method not in METHODS:
        raise UsageError(f"unknown p-variation method {method!r}; use one of: {', '.join(METHODS)}")
    x = as_path(path)
    n, d = x.shape
    if n == 1:
        return PVariation(0.0, np.zeros(1, dtype=np.int64), p, "trivial")
    if method == "reference":
        value, part = pvar_dp(x, p)
        return PVariation(float(value), np.asarray(part, dtype=np.int64), p, "reference")
    if p == 1.0 and method == "auto":
        part = np.arange(n, dtype=np.int64)
        return PVariation(partition_sum(x, part, 1.0), part, p, "p1")
    if method == "auto":
        method = choose_method(n, d, p)
    if method == "dense":
        part = _dense_partition(x, p)
    else:
        part = _tree_partition(x, p)
    return PVariation(partition_sum(x, part, p), part, p, method)


# ---------------------------------------------------------------------------------------------------------------
# shared helpers


@njit(cache=True)
def _backtrack(prev):
    n = prev.shape[0]
    count = 1
    j = n - 1
    while j > 0:
        j = prev[j]
        count += 1
    out = np.empty(count, dtype=np.int64)
    j = n - 1
    k = count - 1
    while True:
        out[k] = j
        if j == 0:
            break
        j = prev[j]
        k -= 1
    return out


@njit(cache=True, inline="always")
def _powh(d2, p):
    """(d2)^(p/2) for a squared distance d2 >= 0."""
    if p == 2.0:
        return d2
    if p == 4.0:
        return d2 * d2
    if d2 == 0.0:
        return 0.0
    return d2 ** (0.5 * p)


# ---------------------------------------------------------------------------------------------------------------
# dense method


@njit(cache=True)
def _dense_block(G, sq, X, cum, prev, j0, p, tol, d2row, pmax, bmax):
    """DP for rows j0 .. j0 + G.shape[0] - 1, given G[r, m] = <x_{j0+r}, x_m> for m < j0 + G.shape[0].

    Per row: squared distances d2[m] (exact where the Gram formula cancels), their prefix maxima and the maxima
    of aligned chunks of DENSE_CHUNK entries. Scanning m downward, a chunk ending at m is skipped when
    cum[m] + max(chunk)^(p/2) <= best, and the scan stops when cum[m] + prefix_max[m]^(p/2) <= best (cum is
    non-decreasing, so no earlier m can do better)."""
    nb = G.shape[0]
    dim = X.shape[1]
    C = DENSE_CHUNK
    for r in range(nb):
        j = j0 + r
        sj = sq[j]
        running = 0.0
        cmax = 0.0
        for m in range(j):
            v = sq[m] + sj - 2.0 * G[r, m]
            if v < tol * (sq[m] + sj):
                acc = 0.0
                for k in range(dim):
                    t = X[m, k] - X[j, k]
                    acc += t * t
                v = acc
            elif v < 0.0:
                v = 0.0
            d2row[m] = v
            if v > running:
                running = v
            pmax[m] = running
            if v > cmax:
                cmax = v
            if (m + 1) % C == 0:
                bmax[m // C] = cmax
                cmax = 0.0
        best = cum[j - 1] + _powh(d2row[j - 1], p)
        arg = j - 1
        bound_d2 = pmax[j - 1]
        bound = _powh(bound_d2, p)
        m = j - 2
        while m >= 0:
            cm = cum[m]
            if cm + bound <= best:
                pm = pmax[m]
                if pm < 0.5 * bound_d2:
                    bound_d2 = pm
                    bound = _powh(pm, p)
                    continue  # re-test with the tighter bound
                break
            if (m + 1) % C == 0 and m + 1 >= C:
                if cm + _powh(bmax[m // C], p) <= best:
                    m -= C
                    continue
            v = d2row[m]
            if v > 0.0:
                val = cm + _powh(v, p)
                if val > best:
                    best = val
                    arg = m
            m -= 1
        cum[j] = best
        prev[j] = arg


def _dense_partition(x: np.ndarray, p: float) -> np.ndarray:
    n, _ = x.shape
    xc = np.ascontiguousarray(x - x.mean(axis=0))
    sq = np.einsum("ij,ij->i", xc, xc)
    cum = np.zeros(n)
    prev = np.full(n, -1, dtype=np.int64)
    d2row = np.empty(n)
    pmax = np.empty(n)
    bmax = np.empty(n // DENSE_CHUNK + 1)
    for j0 in range(1, n, DENSE_BLOCK_ROWS):
        j1 = min(n, j0 + DENSE_BLOCK_ROWS)
        G = xc[j0:j1] @ xc[:j1].T
        _dense_block(np.ascontiguousarray(G), sq, xc, cum, prev, j0, p, EXACT_RECOMPUTE_TOL, d2row, pmax, bmax)
    return _backtrack(prev)


# ---------------------------------------------------------------------------------------------------------------
# dyadic-tree method (Korepanov-Lyons backbone, bounding-box centres)


@njit(cache=True)
def _build_tree(X, K):
    """Centres and radii of all aligned blocks of 2^k points, k = 1..K; level k starts at offsets[k]."""
    n, dim = X.shape
    offsets = np.zeros(K + 2, dtype=np.int64)
    total = 0
    for k in range(1, K + 1):
        offsets[k] = total
        total += n >> k
    offsets[K + 1] = total
    centres = np.empty((max(total, 1), dim))
    radii = np.empty(max(total, 1))
    lo = np.empty(dim)
    hi = np.empty(dim)
    for k in range(1, K + 1):
        size = 1 << k
        for b in range(n >> k):
            s = b * size
            for c in range(dim):
                lo[c] = X[s, c]
                hi[c] = X[s, c]
            for i in range(s + 1, s + size):
                for c in range(dim):
                    v = X[i, c]
                    if v < lo[c]:
                        lo[c] = v
                    elif v > hi[c]:
                        hi[c] = v
            idx = offsets[k] + b
            for c in range(dim):
                centres[idx, c] = 0.5 * (lo[c] + hi[c])
            r2 = 0.0
            for i in range(s, s + size):
                acc = 0.0
                for c in range(dim):
                    t = X[i, c] - centres[idx, c]
                    acc += t * t
                if acc > r2:
                    r2 = acc
            # a hair of slack so that rounding can never make the bound too small
            radii[idx] = math.sqrt(r2) * (1.0 + 1e-12)
    return centres, radii, offsets


@njit(cache=True, inline="always")
def _dist(A, i, B, j):
    acc = 0.0
    for c in range(A.shape[1]):
        t = A[i, c] - B[j, c]
        acc += t * t
    return math.sqrt(acc)


@njit(cache=True)
def _tree_dp(X, p, centres, radii, offsets, K):
    n = X.shape[0]
    cum = np.zeros(n)
    prev = np.full(n, -1, dtype=np.int64)
    invp = 1.0 / p
    for j in range(1, n):
        best = cum[j - 1] + _dist(X, j - 1, X, j) ** p
        arg = j - 1
        m = j - 2
        while m >= 0:
            delta = (best - cum[m]) ** invp
            kk = 0
            k = 1
            while k <= K and ((m + 1) & ((1 << k) - 1)) == 0:
                idx = offsets[k] + ((m + 1) >> k) - 1
                if _dist(centres, idx, X, j) + radii[idx] <= delta:
                    kk = k
                    k += 1
                else:
                    break
            if kk > 0:
                m -= 1 << kk
                continue
            dm = _dist(X, m, X, j)
            if dm > delta:
                val = cum[m] + dm ** p
                if val > best:
                    best = val
                    arg = m
            m -= 1
        cum[j] = best
        prev[j] = arg
    return prev


@njit(cache=True)
def _turning_points(x):
    """Indices of the 1-d path after repeatedly deleting interior points that lie between their neighbours.

    Deleting such a point never changes V_p for p >= 1: a partition using it either has both adjacent increments
    of one sign (merge them: |a+b|^p >= |a|^p + |b|^p) or can move it to the neighbour that is further out."""
    n = x.shape[0]
    keep = np.empty(n, dtype=np.int64)
    top = 0
    keep[0] = 0
    for i in range(1, n):
        v = x[i]
        while top >= 1:
            a = x[keep[top - 1]]
            b = x[keep[top]]
            if (a <= b <= v) or (a >= b >= v):
                top -= 1
            else:
                break
        top += 1
        keep[top] = i
    # the last point must stay; it is keep[top] by construction
    return keep[: top + 1].copy()


@njit(cache=True)
def _tree_dp_1d(x, p, lo, hi, offsets, K):
    """The tree DP on the line: a block is an interval [lo, hi], so the distance bound is exact."""
    n = x.shape[0]
    cum = np.zeros(n)
    prev = np.full(n, -1, dtype=np.int64)
    invp = 1.0 / p
    for j in range(1, n):
        xj = x[j]
        best = cum[j - 1] + abs(x[j - 1] - xj) ** p
        arg = j - 1
        m = j - 2
        while m >= 0:
            delta = (best - cum[m]) ** invp
            kk = 0
            k = 1
            while k <= K and ((m + 1) & ((1 << k) - 1)) == 0:
                idx = offsets[k] + ((m + 1) >> k) - 1
                far = max(xj - lo[idx], hi[idx] - xj)
                if far <= delta:
                    kk = k
                    k += 1
                else:
                    break
            if kk > 0:
                m -= 1 << kk
                continue
            dm = abs(x[m] - xj)
            if dm > delta:
                val = cum[m] + dm ** p
                if val > best:
                    best = val
                    arg = m
            m -= 1
        cum[j] = best
        prev[j] = arg
    return prev


@njit(cache=True)
def _build_intervals(x, K):
    n = x.shape[0]
    offsets = np.zeros(K + 2, dtype=np.int64)
    total = 0
    for k in range(1, K + 1):
        offsets[k] = total
        total += n >> k
    offsets[K + 1] = total
    lo = np.empty(max(total, 1))
    hi = np.empty(max(total, 1))
    # level 1 from the points, level k from its two children at level k-1
    for b in range(n >> 1):
        a = x[2 * b]
        c = x[2 * b + 1]
        lo[b] = min(a, c)
        hi[b] = max(a, c)
    for k in range(2, K + 1):
        for b in range(n >> k):
            i1 = offsets[k - 1] + 2 * b
            idx = offsets[k] + b
            lo[idx] = min(lo[i1], lo[i1 + 1])
            hi[idx] = max(hi[i1], hi[i1 + 1])
    return lo, hi, offsets


def _levels(n: int) -> int:
    return max(1, int(math.floor(math.log2(n)))) if n >= 2 else 1


def _tree_partition(x: np.ndarray, p: float) -> np.ndarray:
    n, d = x.shape
    if d == 1:
        line = np.ascontiguousarray(x[:, 0])
        keep = _turning_points(line)
        y = np.ascontiguousarray(line[keep])
        if y.shape[0] == 1:
            return np.array([0, n - 1], dtype=np.int64) if n > 1 else np.zeros(1, dtype=np.int64)
        K = _levels(y.shape[0])
        lo, hi, offsets = _build_intervals(y, K)
        prev = _tree_dp_1d(y, p, lo, hi, offsets, K)
        return keep[_backtrack(prev)]
    K = _levels(n)
    centres, radii, offsets = _build_tree(x, K)
    prev = _tree_dp(x, p, centres, radii, offsets, K)
    return _backtrack(prev)


def warmup() -> float:
    """Compile (or load from the numba cache) every kernel; returns the seconds it took."""
    import time

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for d in (1, 3):
        x = rng.standard_normal((40, d)).cumsum(axis=0)
        for p in (2.0, 2.5):
            _tree_partition(x, p)
            _dense_partition(x, p)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# the same points without their order (a scale-free statistic and its null)


@dataclass(frozen=True)
class OrderRatio:
    """Result of :func:`order_ratio`: ``ordered`` = V_p(x)^(1/p) of the path, ``shuffled`` = V_p(x_pi)^(1/p) of the
    same points in each random order pi, ``ratio`` = ordered / mean(shuffled)."""

    ratio: float
    ordered: float
    shuffled: np.ndarray
    p: float


def shuffled_p_variations(path, p: float, shuffles: int = 16, seed: int = 0, *, method: str = "auto") -> np.ndarray:
    """V_p(x_pi)^(1/p) for ``shuffles`` random orders pi of the path's points (``numpy.random.default_rng(seed)``):
    the p-variation norm the same points have once their order is forgotten (an exchangeable path of the same
    values). The permutations depend only on (n, shuffles, seed), so two paths of the same length are shuffled alike."""
    if int(shuffles) < 1:
        raise UsageError(f"shuffles must be >= 1, got {shuffles}")
    x = as_path(path)
    rng = np.random.default_rng(seed)
    return np.array([p_variation(x[rng.permutation(x.shape[0])], p, method=method).norm for _ in range(int(shuffles))])


def order_ratio(path, p: float, shuffles: int = 16, seed: int = 0, *, method: str = "auto") -> OrderRatio:
    """V_p(x)^(1/p) over the mean of :func:`shuffled_p_variations`: scale-free (the same for c x, c != 0); about 1
    when the points are exchangeable (i.i.d. layers), and about n^(-1/p) times a constant when the path has a
    bounded p-variation relative to its spread (a regular path: the shuffled points' p-variation grows like
    n^(1/p), the ordered path's does not). nan for a constant path (0 / 0)."""
    x = as_path(path)
    ordered = p_variation(x, p, method=method).norm
    shuffled = shuffled_p_variations(x, p, shuffles, seed, method=method)
    mean = float(shuffled.mean())
    return OrderRatio(ordered / mean if mean > 0 else math.nan, float(ordered), shuffled, float(p))
