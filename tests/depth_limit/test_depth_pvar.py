"""p-variation: every method equals the plain O(n^2) DP (which equals brute force over all partitions)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from projects.depth_limit import pvar
from depth_reference import pvar_bruteforce, pvar_reference
from shared.errors import UsageError

METHODS = ("dense", "tree", "auto")


def _paths(rng, n, d):
    yield "walk", rng.standard_normal((n, d)).cumsum(axis=0)
    yield "monotone", np.abs(rng.standard_normal((n, d))).cumsum(axis=0)
    yield "lattice", rng.integers(-2, 3, size=(n, d)).astype(float)  # many ties and repeated points
    yield "offset", 1e4 + 1e-3 * rng.standard_normal((n, d)).cumsum(axis=0)  # cancellation in the Gram formula
    yield "smooth", np.sin(np.linspace(0, 6, n)[:, None] * (1 + np.arange(d)))


@pytest.mark.parametrize("n", [1, 2, 3, 7])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.7])
def test_reference_dp_is_the_definition(n, p):
    rng = np.random.default_rng(n)
    for _, x in _paths(rng, n, 2):
        assert pvar_reference(x, p)[0] == pytest.approx(pvar_bruteforce(x, p), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("d", [1, 2, 5, 40, 150])
@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 2.5, 4.0])
def test_fast_methods_equal_reference(d, p):
    rng = np.random.default_rng(int(10 * p) + d)
    for n in (2, 5, 33, 150):
        for kind, x in _paths(rng, n, d):
            ref, _ = pvar_reference(x, p)
            for method in METHODS:
                r = pvar.p_variation(x, p, method=method)
                assert r.value == pytest.approx(ref, rel=1e-10, abs=1e-12), (kind, n, d, p, method)
                part = r.partition
                assert part[0] == 0 and part[-1] == n - 1 and np.all(np.diff(part) > 0)
                # the value is the sum over the returned partition
                assert pvar.partition_sum(x, part, p) == pytest.approx(r.value, rel=1e-12)


def test_long_paths_tree_and_dense_agree_with_reference():
    rng = np.random.default_rng(3)
    for d in (1, 3):
        x = rng.standard_normal((1200, d)).cumsum(axis=0)
        ref, _ = pvar_reference(x, 2.5)
        assert pvar.p_variation(x, 2.5, method="tree").value == pytest.approx(ref, rel=1e-10)
        assert pvar.p_variation(x, 2.5, method="dense").value == pytest.approx(ref, rel=1e-10)


def test_single_point_and_two_points():
    r = pvar.p_variation(np.array([[1.0, 2.0]]), 2.0)
    assert r.value == 0.0 and list(r.partition) == [0]
    r = pvar.p_variation(np.array([[0.0, 0.0], [3.0, 4.0]]), 3.0)
    assert r.value == pytest.approx(125.0) and list(r.partition) == [0, 1]


def test_p1_is_total_variation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 4))
    r = pvar.p_variation(x, 1.0)
    assert r.method == "p1"
    assert r.value == pytest.approx(np.linalg.norm(np.diff(x, axis=0), axis=1).sum())
    assert r.value == pytest.approx(pvar_reference(x, 1.0)[0])


def test_monotone_line_has_value_of_one_jump():
    x = np.arange(20.0)
    for p in (1.5, 2.0, 3.0):
        r = pvar.p_variation(x, p)
        assert r.value == pytest.approx(19.0 ** p)
        assert list(r.partition) == [0, 19]


def test_norm_and_shapes():
    w = torch.randn(6, 3, 3, dtype=torch.float64)
    r = pvar.p_variation(w, 2.0)
    flat = w.reshape(6, 9).numpy()
    assert r.value == pytest.approx(pvar_reference(flat, 2.0)[0])
    assert r.norm == pytest.approx(r.value ** 0.5)
    assert pvar.p_variation(np.arange(5.0), 2.0).value == pytest.approx(16.0)


@pytest.mark.parametrize("bad", [0.5, 0.0, -1.0, float("nan"), float("inf"), "x"])
def test_bad_p_is_usage_error(bad):
    with pytest.raises(UsageError, match="p must be"):
        pvar.p_variation(np.zeros((3, 1)), bad)


def test_bad_paths_are_usage_errors():
    with pytest.raises(UsageError, match="empty"):
        pvar.p_variation(np.zeros((0, 2)), 2.0)
    with pytest.raises(UsageError, match="NaN"):
        pvar.p_variation(np.array([0.0, np.nan]), 2.0)
    with pytest.raises(UsageError, match="method"):
        pvar.p_variation(np.zeros(3), 2.0, method="fast")


def test_turning_points_keep_value():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, size=60).astype(float)
    keep = pvar._turning_points(x)
    assert keep[0] == 0 and keep[-1] == 59
    for p in (1.0, 2.0, 3.0):
        assert pvar_reference(x[keep], p)[0] == pytest.approx(pvar_reference(x, p)[0])


def test_auto_choice():
    assert pvar.choose_method(100_000, 1, 2.5) == "tree"
    assert pvar.choose_method(2000, 4096, 2.5) == "dense"
    assert pvar.choose_method(1000, 225, 2.0) == "dense"
    assert pvar.choose_method(10_000, 10, 2.0) == "tree"
