"""Skew-normal redistributions of a VGG's total feature budget (Mundt et al., "Rethinking layer-wise feature amounts").

The original code (``SkewNormalModels``) takes the layer widths of VGG-D (or VGG-``depth``), sums them to a budget
``T`` and redistributes ``T`` over the same number of layers following a skew-normal density over the layer index.
Everything here is a pure function of its arguments (no I/O):

* :func:`base_widths` -- the unmodified VGG widths (conv layers and the two hidden linear layers);
* :func:`skewnormal_pdf` -- f(x) = (2/w) phi((x-m)/w) Phi(a (x-m)/w);
* :func:`layer_bins` -- per-layer probability mass: trapezoid rule over the 100 grid points in [i, i + 0.99];
* :func:`generate_variants` -- the grid (mean outermost, then scale, then skew), the 95 % mass rule, widths
  ``ceil(bin * T)`` and the 2-filter minimum, in the original order (that order defines the variant index);
* :func:`capacity` -- the original's "Parameters" column (its own formula, not the true parameter count);
* :func:`select_variants` -- index range and mean / scale / skew filters for sweeps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
from scipy.special import ndtr

from shared.errors import UsageError

#: The original grid (``lib/Models/skew_normal_models.py``): scale 0, 0.5, ..., 5.5 and skew -40, -36, ..., 40.
SCALES: tuple[float, ...] = tuple(0.5 * k for k in range(12))
SKEWS: tuple[int, ...] = tuple(range(-40, 41, 4))
#: Points per unit of layer index on which the density is evaluated (x = 0, 0.01, ...).
POINTS_PER_LAYER = 100
#: A variant is kept only if more than 1 - MASS_TOLERANCE of the density falls inside [0, number of layers).
MASS_TOLERANCE = 0.05
#: Every layer of a valid variant has at least this many features (``min_layer_filters`` in the original).
MIN_LAYER_FILTERS = 2


def check_depth(depth: int) -> int:
    """Return the number of conv layers per block 3..5 (``(depth - 7) / 3``); UsageError unless it is a positive integer."""
    if not isinstance(depth, (int, np.integer)) or depth < 10 or (depth - 7) % 3 != 0:
        raise UsageError(f"--vgg-depth must be 7 + 3k with k >= 1 (10, 13, 16 = VGG-D, 19 = VGG-E, ...), got {depth}")
    return (int(depth) - 7) // 3


def fc_width(patch_size: int) -> int:
    """Width of the two hidden linear layers in the original: 512 for patches up to 100 px, else 4096."""
    if patch_size < 1:
        raise UsageError(f"--patch-size must be a positive number of pixels, got {patch_size}")
    return 512 if patch_size <= 100 else 4096


def base_widths(depth: int = 16, patch_size: int = 32) -> list[int]:
    """The unmodified VGG widths: [64, 64, 128, 128] + lpb x 256 + 2 lpb x 512 + 2 x F (length depth - 1)."""
    lpb = check_depth(depth)
    f = fc_width(patch_size)
    return [64, 64, 128, 128] + lpb * [256] + 2 * lpb * [512] + 2 * [f]


def skewnormal_pdf(x: np.ndarray, mean: float, scale: float, skew: float) -> np.ndarray:
    """Skew-normal density (2/scale) phi(z) Phi(skew z), z = (x - mean)/scale; broadcasts over its arguments."""
    x = np.asarray(x, dtype=np.float64)
    z = (x - mean) / scale
    phi = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return 2.0 / scale * phi * ndtr(skew * z)


def grid_points(num_layers: int) -> np.ndarray:
    """x = 0, 0.01, ..., num_layers - 0.01 (computed as k/100 so that every point is the nearest double)."""
    return np.arange(num_layers * POINTS_PER_LAYER, dtype=np.float64) / POINTS_PER_LAYER


def layer_bins(density: np.ndarray, num_layers: int) -> np.ndarray:
    """Per-layer mass: the trapezoid rule over the 100 points of each layer ([i, i+0.99], step 0.01).

    ``density`` has shape (..., num_layers * 100); the result has shape (..., num_layers). Like the original, the
    sliver [i + 0.99, i + 1) between two layers is not counted.
    """
    d = np.asarray(density, dtype=np.float64).reshape(*np.shape(density)[:-1], num_layers, POINTS_PER_LAYER)
    h = 1.0 / POINTS_PER_LAYER
    return h * (d.sum(axis=-1) - 0.5 * (d[..., 0] + d[..., -1]))


def capacity(widths: Sequence[float], num_classes: int) -> int:
    """The original's "Parameters": 27 w0 + sum 9 w_{i-1} w_i (convs) + the three linear layers (no biases, no BN).

    It assumes 3 input channels and a 1x1 map after the last pool (32-px inputs), as the original did; the true
    parameter count of a built model is :func:`projects.feature_amounts.models.count_parameters`.
    """
    w = [int(v) for v in widths]
    b = len(w)
    if b < 4:
        raise UsageError(f"a VGG width list needs at least 4 entries, got {b}")
    total = 27 * w[0]
    for i in range(1, b - 2):  # conv layers 1 .. B-3
        total += 9 * w[i - 1] * w[i]
    total += w[b - 3] * w[b - 2] + w[b - 2] * w[b - 1] + w[b - 1] * num_classes
    return total


@dataclass(frozen=True)
class Variant:
    """One architecture of the sweep. ``index`` is its position in the original's loop order (stable)."""

    index: int
    mean: float
    scale: float
    skew: float
    widths: tuple[int, ...]
    bins: tuple[float, ...] = field(repr=False)
    depth: int = 16
    patch_size: int = 32
    budget: int = 5248
    width_multiplier: float = 1.0

    @property
    def id(self) -> str:
        """Stable id, e.g. ``v000_m0_s4.0_a8``: index plus (mean, scale, skew)."""
        return variant_id(self.index, self.mean, self.scale, self.skew)

    @property
    def mass(self) -> float:
        return float(sum(self.bins))

    def capacity(self, num_classes: int) -> int:
        return capacity(self.widths, num_classes)


def variant_id(index: int, mean: float, scale: float, skew: float) -> str:
    return f"v{int(index):03d}_m{_fmt(mean)}_s{float(scale):.1f}_a{_fmt(skew)}"


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def widths_from_bins(bins: Sequence[float], budget: float, width_multiplier: float = 1.0,
                     min_filters: int = MIN_LAYER_FILTERS) -> tuple[int, ...]:
    """ceil(bin * budget * multiplier), floored at ``min_filters`` when the multiplier shrinks the budget.

    At multiplier 1 the floor never binds for a valid variant (validity requires every width >= ``min_filters``).
    """
    if not width_multiplier > 0:
        raise UsageError(f"--width-multiplier must be > 0 (e.g. 0.05 for quick runs), got {width_multiplier}")
    scaled = budget * width_multiplier
    return tuple(max(min_filters, math.ceil(b * scaled)) for b in bins)


def generate_variants(depth: int = 16, patch_size: int = 32, width_multiplier: float = 1.0,
                      min_filters: int = MIN_LAYER_FILTERS, mass_tolerance: float = MASS_TOLERANCE) -> list[Variant]:
    """All valid variants in the original order: mean 0..B (outer), scale 0..5.5 (middle), skew -40..40 (inner).

    Validity is always decided at the full budget (multiplier 1), as in the original, so a variant has the same
    index and id whatever ``width_multiplier`` is; the multiplier only scales the widths that are built.
    """
    base = base_widths(depth, patch_size)
    b = len(base)
    budget = sum(base)
    x = grid_points(b)
    means = np.arange(b + 1, dtype=np.float64)
    scales = np.asarray(SCALES[1:])  # scale 0 is skipped (a degenerate density; the original marks it invalid)
    skews = np.asarray(SKEWS, dtype=np.float64)
    m, s, a = np.meshgrid(means, scales, skews, indexing="ij")  # (mean, scale, skew) order = the original loops
    dens = skewnormal_pdf(x[None, None, None, :], m[..., None], s[..., None], a[..., None])
    bins = layer_bins(dens, b)  # (means, scales, skews, B)
    out: list[Variant] = []
    for i, mu in enumerate(means):
        for j, sc in enumerate(scales):
            for k, sk in enumerate(skews):
                bn = bins[i, j, k]
                if not bn.sum() > 1.0 - mass_tolerance:
                    continue
                full = [math.ceil(v * budget) for v in bn]
                if min(full) < min_filters:
                    continue
                out.append(Variant(index=len(out), mean=float(mu), scale=float(sc), skew=float(sk),
                                   widths=widths_from_bins(bn, budget, width_multiplier, min_filters),
                                   bins=tuple(float(v) for v in bn), depth=depth, patch_size=patch_size,
                                   budget=budget, width_multiplier=float(width_multiplier)))
    return out


def make_variant(mean: float, scale: float, skew: float, depth: int = 16, patch_size: int = 32,
                 width_multiplier: float = 1.0, index: int = -1) -> Variant:
    """A single variant at any (mean, scale, skew), e.g. for an optimizer; validity is *not* enforced here.

    Use :func:`check_valid` to apply the original's rules.
    """
    if not scale > 0:
        raise UsageError(f"the skew-normal scale must be > 0, got {scale}")
    base = base_widths(depth, patch_size)
    b = len(base)
    budget = sum(base)
    bn = layer_bins(skewnormal_pdf(grid_points(b), mean, scale, skew), b)
    return Variant(index=index, mean=float(mean), scale=float(scale), skew=float(skew),
                   widths=widths_from_bins(bn, budget, width_multiplier), bins=tuple(float(v) for v in bn),
                   depth=depth, patch_size=patch_size, budget=budget, width_multiplier=float(width_multiplier))


def invalid_reason(v: Variant, min_filters: int = MIN_LAYER_FILTERS, mass_tolerance: float = MASS_TOLERANCE) -> str | None:
    """Why the original would reject ``v`` (None if it is valid)."""
    if not v.mass > 1.0 - mass_tolerance:
        return f"only {v.mass:.3f} of the density lies inside the {len(v.bins)} layers (needs > {1 - mass_tolerance})"
    full = [math.ceil(x * v.budget) for x in v.bins]
    if min(full) < min_filters:
        return f"a layer gets {min(full)} features at full budget (needs >= {min_filters})"
    return None


def invalid_amount(v: Variant, min_filters: int = MIN_LAYER_FILTERS, mass_tolerance: float = MASS_TOLERANCE) -> float:
    """How far ``v`` is from the original's rules: 0 when it is valid, else > 0 and growing with the missing density
    mass and the missing features of its narrowest layer (relative to what the rules need). A sweep's sampler uses
    it as a constraint value, to move towards valid points."""
    if invalid_reason(v, min_filters, mass_tolerance) is None:
        return 0.0
    need_mass = 1.0 - mass_tolerance
    mass = max(0.0, need_mass - v.mass) / need_mass  # valid: mass > 1 - tol
    narrow = max(0.0, (min_filters - 1) - min(v.bins) * v.budget) / max(min_filters - 1, 1)  # valid: ceil(x*B) >= min
    return mass + narrow + 1e-3  # > 0 also exactly on the border


def select_variants(variants: Sequence[Variant], start: int = 0, stop: int | None = None,
                    means: Iterable[float] | None = None, scales: Iterable[float] | None = None,
                    skews: Iterable[float] | None = None, ids: Iterable[int] | None = None) -> list[Variant]:
    """Variants with ``start <= index < stop`` whose mean / scale / skew are in the given sets (None = any)."""
    n = len(variants)
    if start < 0 or (stop is not None and stop < start):
        raise UsageError(f"bad variant range {start}:{stop}; use 0 <= --start <= --stop (there are {n} variants)")
    if start >= n and n:
        raise UsageError(f"--start {start} is past the last variant (there are {n}, indices 0..{n - 1})")
    sets = [None if s is None else {float(v) for v in s} for s in (means, scales, skews)]
    idset = None if ids is None else {int(i) for i in ids}
    out = []
    for v in variants:
        if v.index < start or (stop is not None and v.index >= stop):
            continue
        if idset is not None and v.index not in idset:
            continue
        if any(s is not None and val not in s for s, val in zip(sets, (v.mean, v.scale, v.skew))):
            continue
        out.append(v)
    return out


# ------------------------------------------------------------------------------------------------------------------
# Where a network's features are (added for the study; pure, and none of the above depends on them)


def third(num_layers: int) -> int:
    """The number of layers in a third of a width list: ``num_layers / 3`` (15 -> 5 for VGG-16), at least 1."""
    if num_layers < 1:
        raise UsageError(f"a width list needs at least one layer, got {num_layers}")
    return max(1, int(round(num_layers / 3)))


def budget_share(widths: Sequence[float], where: str = "first", layers: int | None = None) -> float:
    """The share of a network's features (the sum of its widths) in its first (``where="first"``) or last
    (``"last"``) ``layers`` layers, default a third of them: VGG-16 puts 12 % of its features in layers 0-4."""
    w = np.asarray(widths, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not (w >= 0).all() or w.sum() <= 0:
        raise UsageError(f"widths must be a non-empty list of non-negative numbers with a positive sum, got {widths}")
    if where not in ("first", "last"):
        raise UsageError(f"where must be 'first' or 'last', got {where!r}")
    k = third(w.size) if layers is None else int(layers)
    if not 1 <= k <= w.size:
        raise UsageError(f"layers must be in 1..{w.size}, got {k}")
    part = w[:k] if where == "first" else w[w.size - k:]
    return float(part.sum() / w.sum())


def centre_of_mass(widths: Sequence[float]) -> float:
    """The layer index (0-based) at the centre of a network's features: sum(i w_i) / sum(w_i) (VGG-16: 9.06)."""
    w = np.asarray(widths, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not (w >= 0).all() or w.sum() <= 0:
        raise UsageError(f"widths must be a non-empty list of non-negative numbers with a positive sum, got {widths}")
    return float((w * np.arange(w.size)).sum() / w.sum())


def proportional_widths(base: Sequence[float], total: int, min_filters: int = MIN_LAYER_FILTERS) -> tuple[int, ...]:
    """Integer widths proportional to ``base`` that sum to exactly ``total``: each layer gets the floor of its
    share (at least ``min_filters``), and the features left go one each to the layers with the largest remainders
    (ties: the earlier layer). ``total = sum(base)`` returns ``base`` itself."""
    b = np.asarray(base, dtype=np.float64)
    if b.ndim != 1 or b.size == 0 or not (b > 0).all():
        raise UsageError(f"base widths must be positive, got {base}")
    total = int(total)
    if total < min_filters * b.size:
        raise UsageError(f"a total of {total} features cannot give {b.size} layers {min_filters} each")
    exact = b * total / b.sum()
    out = np.maximum(np.floor(exact + 1e-9).astype(int), min_filters)
    rem = exact - np.floor(exact + 1e-9)
    order = sorted(range(b.size), key=lambda i: (-rem[i], i))
    left = total - int(out.sum())
    i = 0
    while left > 0:  # hand out the rest by remainder
        out[order[i % b.size]] += 1
        left -= 1
        i += 1
    while left < 0:  # the floor of min_filters took more than the total: take back from the widest layers
        j = max((k for k in range(b.size) if out[k] > min_filters), key=lambda k: (out[k] - exact[k], out[k]))
        out[j] -= 1
        left += 1
    return tuple(int(v) for v in out)


def reference_widths_at_budget(depth: int = 16, patch_size: int = 32, width_multiplier: float = 1.0) -> tuple[int, ...]:
    """The unmodified VGG widths scaled to the variants' nominal budget, round(sum(base) * multiplier) features in
    all (524.8 -> 525 at x0.1 for VGG-16), in proportion to the base widths (:func:`proportional_widths`). The
    reference that ``train --reference`` builds rounds every layer up instead (534 features at x0.1); at multiplier
    1 both are VGG-D itself."""
    base = base_widths(depth, patch_size)
    if not width_multiplier > 0:
        raise UsageError(f"--width-multiplier must be > 0, got {width_multiplier}")
    return proportional_widths(base, int(round(sum(base) * width_multiplier)))
