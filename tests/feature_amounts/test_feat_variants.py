"""Variant generator: literal reference of the original rule vs the vectorized generator."""
import math

import numpy as np
import pytest
from scipy.integrate import trapezoid
from scipy.stats import skewnorm

from projects.feature_amounts import variants as V
from shared.errors import UsageError


def reference_variants(depth, patch_size=32):
    """Literal transcription: three nested loops, scipy's skewnorm, per-layer trapezoid, 95 % rule, ceil, min 2."""
    lpb = (depth - 7) // 3
    f = 512 if patch_size <= 100 else 4096
    base = [64, 64, 128, 128] + lpb * [256] + 2 * lpb * [512] + 2 * [f]
    n_layers, total = len(base), sum(base)
    x = np.arange(0, n_layers, 0.01)
    out = []
    for mean in range(0, n_layers + 1):
        for scale in np.arange(0, 6, 0.5):
            for skew in range(-40, 41, 4):
                if scale == 0:
                    continue
                y = skewnorm.pdf(x, skew, loc=mean, scale=scale)
                bins = []
                for i in range(n_layers):
                    sel = (x >= i - 1e-9) & (x <= i + 0.99 + 1e-9)
                    bins.append(trapezoid(y[sel], x[sel]))
                if not sum(bins) > 0.95:
                    continue
                widths = [math.ceil(b * total) for b in bins]
                if min(widths) < 2:
                    continue
                out.append((mean, float(scale), skew, widths))
    return out


def test_explicit_formula_matches_scipy():
    x = np.linspace(-3, 20, 777)
    for mean, scale, skew in [(0, 4.0, 8), (7, 0.5, -40), (15, 5.5, -12), (3.3, 1.7, 0)]:
        np.testing.assert_allclose(V.skewnormal_pdf(x, mean, scale, skew), skewnorm.pdf(x, skew, loc=mean, scale=scale),
                                   rtol=1e-12, atol=1e-300)


def test_bins_are_trapezoid_over_100_points():
    x = V.grid_points(4)
    y = np.cos(x) + 2.0
    bins = V.layer_bins(y, 4)
    for i in range(4):
        xs = x[i * 100:(i + 1) * 100]
        assert xs[0] == pytest.approx(i) and xs[-1] == pytest.approx(i + 0.99)
        assert bins[i] == pytest.approx(trapezoid(np.cos(xs) + 2.0, xs), rel=1e-13)


@pytest.mark.parametrize("depth,count", [(16, 193), (19, 139), (13, 194)])
def test_counts(depth, count):
    assert len(V.generate_variants(depth)) == count


def test_d16_first_last_and_widths():
    vs = V.generate_variants(16)
    first, last = vs[0], vs[-1]
    assert (first.mean, first.scale, first.skew) == (0, 4.0, 8)
    assert first.widths == (823, 961, 852, 708, 552, 405, 279, 181, 110, 63, 34, 17, 9, 4, 2)
    assert (last.mean, last.scale, last.skew) == (15, 5.5, -12)
    assert [v.index for v in vs] == list(range(193))
    totals = [sum(v.widths) for v in vs]
    assert min(totals) == 4995 and max(totals) == 5204  # realized totals, as noted for the original
    assert first.id == "v000_m0_s4.0_a8" and last.id == "v192_m15_s5.5_a-12"
    assert len({v.id for v in vs}) == 193


@pytest.mark.parametrize("depth", [10, 16])
def test_generator_equals_literal_reference(depth):
    ref = reference_variants(depth)
    got = V.generate_variants(depth)
    assert [(v.mean, v.scale, v.skew, list(v.widths)) for v in got] == ref


def test_patch_size_changes_budget():
    assert V.base_widths(16, 32)[-2:] == [512, 512] and sum(V.base_widths(16, 32)) == 5248
    assert V.base_widths(16, 224)[-2:] == [4096, 4096]
    assert len(V.base_widths(19)) == 18 and len(V.base_widths(13)) == 12


@pytest.mark.parametrize("bad", [15, 17, 7, 4, 0])
def test_bad_depth(bad):
    with pytest.raises(UsageError, match="vgg-depth"):
        V.generate_variants(bad)


def test_capacity_literal():
    w = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]
    expect = 27 * 3 + sum(9 * w[i - 1] * w[i] for i in range(1, 13)) + 15 * 16 + 16 * 17 + 17 * 10
    assert V.capacity(w, 10) == expect
    # VGG-D with the original's formula: conv weights + 512*512 + 512*512 + 512*10
    base = V.base_widths(16)
    conv = 27 * 64 + 9 * (64 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 2 * 256 * 256 + 256 * 512 + 5 * 512 * 512)
    assert V.capacity(base, 10) == conv + 2 * 512 * 512 + 5120


def test_width_multiplier_keeps_ids_and_scales_widths():
    full = V.generate_variants(16)
    small = V.generate_variants(16, width_multiplier=0.05)
    assert [v.id for v in small] == [v.id for v in full]
    for a, b in zip(full[:20], small[:20]):
        for wf, ws, bn in zip(a.widths, b.widths, b.bins):
            assert ws == max(2, math.ceil(bn * 5248 * 0.05))
            assert ws <= wf
    with pytest.raises(UsageError, match="width-multiplier"):
        V.generate_variants(16, width_multiplier=0)


def test_make_variant_and_invalid_reason():
    vs = V.generate_variants(16)
    v = V.make_variant(0, 4.0, 8)
    assert v.widths == vs[0].widths and V.invalid_reason(v) is None
    assert "density" in V.invalid_reason(V.make_variant(0, 5.5, -40))  # mass mostly below layer 0
    assert "features" in V.invalid_reason(V.make_variant(7, 0.5, 0))   # far layers get ~0 features
    with pytest.raises(UsageError):
        V.make_variant(0, 0.0, 8)


def test_select_variants():
    vs = V.generate_variants(16)
    assert [v.index for v in V.select_variants(vs, 5, 8)] == [5, 6, 7]
    sel = V.select_variants(vs, means=[15], skews=[-12])
    assert sel and all(v.mean == 15 and v.skew == -12 for v in sel)
    assert sel[-1].index == 192
    assert V.select_variants(vs, scales=[0.25]) == []
    with pytest.raises(UsageError):
        V.select_variants(vs, 500)
    with pytest.raises(UsageError):
        V.select_variants(vs, 9, 3)
