"""The feature_amounts study's statistics, rules, nulls and preconditions."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from shared.errors import UsageError
from shared.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED, resolve_settings


def _rec(best: float, curve=None, epochs: int = 10, first: float | None = None, widths=(7, 6, 13)) -> dict:
    """A result record as `train` logs it: a curve that rises to ``best`` and stays there (flat), or ``curve``."""
    if curve is None:
        start = best - 20.0 if first is None else first
        curve = [start + (best - start) * min(1.0, i / (epochs - 3)) for i in range(epochs)]
    return {"BestVal": max(curve), "AllVal": list(curve), "Filters": list(widths), "EpochsDone": len(curve)}


KW = dict(tolerance=2.0, chance=10.0, epochs=10, flat_epochs=2, flat_gain=1.0)


# -- the equivalence rule ------------------------------------------------------------------------------------------

def test_non_inferiority_gives_each_verdict():
    from projects.feature_amounts.study import verdict_non_inferior

    ref = [88.0, 88.3, 87.9]
    assert verdict_non_inferior([87.5, 87.9, 87.3], ref, tolerance=2.0)[0] == HOLDS  # 0.5 pp worse, tight
    assert verdict_non_inferior([89.5, 89.9, 89.3], ref, tolerance=2.0)[0] == HOLDS  # better
    v, d = verdict_non_inferior([83.0, 83.2, 82.7], ref, tolerance=2.0)
    assert v == FAILS and d == pytest.approx([-5.0, -5.1, -5.2])  # worse by more than the tolerance
    assert verdict_non_inferior([86.0, 87.9, 84.5], ref, tolerance=2.0)[0] == INCONCLUSIVE  # straddles -2
    assert verdict_non_inferior([87.5], [88.0], tolerance=2.0)[0] == INCONCLUSIVE  # one pair: no spread
    assert verdict_non_inferior([87.5, math.nan, 87.3], ref, tolerance=2.0)[0] == INCONCLUSIVE
    # the same gap is "does not hold" with a tolerance below it and "holds" with one above
    assert verdict_non_inferior([86.5, 86.8, 86.4], ref, tolerance=1.0)[0] == FAILS
    assert verdict_non_inferior([86.5, 86.8, 86.4], ref, tolerance=3.0)[0] == HOLDS


@pytest.mark.parametrize("n", [2, 3, 5])
def test_non_inferiority_null_in_both_arms_never_wrongly_fails(n):
    """The reference against itself: identical arms hold (a network is comparable to itself) and never fail;
    two arms drawn from one distribution (seed-only differences) give "does not hold" in under 3% of draws,
    whatever the spread relative to the tolerance."""
    from projects.feature_amounts.study import verdict_non_inferior

    rng = np.random.default_rng(n)
    for sd in (0.15, 1.0, 3.0):
        failed = 0
        for _ in range(2000):
            a, b = rng.normal(88.0, sd, n), rng.normal(88.0, sd, n)
            assert verdict_non_inferior(list(a), list(a), tolerance=2.0)[0] == HOLDS
            failed += verdict_non_inferior(list(a), list(b), tolerance=2.0)[0] == FAILS
        assert failed / 2000 < 0.03, (n, sd, failed)


def test_two_networks_that_learned_nothing_are_not_called_comparable():
    """A null in both arms of another kind: both at chance. The rule alone would hold (d = 0); the precondition
    that the reference learned makes it "not tested"."""
    from projects.feature_amounts.study import early_claim, verdict_non_inferior

    chance = [_rec(10.0, [10.0] * 10) for _ in range(3)]
    assert verdict_non_inferior([10.0] * 3, [10.0] * 3, tolerance=2.0)[0] == HOLDS
    c = early_claim(chance, chance, early_text="e", **KW)
    assert c.verdict == NOT_TESTED and "reference learned" in c.reason


def test_early_claim_verdicts_and_its_preconditions():
    from projects.feature_amounts.study import early_claim

    ref = [_rec(88.0), _rec(88.3), _rec(87.9)]
    c = early_claim(ref, [_rec(87.5), _rec(87.9), _rec(87.3)], early_text="v066", **KW)
    assert c.verdict == HOLDS and c.value == pytest.approx(-0.5) and "v066" in c.statistic
    assert "seed-only differences" in c.null and all(p.ok for p in c.preconditions)
    assert early_claim(ref, [_rec(83.0), _rec(83.2), _rec(82.7)], early_text="e", **KW).verdict == FAILS
    assert early_claim(ref, [_rec(86.0), _rec(87.9), _rec(84.5)], early_text="e", **KW).verdict == INCONCLUSIVE
    # an early variant still rising by 3 pp in its last 2 epochs: still learning, so not tested (not "does not hold")
    rising = [_rec(0, [40, 50, 60, 65, 70, 72, 74, 76, 78, 80]) for _ in range(3)]
    c = early_claim(ref, rising, early_text="e", **KW)
    assert c.verdict == NOT_TESTED and "curves flattened" in c.reason and "early +4.00 pp" in c.reason


# -- the two-sided rule --------------------------------------------------------------------------------------------

def test_differs_gives_each_verdict():
    from projects.feature_amounts.study import verdict_differs

    ref = [88.0, 88.3, 87.9]
    assert verdict_differs([83.0, 83.2, 82.7], ref, min_effect=2.0)[0] == HOLDS  # lower
    assert verdict_differs([92.0, 92.2, 91.7], ref, min_effect=2.0)[0] == HOLDS  # higher
    assert verdict_differs([88.2, 88.1, 88.0], ref, min_effect=2.0)[0] == FAILS  # within +-2 pp
    assert verdict_differs([85.0, 88.9, 83.0], ref, min_effect=2.0)[0] == INCONCLUSIVE
    v, d = verdict_differs([83.0, 83.2, 82.7], ref, min_effect=2.0)
    assert d == pytest.approx([-5.0, -5.1, -5.2])


@pytest.mark.parametrize("n", [2, 3, 5])
def test_differs_null_in_both_arms_does_not_hold(n):
    from projects.feature_amounts.study import verdict_differs

    rng = np.random.default_rng(10 + n)
    held = 0
    for _ in range(2000):
        a, b = rng.normal(88.0, 0.3, n), rng.normal(88.0, 0.3, n)
        assert verdict_differs(list(a), list(a), min_effect=0.0)[0] != HOLDS
        held += verdict_differs(list(a), list(b), min_effect=0.0)[0] == HOLDS
    assert held / 2000 < 0.01


def test_spread_claim_verdicts_and_preconditions():
    from projects.feature_amounts.study import spread_claim

    early = [_rec(88.0), _rec(88.3), _rec(87.9)]
    kw = dict(KW, early_text="e", late_text="l")
    assert spread_claim(early, [_rec(83.0), _rec(83.2), _rec(82.7)], **kw).verdict == HOLDS
    assert spread_claim(early, [_rec(88.2), _rec(88.1), _rec(88.0)], **kw).verdict == FAILS
    assert spread_claim(early, [_rec(85.0), _rec(88.9), _rec(83.0)], **kw).verdict == INCONCLUSIVE
    short = [_rec(0, [50, 60, 70, 80, 83]) for _ in range(3)]  # stopped after 5 of 10 epochs
    c = spread_claim(early, short, **kw)
    assert c.verdict == NOT_TESTED and "stopped after 5 of 10 epochs" in c.reason
    chance = [_rec(10.0, [10.0] * 10) for _ in range(3)]  # both at chance: alike, but not "does not hold"
    c = spread_claim(chance, chance, **kw)
    assert c.verdict == NOT_TESTED and "mirror learned" in c.reason


# -- the hypothesis ------------------------------------------------------------------------------------------------

def test_slower_claim_verdicts_and_its_null():
    from projects.feature_amounts.study import slower_claim

    ref = [_rec(88.0, first=80.0), _rec(88.3, first=80.4), _rec(87.9, first=79.8)]
    kw = dict(tolerance=2.0, chance=10.0, early_text="e")
    c = slower_claim(ref, [_rec(87.0, first=60.0), _rec(87.0, first=62.0), _rec(87.0, first=61.0)], **kw)
    assert c.verdict == HOLDS and c.value == pytest.approx(19.07, abs=0.01) and c.hypothesis
    assert slower_claim(ref, [_rec(87.0, first=80.1), _rec(87.0, first=80.2), _rec(87.0, first=80.0)],
                        **kw).verdict == FAILS
    assert slower_claim(ref, [_rec(87.0, first=70.0), _rec(87.0, first=81.0), _rec(87.0, first=75.0)],
                        **kw).verdict == INCONCLUSIVE
    # the null in both arms: the reference against itself never holds
    assert slower_claim(ref, ref, **kw).verdict != HOLDS
    # both at chance after one epoch: no lag shows, and that is "not tested", not "does not hold"
    chance = [_rec(88.0, first=10.0) for _ in range(3)]
    c = slower_claim(chance, chance, **kw)
    assert c.verdict == NOT_TESTED and "reference learned in the first epoch" in c.reason


# -- the preconditions' own logic ----------------------------------------------------------------------------------

def test_flattened_precondition():
    from projects.feature_amounts.study import flattened

    flat = [80, 85, 87, 88, 88.2, 88.4, 88.5, 88.6, 88.7, 88.9]
    p = flattened({"a": [flat, flat]}, last=2, max_gain=1.0, epochs=10)
    assert p.ok and "a +0.30 pp" in p.measured
    p = flattened({"a": [flat], "b": [[50, 60, 70, 75, 78, 80, 81, 82, 84, 86]]}, last=2, max_gain=1.0, epochs=10)
    assert not p.ok and "b +4.00 pp" in p.measured
    # the mean over seeds decides: one seed rising by 1.5 pp, two by 0.3 pp: 0.7 on average
    p = flattened({"a": [flat, flat, flat[:8] + [88.7, 90.1]]}, last=2, max_gain=1.0, epochs=10)
    assert p.ok and "a +0.70 pp (max 1.50)" in p.measured
    assert not flattened({"a": [flat[:6]]}, last=2, max_gain=1.0, epochs=10).ok  # stopped early
    assert not flattened({"a": [[50.0, 51.0]]}, last=2, max_gain=1.0, epochs=2).ok  # no epoch before the last 2
    assert not flattened({}, last=2, max_gain=1.0, epochs=10).ok


def test_learned_precondition():
    from projects.feature_amounts.study import learned

    assert learned([88.0, 87.0], 10.0).ok
    assert not learned([88.0, 29.0], 10.0).ok  # one seed within 20 pp of chance
    assert not learned([], 10.0).ok and not learned([88.0, math.nan], 10.0).ok


def test_late_gain():
    from projects.feature_amounts.results import late_gain

    assert late_gain([10, 50, 60, 61, 61.5], 2) == pytest.approx(1.5)
    assert late_gain([5, 9, 8, 7], 2) == 0.0  # fell at the end: no gain
    assert math.isnan(late_gain([1, 2], 2)) and math.isnan(late_gain([1, math.nan, 3], 1))
    with pytest.raises(ValueError):
        late_gain([1, 2, 3], 0)


# -- where the features are, and the networks chosen ---------------------------------------------------------------

def test_budget_share_and_centre_of_mass():
    from projects.feature_amounts.variants import base_widths, budget_share, centre_of_mass, third

    b = base_widths(16, 32)
    assert third(15) == 5 and third(12) == 4
    assert budget_share(b) == pytest.approx(640 / 5248) and budget_share(b, "last") == pytest.approx(2560 / 5248)
    assert centre_of_mass(b) == pytest.approx(9.061, abs=1e-3)
    assert budget_share([1, 1, 1, 0, 0, 0], layers=3) == 1.0 and centre_of_mass([0, 0, 5]) == 2.0
    with pytest.raises(UsageError):
        budget_share([0, 0])
    with pytest.raises(UsageError):
        budget_share([1, 2], "middle")


def test_reference_at_the_variants_budget():
    from projects.feature_amounts.config import FAOptions, reference_target
    from projects.feature_amounts.variants import (base_widths, generate_variants, proportional_widths,
                                                   reference_widths_at_budget)

    w = reference_widths_at_budget(16, 16, 0.1)
    assert sum(w) == 525 and w == (7, 6, 13, 13, 26, 26, 26, 51, 51, 51, 51, 51, 51, 51, 51)
    ceil = reference_target(FAOptions(patch_size=16, width_multiplier=0.1)).widths  # the default: rounded up
    assert sum(ceil) == 534
    totals = [sum(v.widths) for v in generate_variants(16, 16, 0.1)]
    assert min(totals) <= sum(w) <= max(totals) < sum(ceil)
    assert reference_widths_at_budget(16, 32, 1.0) == tuple(base_widths(16, 32))  # the paper's reference itself
    assert proportional_widths([1, 1, 100], 10) == (2, 2, 6)  # the 2-feature floor, and the total kept
    assert sum(proportional_widths([3, 5, 7], 101)) == 101
    with pytest.raises(UsageError):
        proportional_widths([1, 1, 1], 5)


def test_the_variants_are_chosen_by_where_their_features_are():
    from projects.feature_amounts.study import pick_mirror, pick_variant
    from projects.feature_amounts.variants import budget_share, generate_variants

    vs = generate_variants(16, 16, 0.1)
    early = pick_variant(vs, "first", 0.5)
    late = pick_mirror(vs, early)
    assert early.id == "v066_m1_s5.5_a12" and late.id == "v157_m14_s5.5_a-12"
    assert budget_share(early.widths) >= 0.5 and budget_share(late.widths, "last") >= 0.5
    assert sum(abs(a - b) for a, b in zip(late.widths, early.widths[::-1])) == 1  # its widths reversed, but one
    assert pick_variant(vs, "last", 0.5).id == "v150_m14_s5.5_a-40"  # the same rule from the other end
    # the narrowest layer is the widest of all qualifying variants
    assert min(early.widths) == max(min(v.widths) for v in vs if budget_share(v.widths) >= 0.5)
    # the first study's best "early" variant (mean <= 5) has 19 % of its features early: not early here
    v090 = next(v for v in vs if v.index == 90)
    assert budget_share(v090.widths) < 0.2 and pick_variant([v090], "first", 0.5) is None


def test_settings_are_checked_before_the_run():
    from projects.feature_amounts.study import PRESETS

    s = resolve_settings(PRESETS, "cpu", {"seeds": "3,4,5", "tolerance": "1.5"})
    assert s.seeds == (3, 4, 5) and s.tolerance == 1.5 and PRESETS["paper"].dropout == 0.5
    for bad, msg in [({"seeds": "0"}, "at least two different seeds"), ({"seeds": "1,1"}, "at least two"),
                     ({"flat_epochs": "10"}, "--flat-epochs"), ({"min_share": "1.2"}, "--min-share"),
                     ({"tolerance": "0"}, "--tolerance")]:
        with pytest.raises(UsageError, match=msg):
            resolve_settings(PRESETS, "cpu", bad)


def test_the_report_from_records(tmp_path):
    """The report's claims, tables and figures from hand-made records (no training)."""
    from projects.feature_amounts.study import PRESETS, networks, report

    s = PRESETS["cpu"]
    nets = networks(s)
    assert [n[0] for n in nets] == ["reference", "early", "late"] and "widths" in nets[0][1]
    w = {"reference": [int(x) for x in nets[0][1]["widths"].split(",")], "early": nets[1][2].widths,
         "late": nets[2][2].widths}
    recs = {"reference": [_rec(88.0, first=80.0, widths=w["reference"]), _rec(88.3, first=80.5, widths=w["reference"]),
                          _rec(87.9, first=79.5, widths=w["reference"])],
            "early": [_rec(87.6, first=60.0, widths=w["early"]), _rec(87.9, first=62.0, widths=w["early"]),
                      _rec(87.5, first=61.0, widths=w["early"])],
            "late": [_rec(84.0, first=70.0, widths=w["late"]), _rec(84.2, first=71.0, widths=w["late"]),
                     _rec(83.8, first=70.5, widths=w["late"])]}  # 3.6 pp below the early variant
    rep = report(SimpleNamespace(settings=s, scale="cpu"), nets, recs)
    verdicts = {c.name: c.verdict for c in rep.claims}
    assert verdicts == {"early_features_comparable": HOLDS, "budget_spread_matters": HOLDS,
                        "early_learns_slower": HOLDS}
    md = rep.markdown()
    assert "v066_m1_s5.5_a12" in md and "v157_m14_s5.5_a-12" in md
    assert "| reference | vgg16 at the variants' budget |" in md
    assert "dropout 0 before the classifier (the paper: 0.5)" in md and set(rep.figures) == {"curves", "profiles"}
    assert rep.paper is not None and rep.hardware["precision"] == "fp32"
