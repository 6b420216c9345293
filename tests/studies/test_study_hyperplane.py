"""The hyperplane_bias study's statistics, rules, nulls and preconditions."""
from __future__ import annotations

import numpy as np
import pytest

from shared.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED


def test_hyperplane_regularity_rule():
    from projects.hyperplane_bias.study import regularity_claims

    bias = {"init": {0: 0.01, 1: 0.02, 2: 0.015}, "clean": {0: 0.3, 1: 0.32, 2: 0.31},
            "noise": {0: 0.1, 1: 0.12, 2: 0.08}, "shuffle": {0: 0.35, 1: 0.2, 2: 0.4}}
    c = {x.name: x.verdict for x in regularity_claims(bias)}
    assert c["emerges_from_training"] == HOLDS
    assert c["correlates_with_learning_noise"] == HOLDS
    assert c["correlates_with_learning_shuffle"] == INCONCLUSIVE
