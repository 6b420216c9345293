"""Cone nesting statistics: the closed form against the literal construction, hand-built states, symmetries."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cone_reference as reference
from projects.cone_geometry import nesting
from projects.cone_geometry.models import build
from projects.cone_geometry.nesting import (IN_FULL_OUT, IN_PARTIAL_OUT, OUT_FULL_IN, OUT_PARTIAL_IN,
                                            pair_nesting, pairwise_nesting)
from shared.errors import UsageError

ONES = np.ones((3, 3))
NARROW = np.ones((3, 3))
NARROW[2, 2] = -1.0  # sum 7, norm 3: a narrower cone than ONES (sum 9, norm 3)


def _alpha_bar(total, norm, D):
    return 2.0 / math.pi * math.asin(abs(total) / (norm * math.sqrt(D)))


# ---------------------------------------------------------------------------------------------------------------
# The derivation of the closed form


@pytest.mark.parametrize("D", [2, 3, 9, 16, 25])
def test_givens_product_maps_identity_to_last_axis_and_has_the_claimed_first_row(D):
    R = reference.givens_product(D)
    np.testing.assert_allclose(R @ R.T, np.eye(D), atol=1e-12)
    np.testing.assert_allclose(R @ (np.ones(D) / math.sqrt(D)), np.eye(D)[D - 1], atol=1e-12)
    np.testing.assert_allclose(R[0], (np.eye(D)[0] - np.eye(D)[1]) / math.sqrt(2), atol=1e-12)
    delta = 0.3
    S = np.eye(D)
    S[D - 1, 0] = 1 / math.tan(delta)
    rank_one = np.eye(D) + (1 / math.tan(delta)) / math.sqrt(2 * D) * np.outer(np.ones(D), np.eye(D)[0] - np.eye(D)[1])
    np.testing.assert_allclose(np.linalg.inv(R) @ S @ R, rank_one, atol=1e-10)


def _random_layer(rng, C, O, I, k=3, bias_scale=1.0):
    return (rng.normal(size=(C, O, k, k)), bias_scale * rng.normal(size=(C, O)),
            rng.normal(size=(I, C, k, k)), bias_scale * rng.normal(size=(I, C)))


def _assert_matches_reference(res, ref, rot_atol=1e-6):
    rd = np.array([[e["distance"], e["opening"], e["rotation"]] for e in ref])
    np.testing.assert_allclose(res.distance.reshape(-1), rd[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(res.opening.reshape(-1), rd[:, 1], rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.rotation.reshape(-1), rd[:, 2], rtol=0, atol=rot_atol)
    np.testing.assert_array_equal(res.state.reshape(-1), [e["binary_nesting"] for e in ref])


@pytest.mark.parametrize("size", [(3, 3), (4, 4), (5, 6), (8, 8), (4, 16), (3, 7), (7, 9)])
def test_closed_form_matches_literal_construction(size):
    rng = np.random.default_rng(size[0] * 100 + size[1])
    wn, bn, wp, bp = _random_layer(rng, C=3, O=3, I=3)
    _assert_matches_reference(pair_nesting(wn, bn, wp, bp, size), reference.pair_nesting(wn, bn, wp, bp, size))


@pytest.mark.parametrize("size", [(2, 2), (1, 1), (2, 5), (1, 7)])
def test_blocks_smaller_than_the_kernel_match_the_wrapped_literal_embedding(size):
    rng = np.random.default_rng(7)
    wn, bn, wp, bp = _random_layer(rng, C=2, O=3, I=2)
    _assert_matches_reference(pair_nesting(wn, bn, wp, bp, size), reference.pair_nesting(wn, bn, wp, bp, size))


def test_closed_form_handles_ties_small_deltas_and_other_kernel_sizes():
    rng = np.random.default_rng(3)
    wn, bn, wp, bp = _random_layer(rng, C=2, O=2, I=3)
    wp[0, 0] = wn[0, 0]  # identical cones: Delta = 0, no shear
    wp[1, 1] = -2.0 * wn[1, 0]  # same opening (Delta = 0), opposite orientation
    wp[2, 0] = 0.5 * wn[0, 1] + 1e-3 * rng.normal(size=(3, 3))  # nearly parallel: small Delta
    _assert_matches_reference(pair_nesting(wn, bn, wp, bp, (6, 6)), reference.pair_nesting(wn, bn, wp, bp, (6, 6)))
    wn5, bn5, wp5, bp5 = _random_layer(rng, C=2, O=2, I=2, k=5)
    _assert_matches_reference(pair_nesting(wn5, bn5, wp5, bp5, (7, 8)),
                              reference.pair_nesting(wn5, bn5, wp5, bp5, (7, 8)))


def test_tiny_delta_gives_the_limit_of_the_definition():
    # As Delta -> 0+, cot(Delta) -> inf and every sheared row tends to the direction of delta = C_0 - C_1, so
    # rho -> arccos(<delta_hat, v_hat>).  The literal float64 construction loses all digits there (cot ~ 1e9
    # times rounding errors); the closed form stays accurate.
    rng = np.random.default_rng(11)
    w = rng.normal(size=(3, 3)) + 1.0
    w2 = w.copy()
    w2[1, 1] += 1e-9 * np.sign(w[1, 1])  # opening changes by ~1e-10
    size = (5, 5)
    u1, u2 = reference.embed(w, size), reference.embed(w2, size)
    a1, a2 = reference.opening_angle(u1), reference.opening_angle(u2)
    assert 0 < abs(a1 - a2) < 1e-8
    u, v = (u1, u2) if a1 > a2 else (u2, u1)
    C = reference.circulant(u)
    delta = C[0] - C[1]
    limit = math.acos(float(np.dot(reference.unit(delta), reference.unit(v))))
    _, _, rot = pairwise_nesting(w[None], [0.0], w2[None], [0.0], size)
    assert rot[0] == pytest.approx(2 / math.pi * limit, abs=1e-6)


def test_rotation_by_hand():
    # u = ones on a 3x3 block fills R^9: C is all ones, C_0 - C_1 = 0, so the shear does nothing and
    # every row is 1/3 (1, ..., 1); v = a single pixel, so cos = 1/3 for all rows.
    single = np.zeros((3, 3))
    single[1, 2] = 2.0
    d, op, rot = pairwise_nesting(ONES[None], [0.0], single[None], [0.0], (3, 3))
    assert rot[0] == pytest.approx(2 / math.pi * math.acos(1 / 3), abs=1e-12)
    assert op[0] == pytest.approx(1.0 - 2 / math.pi * math.asin(1 / 3), abs=1e-12)
    # equal openings (Delta = 0): the circulant of a pixel kernel contains the shifted pixel -> angle 0
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[0, 0], b[0, 1] = 1.0, 3.0
    _, op, rot = pairwise_nesting(a[None], [0.0], b[None], [0.0], (5, 5))
    assert op[0] == 0.0 and rot[0] == pytest.approx(0.0, abs=1e-7)
    # the opposite sign is the farthest away: angle pi for every row
    _, _, rot = pairwise_nesting(a[None], [0.0], -b[None], [0.0], (5, 5))
    assert rot[0] == pytest.approx(1.0, abs=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# The four states, built by hand on a 4x4 block (D = 16, sqrt(D) = 4)


def _pair(w1, b1, w2s, b2s, size=(4, 4)):
    """One cone 1 (c = o = 0) against cones 2_i: shapes as in a real layer pair."""
    w_next = np.asarray(w1, float)[None, None]
    b_next = np.array([[b1]], float)
    w_prev = np.stack([np.asarray(w, float) for w in w2s])[:, None]
    b_prev = np.array(b2s, float)[:, None]
    return pair_nesting(w_next, b_next, w_prev, b_prev, size)


def _bias_for_apex(w, t):
    return -t * float(np.sum(w))


@pytest.mark.parametrize("w1,w2s,apices2,state", [
    # cone 1 wider than every cone 2 (B > 0), one apex of cone 2 below cone 1's (A >= 0)
    (ONES, [NARROW, NARROW], [-1.0, 2.0], OUT_PARTIAL_IN),
    # one cone 2 wider (B < 0), A >= 0
    (NARROW, [ONES, NARROW], [-1.0, 2.0], OUT_FULL_IN),
    # equal openings (B == 0 exactly) count as FULL on the OUT side ...
    (NARROW, [NARROW, NARROW], [-1.0, 0.0], OUT_FULL_IN),
    # ... all apices of cone 2 above cone 1's (A < 0) and B > 0
    (ONES, [NARROW, NARROW], [1.0, 2.0], IN_FULL_OUT),
    # ... and as FULL (not partial) on the IN side
    (NARROW, [NARROW, NARROW], [1.0, 2.0], IN_FULL_OUT),
    # A < 0 and B < 0
    (NARROW, [ONES, NARROW], [1.0, 2.0], IN_PARTIAL_OUT),
])
def test_hand_built_states(w1, w2s, apices2, state):
    b2s = [_bias_for_apex(w, t) for w, t in zip(w2s, apices2)]
    r = _pair(w1, 0.0, w2s, b2s)  # cone 1 has its apex at t1 = 0
    d = [(0.0 - t) * 4.0 for t in apices2]
    a1 = _alpha_bar(np.sum(w1), 3.0, 16)
    ops = [a1 - _alpha_bar(np.sum(w), 3.0, 16) for w in w2s]
    assert r.state[0, 0] == state
    assert r.apex_max[0, 0] == pytest.approx(max(d), abs=1e-12)
    assert r.opening_min[0, 0] == pytest.approx(min(ops), abs=1e-12)
    assert r.distance[0, 0] == pytest.approx(np.mean(np.abs(d)), abs=1e-12)
    assert r.opening[0, 0] == pytest.approx(np.mean(np.abs(ops)), abs=1e-12)
    assert reference.state(d, ops) == state


def test_coinciding_apices_count_as_out():
    r = _pair(NARROW, 0.0, [ONES], [0.0])
    assert r.apex_max[0, 0] == 0.0 and r.state[0, 0] == OUT_FULL_IN


def test_binary_state_follows_the_if_chain_including_nan():
    A = np.array([1.0, 1.0, 0.0, -1.0, -1.0, -1.0, np.nan, np.nan, 1.0])
    B = np.array([1.0, 0.0, -1.0, 0.0, 1.0, -1.0, 1.0, -1.0, np.nan])
    expected = [OUT_PARTIAL_IN, OUT_FULL_IN, OUT_FULL_IN, IN_FULL_OUT, IN_FULL_OUT, IN_PARTIAL_OUT,
                IN_FULL_OUT, IN_PARTIAL_OUT, OUT_FULL_IN]
    np.testing.assert_array_equal(nesting.binary_state(A, B), expected)
    for a, b, e in zip(A, B, expected):
        assert reference.state([a], [b]) == e


# ---------------------------------------------------------------------------------------------------------------
# Symmetries and invariances


def _random_pairs(n=40, seed=0):
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(n, 3, 3)), rng.normal(size=(n, 3, 3))
    w2[0] = w1[0]  # a tie
    w2[1] = 2.0 * w1[1]  # same opening, different norm
    return w1, rng.normal(size=n), w2, rng.normal(size=n)


def test_swapping_the_cones():
    w1, b1, w2, b2 = _random_pairs()
    d, op, rot = pairwise_nesting(w1, b1, w2, b2, (8, 8))
    d2, op2, rot2 = pairwise_nesting(w2, b2, w1, b1, (8, 8))
    np.testing.assert_allclose(d2, -d, rtol=1e-12)
    np.testing.assert_allclose(op2, -op, atol=1e-15)
    np.testing.assert_allclose(rot2, rot, atol=1e-7)


def test_positive_scaling_of_a_cone_changes_nothing():
    w1, b1, w2, b2 = _random_pairs(seed=1)
    base = pairwise_nesting(w1, b1, w2, b2, (6, 7))
    scaled = pairwise_nesting(3.5 * w1, 3.5 * b1, w2, b2, (6, 7))
    scaled2 = pairwise_nesting(w1, b1, 0.25 * w2, 0.25 * b2, (6, 7))
    for a, b, c in zip(base, scaled, scaled2):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(c, a, rtol=1e-9, atol=1e-9)


def test_moving_an_apex_along_the_identity_line_shifts_the_distance():
    w1, b1, w2, b2 = _random_pairs(seed=2)
    tau = 0.7
    d, op, rot = pairwise_nesting(w1, b1, w2, b2, (5, 5))
    d2, op2, rot2 = pairwise_nesting(w1, b1 - tau * w1.sum(axis=(1, 2)), w2, b2, (5, 5))
    np.testing.assert_allclose(d2 - d, tau * 5.0, rtol=1e-6)
    np.testing.assert_array_equal(op2, op)
    np.testing.assert_array_equal(rot2, rot)


def test_values_are_in_range():
    w1, b1, w2, b2 = _random_pairs(n=200, seed=4)
    _, op, rot = pairwise_nesting(w1, b1, w2, b2, (16, 16))
    assert np.all((op >= -1) & (op <= 1)) and np.all((rot >= 0) & (rot <= 2))  # rho in [0, pi]
    assert np.any(rot > 1)


def test_quick_mode_sets_rotation_to_zero_and_keeps_the_rest():
    rng = np.random.default_rng(5)
    wn, bn, wp, bp = _random_layer(rng, C=3, O=2, I=4)
    full = pair_nesting(wn, bn, wp, bp, (8, 8))
    quick = pair_nesting(wn, bn, wp, bp, (8, 8), quick=True)
    assert np.all(quick.rotation == 0.0) and np.all(full.rotation > 0.0)
    np.testing.assert_array_equal(quick.distance, full.distance)
    np.testing.assert_array_equal(quick.opening, full.opening)
    np.testing.assert_array_equal(quick.state, full.state)
    ref = reference.pair_nesting(wn, bn, wp, bp, (8, 8), quick=True)
    assert all(e["rotation"] == 0.0 for e in ref)


def test_degenerate_cones():
    zero = np.zeros((3, 3))
    balanced = np.ones((3, 3))
    balanced[0] = -2.0  # sum 0: the hyperplane is parallel to the identity line
    d, op, rot = pairwise_nesting(np.stack([balanced, zero]), [1.0, 0.0], np.stack([ONES, ONES]), [0.0, 0.0],
                                  (4, 4))
    assert d[0] == -math.inf  # apex at t = -1/0 = -inf (the original's division by zero)
    assert op[1] == pytest.approx(-_alpha_bar(9, 3, 16))  # a zero filter has opening 0
    assert rot[1] == pytest.approx(1.0)  # zero rows and zero v: arccos(0) = pi/2


# ---------------------------------------------------------------------------------------------------------------
# Chunking and splitting never change a value


def test_chunking_and_c_ranges_are_exact():
    rng = np.random.default_rng(6)
    wn, bn, wp, bp = _random_layer(rng, C=7, O=5, I=3)
    full = pair_nesting(wn, bn, wp, bp, (5, 5))
    tiny = pair_nesting(wn, bn, wp, bp, (5, 5), chunk_elements=1)
    parts = nesting.PairResult.concat([pair_nesting(wn, bn, wp, bp, (5, 5), c_range=nesting.split_range(7, 3, r))
                                       for r in range(3)])
    for f in nesting.PairResult.FIELDS:
        np.testing.assert_allclose(getattr(tiny, f), getattr(full, f), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(getattr(parts, f), getattr(full, f), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("n,parts", [(7, 3), (2, 5), (64, 2), (0, 3)])
def test_split_range_covers_everything_once(n, parts):
    ranges = [nesting.split_range(n, parts, r) for r in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_bad_layer_shapes_are_usage_errors():
    rng = np.random.default_rng(0)
    wn, bn, wp, bp = _random_layer(rng, C=3, O=2, I=2)
    with pytest.raises(UsageError, match="not consecutive"):
        pair_nesting(wn, bn, wp[:, :2], bp[:, :2], (4, 4))


# ---------------------------------------------------------------------------------------------------------------
# Networks


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.features.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return model


def test_blocks_of_vgg11_include_single_conv_blocks():
    blocks = nesting.conv_blocks(build("Student_VGG11", 10, 3, 32), 32)
    assert [b.size for b in blocks] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert [len(b.convs) for b in blocks] == [1, 1, 2, 2, 2]
    assert [(b.convs[0].n_in, b.convs[0].n_out) for b in blocks] == [(3, 64), (64, 128), (128, 256), (256, 512),
                                                                     (512, 512)]


def test_lenet5_has_no_pairs():
    model = build("Student_LeNet5", 10, 1, 28)
    blocks = nesting.conv_blocks(model, 28)
    assert [b.size for b in blocks] == [(28, 28), (14, 14)]
    res = nesting.network_nesting(blocks)
    assert res == [] and nesting.to_json(res, blocks, {"arch": "LeNet5"})["blocks"] == []


def test_teacher_is_rejected():
    with pytest.raises(UsageError, match="student"):
        nesting.conv_blocks(build("LeNet8", 10, 1, 28), 28)


def test_network_json_matches_reference_in_c_major_order():
    model = _randomize(build("Student_LeNet8", 10, 1, 8), seed=1)
    blocks = nesting.conv_blocks(model, 8)
    doc = nesting.to_json(nesting.network_nesting(blocks), blocks,
                          {"name": "Student_LeNet8_3_x_gaussian", "arch": "LeNet8", "dataset": "digits",
                           "epoch": "3", "run": "0"})
    assert [b["input_size"] for b in doc["blocks"]] == [[8, 8], [4, 4]]
    assert [len(b["layer_pairs"][0]) for b in doc["blocks"]] == [6 * 6, 16 * 16]
    for block_doc, block in zip(doc["blocks"], blocks):
        prev, nxt = block.convs
        ref = reference.pair_nesting(nxt.weight, nxt.bias, prev.weight, prev.bias, block.size)
        got = block_doc["layer_pairs"][0]
        assert [e["binary_nesting"] for e in got] == [e["binary_nesting"] for e in ref]
        for key in ("distance", "opening", "rotation"):
            np.testing.assert_allclose([e[key] for e in got], [e[key] for e in ref], rtol=1e-9, atol=1e-6)
        assert set(got[0]) == {"distance", "opening", "rotation", "binary_nesting"}
    states = {e["binary_nesting"] for b in doc["blocks"] for e in b["layer_pairs"][0]}
    assert len(states) >= 3  # random weights and biases reach several states
    assert doc["epoch"] == "3" and doc["name"] == "Student_LeNet8_3_x_gaussian"


def test_summarize_counts_and_means():
    e = lambda s, d: {"distance": d, "opening": 0.5, "rotation": 0.25, "binary_nesting": s}  # noqa: E731
    doc = {"blocks": [{"layer_pairs": [[e(0, 1.0), e(1, 3.0)], [e(1, 2.0)]]}, {"layer_pairs": [[e(3, 4.0)]]}]}
    s = nesting.summarize(doc)
    assert s["block0_pair0/count_OUT_PARTIAL_IN"] == 1 and s["block0_pair0/frac_OUT_FULL_IN"] == 0.5
    assert s["block0/count_OUT_FULL_IN"] == 2 and s["block0/n"] == 3
    assert s["block0/mean_distance"] == pytest.approx(2.0)
    assert s["net/frac_IN_FULL_OUT"] == 0.25 and s["net/frac_IN_PARTIAL_OUT"] == 0.0
    assert s["net/mean_distance"] == pytest.approx(2.5) and s["net/mean_rotation"] == 0.25
    assert sum(s[f"net/count_{n}"] for n in nesting.STATE_NAMES) == s["net/n"] == 4
