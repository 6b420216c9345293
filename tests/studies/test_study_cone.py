"""The cone_geometry study's statistics, rules, nulls and preconditions, on hand-made nesting documents."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.errors import UsageError
from shared.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED


def _cone_doc(block_counts):
    """A nesting document (the schema `nesting` writes): one pair per block, ``counts[s]`` filter-channels in state
    s."""
    blocks = []
    for counts in block_counts:
        entries = [{"distance": 1.0, "opening": 0.5, "rotation": 0.1, "binary_nesting": s}
                   for s, n in enumerate(counts) for _ in range(n)]
        blocks.append({"layer_pairs": [entries]})
    return {"blocks": blocks}


SEEDS, EPOCHS = [0, 1, 2, 3], [0, 1, 2, 3]
SIZES = (4, 100, 400)  # filter-channels of blocks 0, 1, 2


def _blocks(b1_first, b2_first, b0_first=2):
    """Counts of the three blocks, each split between states 0 and 1 (the first count given)."""
    return [[b0_first, SIZES[0] - b0_first, 0, 0], [b1_first, SIZES[1] - b1_first, 0, 0],
            [b2_first, SIZES[2] - b2_first, 0, 0]]


def _results(trained, init, *, own=0.8, cross=0.1, epochs=EPOCHS, in_channels=1, seeds=SEEDS):
    """Results from per-run block counts: ``trained(k, e)`` / ``init(k, e)`` give a run's counts at teacher epoch e;
    every student agrees with its teacher on ``own`` (a scalar, or a function of (k, e)), the untrained teacher's
    student with the trained teacher on ``cross``."""
    from projects.cone_geometry.study import Results

    res = Results(list(seeds), list(epochs), {}, {}, in_channels=in_channels)
    for k in seeds:
        for e in epochs:
            res.trained[(k, e)] = _cone_doc(trained(k, e))
            res.init[(k, e)] = _cone_doc(init(k, e))
            a = own(k, e) if callable(own) else own
            res.agreement[(k, e)] = {"init": 0.1, "final": a, "kl_init": 2.0, "kl_final": 0.3}
            res.accs[(k, e)] = (None if e == 0 else 0.85, 0.7)
        res.cross[k] = (cross(k) if callable(cross) else cross, 2.0)
    return res


SIGN = [1, -1, 1, -1]


# -- the statistics ------------------------------------------------------------------------------------------------


def test_variance_shares_are_in_units_of_the_sampling_floor_whatever_the_block_size():
    """Networks whose filter-channels are independent draws of one distribution have a normalized variance of 1 in
    every block, though the raw variance falls as 1/n: block size cannot decide."""
    from projects.cone_geometry.aggregate import sampling_floor, variance_shares

    rng = np.random.default_rng(0)
    p = np.array([0.15, 0.75, 0.08, 0.02])
    n = np.array([36.0, 256.0, 4096.0])
    fr = np.stack([np.stack([rng.multinomial(int(m), p) / m for m in n]) for _ in range(4000)])  # nets x blocks x 4
    shares = variance_shares(fr, n)
    assert shares.shape == (4000, 3)
    assert np.allclose(shares.mean(axis=0), 1.0, atol=0.06)
    raw = fr.var(axis=0, ddof=1).sum(axis=-1)
    assert raw[0] / raw[2] == pytest.approx(4096 / 36, rel=0.1)  # the poster's statistic: 1/n
    # the mean share is exactly the variance (ddof 1, summed over states) over the floor
    small = fr[:5]
    assert np.allclose(variance_shares(small, n).mean(axis=0),
                       small.var(axis=0, ddof=1).sum(-1) / sampling_floor(small.mean(axis=0), n))
    with pytest.raises(UsageError, match="two networks"):
        variance_shares(fr[:1], n)


def test_documents_give_block_sizes_fractions_slopes_distances_and_contrasts():
    from projects.cone_geometry.aggregate import (block_fraction_stack, block_sizes, contrast, slope, tv_distance)
    from projects.cone_geometry.study import step_rates, trend_blocks

    doc = _cone_doc(_blocks(50, 100))
    assert list(block_sizes(doc)) == list(SIZES)
    assert np.allclose(block_fraction_stack([doc, doc])[1, 1], [0.5, 0.5, 0, 0])
    assert slope([1, 2], np.array([[3.0, 1.0], [0.0, 2.0]])) == pytest.approx([-2.0, 2.0])
    assert slope([0, 1, 2], np.array([1.0, 2.0, 3.0])) == pytest.approx(1.0)
    assert tv_distance([0.5, 0.5, 0, 0], [0.25, 0.75, 0, 0]) == pytest.approx(0.25)
    assert contrast(3.0, 1.0) == 0.5 and contrast(0.0, 0.0) == 0.0 and contrast(0.0, 2.0) == -1.0
    assert trend_blocks(3, 1) == [1, 2] and trend_blocks(3, 3) == [0, 1, 2]
    # the distance per epoch: a step of two epochs counts half
    docs = {(0, 1): _cone_doc(_blocks(50, 100)), (0, 2): _cone_doc(_blocks(50, 152)),
            (0, 4): _cone_doc(_blocks(50, 256))}
    rates = step_rates(docs, [0], [1, 2, 4])
    n = sum(SIZES)
    assert rates.shape == (1, 2) and rates[0] == pytest.approx([52 / n, 104 / n / 2])


# -- the agreement precondition --------------------------------------------------------------------------------------


def _flat(k, e):
    return _blocks(50, 200)


def test_agreement_precondition_needs_every_run_to_beat_the_untrained_teachers_student():
    from projects.cone_geometry.study import MIN_AGREEMENT_GAIN, agreement_precondition

    jitter = [0.0, 0.01, -0.01, 0.005]
    ok, own, null = agreement_precondition(_results(_flat, _flat, own=lambda k, e: 0.8 + jitter[k], cross=0.1))
    assert ok.ok and own == pytest.approx([0.8, 0.81, 0.79, 0.805]) and null == [0.1] * 4
    # a student that learns from the labels agrees with the trained teacher as well as the untrained one's does
    assert not agreement_precondition(_results(_flat, _flat, own=lambda k, e: 0.8 + jitter[k],
                                               cross=lambda k: 0.79 + jitter[k]))[0].ok
    # a real but small gain (below MIN_AGREEMENT_GAIN) is no mimicry
    small = MIN_AGREEMENT_GAIN / 2
    assert not agreement_precondition(_results(_flat, _flat, own=lambda k, e: 0.3 + small + jitter[k],
                                               cross=lambda k: 0.3 + jitter[k] / 2))[0].ok
    # the worst trained student of a run counts; the untrained teacher's student (epoch 0) does not
    worst = agreement_precondition(_results(_flat, _flat, own=lambda k, e: 0.15 if (k, e) == (2, 1) else 0.8))
    assert not worst[0].ok and worst[1][2] == 0.15
    assert agreement_precondition(_results(_flat, _flat, own=lambda k, e: 0.0 if e == 0 else 0.8 + jitter[k]))[0].ok
    # an agreement that was not measured fails the precondition
    res = _results(_flat, _flat)
    res.agreement[(1, 3)]["final"] = None
    missing = agreement_precondition(res)[0]
    assert not missing.ok and "not measured" in missing.measured


# -- low_variance_higher_blocks --------------------------------------------------------------------------------------


def _spread(block1, block2):
    """Counts where run k deviates from the mean of block 1 by SIGN[k] * block1[k] and of block 2 by block2[k]."""
    return lambda k, e: _blocks(50 + SIGN[k] * block1[k], 200 + SIGN[k] * block2[k])


def test_variance_claim_gives_each_verdict():
    from projects.cone_geometry.study import variance_claim

    trained_low_high = _spread([10, 10, 11, 11], [0, 0, 0, 0])  # block 1 varies beyond sampling, block 2 not at all
    init_high_high = _spread([0, 0, 0, 0], [40, 40, 41, 41])  # the other way at initialization
    c, var = variance_claim(_results(trained_low_high, init_high_high), [])
    assert c.verdict == HOLDS and c.value < 0 < c.null_value
    assert var["blocks"] == [1, 2] and var["trained"].shape == (4, 3)
    assert np.all(var["trained"][:, 2] == 0) and np.all(var["init"][:, 1] == 0)
    # no effect: the trained students vary as their initialization does (identical arms: never holds)
    c, _ = variance_claim(_results(init_high_high, init_high_high), [])
    assert c.verdict == FAILS
    # the other way: higher blocks vary more after training
    assert variance_claim(_results(init_high_high, trained_low_high), [])[0].verdict == FAILS
    # runs that disagree: one run's deviations dominate, the paired interval spans the smallest effect
    noisy = _spread([2, 30, 1, 3], [60, 1, 2, 50])
    c, _ = variance_claim(_results(noisy, _spread([5, 5, 6, 6], [20, 20, 21, 21])), [])
    assert c.verdict == INCONCLUSIVE
    # not tested: the students did not mimic their teachers
    from projects.cone_geometry.study import agreement_precondition

    pre = agreement_precondition(_results(trained_low_high, init_high_high, own=0.12, cross=0.1))[0]
    c, _ = variance_claim(_results(trained_low_high, init_high_high), [pre])
    assert c.verdict == NOT_TESTED and "students mimic their teachers" in c.reason


def test_block_zero_leaves_the_trend_on_one_channel_inputs_only():
    from projects.cone_geometry.study import variance_claim

    # block 0 varies wildly in the trained students, blocks 1 and 2 as at initialization
    trained = lambda k, e: _blocks(50 + SIGN[k] * 5, 200 + SIGN[k] * 20, b0_first=[0, 4, 0, 4][k])  # noqa: E731
    init = lambda k, e: _blocks(50 + SIGN[k] * 5, 200 + SIGN[k] * 20, b0_first=2)  # noqa: E731
    c1, v1 = variance_claim(_results(trained, init, in_channels=1), [])
    c3, v3 = variance_claim(_results(trained, init, in_channels=3), [])
    assert v1["blocks"] == [1, 2] and c1.verdict == FAILS and "block 0 left out" in c1.measured
    assert v3["blocks"] == [0, 1, 2] and c3.value < c1.value and "left out" not in c3.measured
    # fewer than two trend blocks: not tested
    two = lambda k, e: _blocks(50 + SIGN[k] * 5, 200 + SIGN[k] * 20)[:2]  # noqa: E731
    c, _ = variance_claim(_results(two, two), [])
    assert c.verdict == NOT_TESTED and "at least two blocks" in c.reason


# -- distribution_stabilizes -----------------------------------------------------------------------------------------


def _moving(steps):
    """Block 2 moves by steps[k][i] filter-channels at trained teacher epoch i + 1 -> i + 2 in run k."""
    def counts(k, e):
        pos = 100 + sum(steps[k][:max(e - 1, 0)])
        return _blocks(50, pos)
    return counts


def test_stabilization_claim_gives_each_verdict():
    from projects.cone_geometry.study import agreement_precondition, stabilization_claim

    shrinking = _moving([[40, 4], [42, 5], [38, 4], [41, 3]])
    c, stab = stabilization_claim(_results(shrinking, _flat), [])
    assert c.verdict == HOLDS and c.value > 0.8 and c.null_value == 0.0
    assert stab["steps"] == ["1→2", "2→3"] and stab["trained"].shape == (4, 2)
    # steady change: no stabilization
    steady = _moving([[20, 20], [21, 21], [19, 20], [20, 19]])
    assert stabilization_claim(_results(steady, _flat), [])[0].verdict == FAILS
    # identical arms (the null in both) never hold
    assert stabilization_claim(_results(_flat, _flat), [])[0].verdict == FAILS
    # runs that disagree
    mixed = _moving([[40, 2], [5, 40], [30, 3], [4, 35]])
    assert stabilization_claim(_results(mixed, _flat), [])[0].verdict == INCONCLUSIVE
    # not tested: two trained teacher epochs give one step only; or the students did not mimic
    c, _ = stabilization_claim(_results(shrinking, _flat, epochs=[0, 1, 2]), [])
    assert c.verdict == NOT_TESTED and "trained teacher epochs" in c.reason
    pre = agreement_precondition(_results(shrinking, _flat, own=0.11, cross=0.1))[0]
    c, _ = stabilization_claim(_results(shrinking, _flat), [pre])
    assert c.verdict == NOT_TESTED and "mimic" in c.reason


def test_the_null_in_both_arms_never_holds_for_either_rule():
    from projects.cone_geometry.study import stabilization_claim, variance_claim

    rng = np.random.default_rng(1)
    for _ in range(20):
        b1, b2 = rng.integers(0, 30, 4), rng.integers(0, 120, 4)
        steps = rng.integers(0, 60, (4, 2)).tolist()
        same = _spread(list(b1), list(b2))
        assert variance_claim(_results(same, same), [])[0].verdict != HOLDS
        moving = _moving(steps)
        assert stabilization_claim(_results(moving, moving), [])[0].verdict != HOLDS


# -- the report, the settings ----------------------------------------------------------------------------------------


def test_accuracy_and_agreement_tables():
    from projects.cone_geometry.study import accuracy_rows, agreement_rows

    accs = {(0, 0): (None, 0.10), (1, 0): (None, 0.12), (0, 2): (0.85, 0.70), (1, 2): (0.87, 0.74)}
    rows = accuracy_rows(accs, [0, 1], [0, 2])
    assert rows[0] == ["0", "–", "0.110 ± 0.014"]  # no test accuracy of the epoch-0 (untrained) teacher
    assert rows[1] == ["2", "0.860 ± 0.014", "0.720 ± 0.028"]
    res = _results(_flat, _flat, own=lambda k, e: [0.7, 0.8, 0.9, 1.0][k], cross=0.1)
    rows = agreement_rows(res)
    assert rows[1][4] == f"0.850 ± {np.std([0.7, 0.8, 0.9, 1.0], ddof=1):.3f}"
    assert rows[-1][0] == "0 against 3" and rows[-1][4] == "0.100 ± 0.000"


def test_settings_are_checked_before_a_run_opens():
    from projects.cone_geometry.study import PRESETS
    from shared.study import resolve_settings

    cpu = resolve_settings(PRESETS, "cpu", {})
    assert cpu.kl_weight == 1.0 and cpu.kl_reduction == "batchmean" and 0 in cpu.teacher_epochs
    paper = PRESETS["paper"]  # the original's distillation loss stays in the paper preset
    assert (paper.temperature, paper.kl_weight, paper.kl_reduction, paper.train_fraction) == (22.0, 0.7, "mean", 1.0)
    for bad, msg in [({"seeds": "0,1"}, "at least three runs"), ({"teacher_epochs": "1,2,3"}, "must hold 0"),
                     ({"teacher_epochs": "0"}, "trained epoch"), ({"teacher_epochs": "0,9"}, "must lie in"),
                     ({"train_fraction": "0"}, "train-fraction"), ({"seeds": "1,1,2"}, "repeated")]:
        with pytest.raises(UsageError, match=msg):
            resolve_settings(PRESETS, "smoke", bad)


def test_the_paper_quotes_are_the_posters():
    from projects.cone_geometry.study import PAPER, QUOTE_STABLE, QUOTE_VAR

    assert {c.name: c.quote for c in PAPER.claims}["low_variance_higher_blocks"] == QUOTE_VAR
    tested = {n for c in PAPER.claims for n in c.tested_by}
    assert tested == {"low_variance_higher_blocks", "distribution_stabilizes"}
    assert all(c.why_not for c in PAPER.claims if not c.tested_by)
    assert math.isclose(len(QUOTE_STABLE), len("Distribution “stabilizes” during training."))
