"""The feature_amounts study's statistics, rules, nulls and preconditions."""
from __future__ import annotations

import numpy as np
import pytest

from shared.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED


def test_feature_amounts_rule():
    from projects.feature_amounts.study import early_claim

    recs = [{"VariantId": "a", "Mean": 0.0, "Variance": 4.0, "Skew": 24, "BestVal": 89.0, "Parameters": 10},
            {"VariantId": "b", "Mean": 14.0, "BestVal": 70.0, "Parameters": 10},
            {"VariantId": "ref", "Mean": None, "BestVal": 90.0, "Parameters": 12}]
    c1, c2, rows = early_claim(recs, 16, 2.0, 10.0)
    assert c1.verdict == HOLDS and c1.value == pytest.approx(-1.0)
    assert c2.verdict == HOLDS and "ranks 1 of 3" in c2.statistic
    assert rows[1] == ["a", 0.0, 4.0, 24, 10, 89.0]  # the result record's columns (its scale is "Variance")
    recs[0]["BestVal"] = 80.0
    assert early_claim(recs, 16, 2.0, 10.0)[0].verdict == FAILS
    recs[2]["BestVal"] = 11.0  # a reference at chance level learned nothing: no verdict either way
    assert early_claim(recs, 16, 2.0, 10.0)[0].verdict == INCONCLUSIVE
    recs[0]["BestVal"] = 10.5  # the median network at chance: the range is noise
    assert early_claim(recs, 16, 2.0, 10.0)[1].verdict == INCONCLUSIVE


def test_feature_amounts_grid_spreads_over_mean_and_skew():
    from projects.feature_amounts.study import choose_grid
    from projects.feature_amounts.variants import generate_variants

    grid = choose_grid(generate_variants(16, 16, 0.05), 12)
    assert len(grid) == 12 == len({(v.mean, v.skew) for v in grid})
    assert len({v.mean for v in grid}) >= 8 and min(v.skew for v in grid) < 0 < max(v.skew for v in grid)
