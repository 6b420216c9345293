"""The hyperplane_bias study's statistics, rules, nulls and preconditions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.errors import UsageError
from shared.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED, Precondition, resolve_settings

LAYERS = ("s0b0", "s0b1", "s1b0", "s1b1", "s2b0", "s2b1")
WIDTHS = dict(zip(LAYERS, (6, 6, 16, 16, 64, 64)))
BAD = Precondition("a check", "measured", "rule", False)
GOOD = Precondition("a check", "measured", "rule", True)


# -- the random-layer null ------------------------------------------------------------------------------------------

def test_the_random_layer_null_is_exact_and_falls_with_width():
    from projects.hyperplane_bias.projections import (random_layer_bias_mean, random_layer_bias_pmf,
                                                      random_layer_bias_quantile, random_layer_bias_sf)

    for n in (1, 2, 6, 16, 64, 172, 512):
        pmf = random_layer_bias_pmf(n)
        assert sum(p for _, p in pmf) == pytest.approx(1.0)
        assert [v for v, _ in pmf] == sorted(v for v, _ in pmf) and pmf[-1][0] == 0.5
    # the numbers: E|mass - 0.5| = 0.156 (6 filters), 0.098 (16), 0.050 (64)
    assert random_layer_bias_mean(6) == pytest.approx(60 / 64 / 6)
    assert [round(random_layer_bias_mean(n), 3) for n in (6, 16, 64)] == [0.156, 0.098, 0.050]
    assert random_layer_bias_sf(6, 0.5) == pytest.approx(2 / 64)  # all six filters on one side
    assert random_layer_bias_sf(6, 1 / 3) == pytest.approx(14 / 64)  # 0/6, 1/6, 5/6 or 6/6 on one side
    assert random_layer_bias_sf(16, 0.0) == 1.0
    assert random_layer_bias_quantile(6, 0.95) == pytest.approx(1 / 3)
    with pytest.raises(UsageError):
        random_layer_bias_pmf(0)


def test_the_null_is_the_bias_of_the_projects_own_random_layers():
    """Drawn LeNet initializations (Xavier-uniform) have the exact null's mean bias in every layer."""
    import torch

    from projects.hyperplane_bias.models import LeNet
    from projects.hyperplane_bias.projections import (layer_biases, projection_statistics,
                                                      random_layer_bias_mean)

    torch.manual_seed(0)
    draws = {lab: [] for lab in LAYERS}
    for _ in range(200):
        doc = projection_statistics(LeNet(10, 1), normalize=True)
        for r in layer_biases(doc):
            draws[r["layer"]].append(r["bias"])
    for lab, vals in draws.items():
        se = np.std(vals, ddof=1) / math.sqrt(len(vals))
        assert abs(np.mean(vals) - random_layer_bias_mean(WIDTHS[lab])) < 4 * se, lab


def test_layer_biases_and_excess_of_a_document():
    from projects.hyperplane_bias.projections import layer_biases

    doc = {"0": {"0": {"projections": [1.0, -1.0, 2.0, 3.0, -2.0, 0.5], "mass": 2 / 6, "mean": 0.0}},
           "1": {"0": {"projections": [-1.0] * 16, "mass": 1.0, "mean": -1.0}},
           "net": {"projections": [], "mass": 0.0, "mean": 0.0}, "arch": "x", "dataset": "y", "epoch": "0"}
    rows = layer_biases(doc)
    assert [(r["layer"], r["n"]) for r in rows] == [("s0b0", 6), ("s1b0", 16)]
    assert rows[0]["bias"] == pytest.approx(1 / 6) and rows[0]["excess"] == pytest.approx(1 / 6 - 0.15625)
    assert rows[1]["bias"] == 0.5 and rows[1]["excess"] == pytest.approx(0.5 - 0.0981903076171875)


def test_excess_vs_drop_correlates_per_layer():
    from projects.hyperplane_bias.correlate import excess_vs_drop

    doc = {"0": {str(b): {"projections": [1.0] * n, "mass": m, "mean": 0.0}
                 for b, (n, m) in enumerate([(6, 0.5), (16, 0.75), (64, 1.0)])}}
    res = excess_vs_drop(doc, {"s0b0": 0.1, "s0b1": 0.2, "s0b2": 0.3})
    assert res["rho"] == pytest.approx(1.0) and len(res["rows"]) == 3
    assert excess_vs_drop(doc, {"s0b0": 0.3, "s0b1": 0.2, "s0b2": 0.1}, stat="n")["rho"] == pytest.approx(-1.0)
    with pytest.raises(UsageError, match="at least 3"):
        excess_vs_drop(doc, {"s0b0": 0.3})


# -- preconditions --------------------------------------------------------------------------------------------------

def test_preconditions_logic():
    from projects.hyperplane_bias.study import control_trained, drops_spread, learned, without_signal

    assert learned([0.80, 0.36], 10).ok and not learned([0.80, 0.34], 10).ok and not learned([], 10).ok
    assert learned([0.80], 2).ok is True and not learned([0.70], 2).ok  # 1/K + 0.25 = 0.75 for two classes
    assert without_signal("random", [0.10, 0.149], 10).ok
    assert not without_signal("shuffle", [0.10, 0.196], 10).ok  # the pixel shuffle: 0.196
    assert not without_signal("noise", [0.819], 10).ok  # the label noise: it learned the signal
    assert not without_signal("random", [], 10).ok
    assert control_trained("random", [0.6, 0.4], [1.0, 1.0]).ok  # half as far
    assert not control_trained("random", [0.1, 0.2], [1.0, 1.0]).ok  # a control that barely moved
    assert not control_trained("random", [], [1.0]).ok
    assert drops_spread([0.2, 0.05]).ok and not drops_spread([0.2, 0.01]).ok and not drops_spread([]).ok
    assert "0.196" in without_signal("shuffle", [0.196], 10).measured


def test_settings_are_checked_before_any_run():
    from projects.hyperplane_bias.study import PRESETS

    s = resolve_settings(PRESETS, "cpu", {"controls": "random,noise", "control_seeds": "3"})
    assert s.controls == ("random", "noise") and s.control_seeds == 3
    for bad, msg in [({"controls": "random,labels"}, "unknown control"), ({"controls": "random,random"}, "repeated"),
                     ({"control_seeds": "-1"}, "control-seeds"), ({"seeds": "1,1"}, "repeated seed"),
                     ({"train_fraction": "1.5"}, "train-fraction"), ({"control_noise": "0"}, "control-noise")]:
        with pytest.raises(UsageError, match=msg):
            resolve_settings(PRESETS, "cpu", bad)


def test_each_replicate_has_its_own_corruption_and_the_controls_have_no_signal_by_default():
    from projects.hyperplane_bias.study import PRESETS, control_options

    s = PRESETS["cpu"]
    assert control_options("clean", s, 3) == {}
    assert control_options("random", s, 3) == {"random_labels": True, "noise_seed": 3}
    assert control_options("shuffle", s, 4) == {"pixel_shuffle": True, "noise_seed": 4}
    assert control_options("noise", s, 5) == {"noise": 0.5, "noise_seed": 5}
    assert "noise" not in PRESETS["cpu"].controls and "noise" in PRESETS["paper"].controls  # the paper's, kept there
    assert len(PRESETS["cpu"].seeds) >= 10  # the critical claim's per-seed rho needs many seeds


# -- the rules: each verdict from hand-made numbers -----------------------------------------------------------------

def test_emergence_rule_gives_each_verdict():
    from projects.hyperplane_bias.study import emergence_claim

    init = [0.02, 0.04, 0.03, 0.01]
    assert emergence_claim([0.35, 0.38, 0.36, 0.40], init, 172).verdict == HOLDS
    assert emergence_claim([0.04, 0.05, 0.03, 0.02], init, 172).verdict == FAILS  # no more bias than untrained
    assert emergence_claim([0.35, 0.02, 0.30, 0.01], init, 172).verdict == INCONCLUSIVE  # seeds disagree
    c = emergence_claim([0.35, 0.38, 0.36, 0.40], init, 172, [BAD])
    assert c.verdict == NOT_TESTED and "a check" in c.reason
    assert "0.030" in c.null  # the exact random-network mean beside the measured initialization


def test_learning_rule_gives_each_verdict():
    from projects.hyperplane_bias.study import learning_claim

    clean = [0.36, 0.38, 0.37, 0.39, 0.35]
    assert learning_claim("random", clean, [0.10, 0.12, 0.08, 0.11, 0.09]).verdict == HOLDS
    assert learning_claim("random", clean, [0.35, 0.36, 0.38, 0.37, 0.36]).verdict == FAILS  # as biased as clean
    assert learning_claim("random", clean, [0.40, 0.42, 0.41, 0.43, 0.40]).verdict == FAILS  # more biased
    assert learning_claim("random", clean, [0.10, 0.40, 0.05, 0.38, 0.30]).verdict == INCONCLUSIVE
    c = learning_claim("shuffle", clean, [0.10, 0.12, 0.08, 0.11, 0.09], [GOOD, BAD])
    assert c.verdict == NOT_TESTED and c.name == "correlates_with_learning_shuffle"


def test_critical_rule_gives_each_verdict():
    from projects.hyperplane_bias.study import critical_claim

    null = [0.1, -0.2, 0.0, 0.15, -0.1, 0.05]
    assert critical_claim([0.8, 0.9, 0.85, 0.7, 0.95, 0.8], null).verdict == HOLDS
    assert critical_claim([0.1, -0.1, 0.05, 0.0, -0.05, 0.1], null).verdict == FAILS
    assert critical_claim([-0.9, -0.8, -0.7, -0.9, -0.6, -0.8], null).verdict == FAILS  # the other way
    assert critical_claim([0.9, -0.5, 0.8, -0.3, 0.9, -0.6], null).verdict == INCONCLUSIVE
    assert critical_claim([0.8, None, 0.85, 0.7, 0.95, 0.8], null).verdict == INCONCLUSIVE  # a constant column
    # a real association, but weaker than the smallest that counts
    assert critical_claim([0.35, 0.1, 0.3, 0.4, 0.2, 0.35], null).verdict == FAILS
    c = critical_claim([0.8, 0.9, 0.85, 0.7, 0.95, 0.8], null, preconditions=[BAD])
    assert c.verdict == NOT_TESTED
    # beating the initialization is not enough where the width alone ranks the drops as well
    strong = [0.8, 0.9, 0.85, 0.7, 0.95, 0.8]
    assert critical_claim(strong, null, width=[0.8, 0.85, 0.9, 0.75, 0.9, 0.85]).verdict == INCONCLUSIVE
    c = critical_claim(strong, null, width=[0.1, 0.0, 0.2, -0.1, 0.1, 0.0])
    assert c.verdict == HOLDS and "does beat the width" in c.rule
    assert critical_claim([0.1, -0.1, 0.05, 0.0, -0.05, 0.1], null, width=[0.9] * 6).verdict == FAILS


def _layers(values):
    return dict(zip(LAYERS, values))


def test_many_layers_rule_gives_each_verdict():
    from projects.hyperplane_bias.study import many_layers_claim

    init = _layers([[0.17, 0.0, 0.17, 0.33]] * 2 + [[0.06, 0.12, 0.0, 0.19]] * 2 + [[0.03, 0.05, 0.02, 0.06]] * 2)
    same = dict(init)
    up = lambda vals: [v + 0.35 + 0.01 * i for i, v in enumerate(vals)]  # noqa: E731
    four = dict(init, s1b0=up(init["s1b0"]), s1b1=up(init["s1b1"]), s2b0=up(init["s2b0"]), s2b1=up(init["s2b1"]))
    c = many_layers_claim(four, init, WIDTHS)
    assert c.verdict == HOLDS and c.value == pytest.approx(4 / 6) and "4 of 6 layers hold" in c.measured
    one = dict(init, s2b1=up(init["s2b1"]))
    assert many_layers_claim(one, init, WIDTHS).verdict == FAILS  # 5 of 6 layers are as at initialization
    noisy = [0.5, 0.0, 0.5, 0.0]
    mixed = dict(init, s1b1=up(init["s1b1"]), s2b0=up(init["s2b0"]), s0b0=noisy, s0b1=noisy)
    assert many_layers_claim(mixed, init, WIDTHS).verdict == INCONCLUSIVE  # 2 hold, 2 do not, 2 inconclusive
    assert many_layers_claim(four, init, WIDTHS, [BAD]).verdict == NOT_TESTED
    assert many_layers_claim(same, init, WIDTHS).verdict == FAILS
    assert "6 filters) 0.156" in c.null


# -- the null in both arms never holds ------------------------------------------------------------------------------

def _random_bias(rng, n, size):
    return np.abs(rng.binomial(n, 0.5, size) / n - 0.5)


def test_the_null_in_both_arms_never_holds():
    """Untrained layers in both arms: drawn from the exact null (Binomial(N, 1/2) masses) of LeNet's widths, with
    drops that grow with depth (so with width, as in LeNet: the raw bias then ranks the drops by width)."""
    from projects.hyperplane_bias.projections import random_layer_bias_mean
    from projects.hyperplane_bias.study import (critical_claim, emergence_claim, learning_claim, many_layers_claim)
    from shared.study import spearman

    rng = np.random.default_rng(1)
    widths = np.array([WIDTHS[lab] for lab in LAYERS])
    null_mean = np.array([random_layer_bias_mean(int(n)) for n in widths])
    held = {"critical": 0, "emergence": 0, "learning": 0, "many": 0}
    raw = []
    trials = 150
    for _ in range(trials):
        seeds = 11
        a = np.stack([_random_bias(rng, int(n), seeds) for n in widths], axis=1)  # seeds x layers
        b = np.stack([_random_bias(rng, int(n), seeds) for n in widths], axis=1)
        drops = np.linspace(0.05, 0.6, len(widths)) + rng.normal(0, 0.05, (seeds, len(widths)))
        rho_a = [spearman(list(a[i] - null_mean), list(drops[i]))[0] for i in range(seeds)]
        rho_b = [spearman(list(b[i] - null_mean), list(drops[i]))[0] for i in range(seeds)]
        raw += [spearman(list(a[i]), list(drops[i]))[0] for i in range(seeds)]
        assert critical_claim(rho_b, rho_b).verdict != HOLDS
        held["critical"] += critical_claim(rho_a, rho_b).verdict == HOLDS
        net_a, net_b = list(a.mean(axis=1)), list(b.mean(axis=1))
        assert emergence_claim(net_b, net_b, 172).verdict != HOLDS
        held["emergence"] += emergence_claim(net_a, net_b, 172).verdict == HOLDS
        held["learning"] += learning_claim("random", net_a[:5], net_b[:5]).verdict == HOLDS
        per_a = {lab: list(a[:, j]) for j, lab in enumerate(LAYERS)}
        per_b = {lab: list(b[:, j]) for j, lab in enumerate(LAYERS)}
        assert many_layers_claim(per_b, per_b, WIDTHS).verdict != HOLDS
        held["many"] += many_layers_claim(per_a, per_b, WIDTHS).verdict == HOLDS
    assert held == {"critical": 0, "emergence": 0, "learning": 0, "many": 0}
    # the width confound the claim avoids: random layers' raw bias anti-correlates with drops that grow with width
    assert np.mean([r for r in raw if r is not None]) < -0.3


# -- the claims from run statistics ---------------------------------------------------------------------------------

def _stats(test_acc, net, net_init, biases, init_biases, distance=1.0, k=10):
    from projects.hyperplane_bias.projections import random_layer_bias_mean
    from projects.hyperplane_bias.study import RunStats

    def rows(bs):
        return [{"layer": lab, "n": WIDTHS[lab], "mass": 0.5 + b, "bias": b,
                 "null_mean": random_layer_bias_mean(WIDTHS[lab]),
                 "excess": b - random_layer_bias_mean(WIDTHS[lab])} for lab, b in zip(LAYERS, bs)]

    return RunStats(test_acc, 0.5, k, rows(biases), rows(init_biases), net, net_init, 172, distance)


def test_build_claims_checks_the_design_before_the_verdicts():
    from projects.hyperplane_bias.study import build_claims

    rng = np.random.default_rng(0)
    init = [0.33, 0.17, 0.0, 0.12, 0.06, 0.02]
    trained = [0.33, 0.17, 0.0, 0.44, 0.47, 0.5]  # the narrow layers keep their initialization's bias
    clean = {s: _stats(0.82, 0.38 + 0.005 * s, 0.03, trained, init) for s in range(6)}
    random = {s: _stats(0.10 + 0.005 * s, 0.08 + 0.005 * s, 0.03, [0.33, 0.17, 0.0, 0.1, 0.1, 0.1], init, 0.9)
              for s in range(4)}
    shuffle = {s: _stats(0.196, 0.36, 0.03, [0.33, 0.17, 0.0, 0.4, 0.45, 0.5], init) for s in range(4)}
    # drops that follow the bias beyond a random layer in every seed (and the initialization's only loosely)
    order = [0.05, 0.02, 0.0, 0.3, 0.4, 0.5]
    drops = {s: {lab: d + rng.normal(0, 0.001) for lab, d in zip(LAYERS, order)} for s in range(6)}
    claims, rhos = build_claims({"clean": clean, "random": random, "shuffle": shuffle}, drops, ["random", "shuffle"])
    by = {c.name: c for c in claims}
    assert list(by) == ["biased_in_many_layers", "emerges_from_training", "correlates_with_learning_random",
                        "correlates_with_learning_shuffle", "biased_layers_are_critical"]
    assert by["emerges_from_training"].verdict == HOLDS
    assert by["biased_in_many_layers"].verdict == HOLDS
    assert by["correlates_with_learning_random"].verdict == HOLDS
    shuffle_claim = by["correlates_with_learning_shuffle"]  # the control kept signal (0.196 > 0.15): not tested
    assert shuffle_claim.verdict == NOT_TESTED and "no learnable signal" in shuffle_claim.reason
    assert len(rhos["measured"]) == 6 and all(r > 0.9 for r in rhos["measured"])
    assert by["biased_layers_are_critical"].verdict == HOLDS  # beats the initialization's rho and the width's
    # a clean run that did not learn: nothing is tested
    clean[0] = _stats(0.2, 0.38, 0.03, trained, init)
    claims, _ = build_claims({"clean": clean, "random": random, "shuffle": shuffle}, drops, ["random", "shuffle"])
    assert {c.verdict for c in claims} == {NOT_TESTED}


def test_run_stats_reads_the_projections_of_a_run():
    import torch

    from projects.hyperplane_bias.models import LeNet
    from projects.hyperplane_bias.projections import projection_statistics, projections_document
    from projects.hyperplane_bias.study import run_stats

    torch.manual_seed(0)
    m = LeNet(10, 1)
    init = {k: v.clone() for k, v in m.state_dict().items()}
    d0 = projections_document(projection_statistics(m, normalize=True, init_state=init), "lenet", "x", 0)
    with torch.no_grad():
        for p in m.features.parameters():
            p.add_(0.1 * torch.randn_like(p))
    d1 = projections_document(projection_statistics(m, normalize=True, init_state=init), "lenet", "x", 1)
    r = run_stats([d0, d1], 0.8, 0.7, 10)
    assert r.net_filters == 172 and [x["layer"] for x in r.layers] == list(LAYERS) and r.distance > 0
    assert r.net_init == pytest.approx(abs(d0["net"]["mass"] - 0.5)) and r.chance == 0.1
    with pytest.raises(UsageError):
        run_stats([d1, d1], 0.8, 0.7, 10)
