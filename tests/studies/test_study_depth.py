"""The depth_limit study's statistics, rules, nulls and preconditions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.errors import UsageError
from shared.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED, Precondition


def _ok():
    return Precondition("fits trained", "all", "rule", True)


def _bad():
    return Precondition("fits trained", "L512 seed 1: 0.49 -> 0.48", "rule", False)


# -- the statistics ---------------------------------------------------------------------------------------------


def test_depth_slope():
    from projects.depth_limit.study import log_log_slope

    assert log_log_slope([8, 32, 128], [1.0, 4.0, 16.0]) == pytest.approx(1.0)
    assert log_log_slope([8, 32, 128], [2.0, 2.0, 2.0]) == pytest.approx(0.0)
    assert math.isnan(log_log_slope([8, 32], [1.0, float("nan")]))


def test_order_ratio_is_about_one_for_exchangeable_points_and_falls_like_n_to_the_minus_1_over_p_for_regular_paths():
    from projects.depth_limit.pvar import order_ratio

    rng = np.random.default_rng(0)
    for n in (32, 256):
        iid = order_ratio(rng.normal(size=(n, 4)), 2.0, shuffles=8).ratio
        assert 0.85 < iid < 1.15
    smooth = [order_ratio(np.stack([np.sin(np.linspace(0, 3, n)), np.cos(np.linspace(0, 2, n))], 1), 2.0).ratio
              for n in (16, 64, 256)]
    assert smooth[0] > smooth[1] > smooth[2]
    slope = np.polyfit(np.log([16, 64, 256]), np.log(smooth), 1)[0]
    assert -0.6 < slope < -0.35  # about -1/p = -0.5
    walk = [order_ratio(np.cumsum(rng.normal(size=(n, 3)), 0), 2.0).ratio for n in (16, 256)]
    assert walk[1] < 0.5 * walk[0]  # a rough path of finite 2-variation (Brownian-like) is regular in this sense too


def test_order_ratio_is_scale_free_and_the_shuffles_depend_only_on_length_and_seed():
    from projects.depth_limit.pvar import order_ratio, shuffled_p_variations

    x = np.cumsum(np.random.default_rng(1).normal(size=(40, 2)), 0)
    a, b = order_ratio(x, 2.0, 6, seed=3), order_ratio(-7.5 * x, 2.0, 6, seed=3)
    assert a.ratio == pytest.approx(b.ratio, rel=1e-9) and b.ordered == pytest.approx(7.5 * a.ordered)
    assert np.allclose(shuffled_p_variations(x, 2.0, 6, 3), shuffled_p_variations(x, 2.0, 6, 3))
    assert not np.allclose(shuffled_p_variations(x, 2.0, 6, 3), shuffled_p_variations(x, 2.0, 6, 4))
    assert a.shuffled.shape == (6,) and a.ratio == pytest.approx(a.ordered / a.shuffled.mean())
    assert math.isnan(order_ratio(np.ones((10, 2)), 2.0, 4).ratio)  # a constant path: 0 / 0
    with pytest.raises(UsageError, match="shuffles must be >= 1"):
        shuffled_p_variations(x, 2.0, 0)


def test_layer_order_ratio_ignores_beta_and_weight_change_pairs_one_fit():
    from projects.depth_limit.paths import group_by_depth, layer_order_ratio, order_ratio_table, weight_change

    rng = np.random.default_rng(2)
    w = np.cumsum(rng.normal(size=(32, 3, 3)), 0)
    assert layer_order_ratio(w, 2.0, 0.25) == pytest.approx(layer_order_ratio(w, 2.0, 0.5))
    w0 = rng.normal(size=(32, 3, 3))
    assert np.allclose(weight_change(w, w0), w - w0)
    with pytest.raises(UsageError, match="pair the weights of one fit"):
        weight_change(w, w0[:16])
    table = order_ratio_table(group_by_depth([("a", w), ("b", w0)]), 2.0)
    assert list(table) == [32] and table[32][0] < 0.6 < table[32][1]  # the walk is regular, the i.i.d. layers not


def test_fit_lr_rules():
    from projects.depth_limit.study import fit_lr

    assert fit_lr(9.0, "fixed", 512, 0.75) == 9.0
    assert fit_lr(9.0, "depth", 512, 0.75) == pytest.approx(9.0 * 512 ** 0.45)  # the thesis' resnet_cifar10 rule
    assert fit_lr(9.0, "depth", 512, 0.5) == pytest.approx(9.0 * 512 ** -0.05)
    with pytest.raises(UsageError, match="unknown lr rule"):
        fit_lr(9.0, "cosine", 8, 0.5)


def test_slopes_by_seed_and_missing_depths():
    from projects.depth_limit.study import slopes_by_seed

    v = {(8, 1): 1.0, (32, 1): 0.5, (128, 1): 0.25, (8, 2): 1.0, (32, 2): 1.0, (128, 2): 1.0, (8, 3): 1.0}
    s = slopes_by_seed(v, [8, 32, 128], [1, 2, 3])
    assert s[0] == pytest.approx(-0.5) and s[1] == pytest.approx(0.0) and math.isnan(s[2])


# -- the precondition -------------------------------------------------------------------------------------------


def test_trained_precondition():
    from projects.depth_limit.study import loss_fall, trained_precondition

    assert loss_fall(0.5, 0.1) == pytest.approx(5.0) and loss_fall(0.5, 0.0) == math.inf
    assert math.isnan(loss_fall(float("nan"), 0.1)) and math.isnan(loss_fall(0.0, 0.1))
    ok = trained_precondition({"L8 seed 1": (0.49, 0.08), "L512 seed 1": (0.49, 0.2)}, 2.0)
    assert ok.ok and "2 of 2 fits" in ok.measured and "x2.45" in ok.measured
    bad = trained_precondition({"L8 seed 1": (0.49, 0.08), "L512 seed 1": (0.49, 0.48)}, 2.0)
    assert not bad.ok and "not trained: L512 seed 1" in bad.measured and "0.49 -> 0.48" in bad.measured
    assert not trained_precondition({"L8 seed 1": (0.49, float("nan"))}, 2.0).ok  # no loss: not trained
    assert not trained_precondition({}, 2.0).ok
    assert trained_precondition({"a": (0.49, 0.0)}, 2.0).ok  # a loss of exactly 0 fell by an infinite factor
    assert not trained_precondition({"a": (2.3, 1.2)}, 2.0).ok  # fell, but by less than the stated factor


# -- the rules --------------------------------------------------------------------------------------------------


def _bounded(trained, initial, pre=None):
    from projects.depth_limit.study import bounded_claim

    return bounded_claim("sin", 0.75, trained, initial, pre or _ok(), p=2.0, depths=[8, 32, 128], shuffles=16)


def test_bounded_rule_gives_each_verdict():
    init = [0.01, -0.02, 0.005]
    assert _bounded([-0.42, -0.45, -0.40], init).verdict == HOLDS  # bounded (about -1/p) against exchangeable (0)
    assert _bounded([-0.05, 0.02, -0.01], init).verdict == FAILS  # no more regular than the i.i.d. layers
    assert _bounded([-0.10, -0.12, -0.08], init).verdict == FAILS  # more regular, but not half-way (0.25)
    assert _bounded([-0.10, -0.50, -0.30], init).verdict == INCONCLUSIVE  # the seeds straddle the threshold
    c = _bounded([-0.42, -0.45, -0.40], init, _bad())
    assert c.verdict == NOT_TESTED and "fits trained" in c.reason and c.hypothesis
    c = _bounded([-0.42, -0.45, -0.40], init)
    assert "initial weights" in c.null and "0.25" in c.rule and c.value == pytest.approx(np.mean(init) + 0.42333, 1e-3)


def test_alpha_rule_gives_each_verdict():
    from projects.depth_limit.study import alpha_claim

    def claim(trained, initial, pres=(_ok(), _ok())):
        return alpha_claim("sin", 0.5, 0.75, trained, initial, list(pres), p=2.0)

    init = [0.001, -0.002, 0.0005]
    assert claim([-0.30, -0.28, -0.33], init).verdict == HOLDS  # 0.3 below the null, the smallest effect 0.125
    assert claim([-0.02, 0.01, -0.03], init).verdict == FAILS  # no alpha effect
    assert claim([0.20, 0.25, 0.22], init).verdict == FAILS  # the other way
    assert claim([-0.02, -0.30, -0.15], init).verdict == INCONCLUSIVE
    c = claim([-0.30, -0.28, -0.33], init, (_ok(), _bad()))
    assert c.verdict == NOT_TESTED and c.hypothesis and "0.125" in c.rule


@pytest.mark.parametrize("n", [2, 3, 5])
def test_the_null_in_both_arms_never_holds(n):
    from projects.depth_limit.study import alpha_claim, bounded_claim

    rng = np.random.default_rng(n)
    for _ in range(200):
        null = list(rng.normal(0.0, 0.05, n))
        assert bounded_claim("sin", 0.5, null, null, _ok(), p=2.0, depths=[8, 32, 128], shuffles=4).verdict != HOLDS
        assert alpha_claim("sin", 0.5, 0.75, null, null, [_ok()], p=2.0).verdict != HOLDS


def test_the_initial_weights_of_a_fit_are_exchangeable_so_their_slope_is_the_null():
    """The study's null on real initial weights (ntrunc, the study's init): order-ratio slope about 0, while a
    smooth path added to them (what training adds) gives a slope near -1/p."""
    import torch

    from projects.depth_limit.models import init_weights
    from projects.depth_limit.paths import layer_order_ratio
    from projects.depth_limit.study import log_log_slope

    Ls, r0, r1 = [8, 32, 128], [], []
    for L in Ls:
        g = torch.Generator().manual_seed(0)
        w0 = init_weights(torch.empty(L, 3, 3), "ntrunc", 0.75, 1.0, generator=g).double().numpy()
        smooth = np.sin(np.linspace(0, 3, L))[:, None, None] * np.ones((1, 3, 3)) * 1e3 * np.abs(w0).max()
        r0.append(layer_order_ratio(w0, 2.0, 0.25))
        r1.append(layer_order_ratio(w0 + smooth, 2.0, 0.25))
    assert abs(log_log_slope(Ls, r0)) < 0.1
    assert log_log_slope(Ls, r1) < -0.35


# -- settings and the paper ---------------------------------------------------------------------------------------


def test_settings_validate():
    from projects.depth_limit.study import PRESETS
    from shared.study import resolve_settings

    for over, msg in (({"depths": "8,8"}, "at least two different depths"), ({"depths": "1,8"}, "depths >= 2"),
                      ({"seeds": "1"}, "at least two different integer seeds"),
                      ({"lr_rule": "cosine"}, "--lr-rule must be one of"),
                      ({"shuffles": "1"}, "--shuffles must be >= 2"),
                      ({"min_fall": "1"}, "--min-fall must be > 1"),
                      ({"class_min_fall": "0.9"}, "--class-min-fall must be > 1"),
                      ({"regression": "", "classification": ""}, "give --regression or --classification")):
        with pytest.raises(UsageError, match=msg):
            resolve_settings(PRESETS, "smoke", over)
    assert resolve_settings(PRESETS, "cpu", {}).lr_rule == "depth"
    assert PRESETS["paper"].lr_rule == "fixed"  # the thesis' fit examples: one rate at every L


def test_paper_for_maps_the_report_claims_to_the_thesis_statements():
    from projects.depth_limit.study import PAPER, alpha_claim, bounded_claim, paper_for

    claims = [bounded_claim("digits", 0.5, [-0.4, -0.4], [0.0, 0.01], _ok(), p=2.0, depths=[4, 16, 64], shuffles=4),
              alpha_claim("digits", 0.5, 0.75, [0.0, 0.0], [0.0, 0.0], [_ok()], p=2.0)]
    paper = paper_for(claims)
    assert [c.name for c in paper.claims] == [c.name for c in PAPER.claims]
    assert paper.claim("weights_regularity").tested_by == ("bounded_pvar_digits_alpha0.5",)
    assert paper.claim("regularizing_delta").tested_by == ("alpha_dependence_digits",)
    assert all(c.why_not for c in paper.claims if not c.tested_by)
