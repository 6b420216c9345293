"""The depth_limit study's statistics, rules, nulls and preconditions."""
from __future__ import annotations

import numpy as np
import pytest

from shared.study import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED


def test_depth_slope():
    from projects.depth_limit.study import log_log_slope

    assert log_log_slope([8, 32, 128], [1.0, 4.0, 16.0]) == pytest.approx(1.0)
    assert log_log_slope([8, 32, 128], [2.0, 2.0, 2.0]) == pytest.approx(0.0)
