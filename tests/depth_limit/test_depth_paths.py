"""Path statistics over layers against literal computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from projects.depth_limit import paths as P
from depth_reference import pvar_reference
from shared.errors import UsageError


def _runs():
    g = torch.Generator().manual_seed(0)
    runs = []
    for L in (4, 8):
        for r in range(3):
            runs.append((f"L{L}-r{r}", [torch.randn(3, 3, generator=g) for _ in range(L)]))
    return runs


def test_grouping_and_norm_curves():
    groups = P.group_by_depth(_runs())
    assert list(groups) == [4, 8] and all(len(v) == 3 for v in groups.values())
    curves = P.norm_curves(groups, beta=0.5)
    c = curves[0]
    assert c.L == 4 and np.allclose(c.x, [0, 1 / 3, 2 / 3, 1])
    vals = []
    for _, w in groups[4]:
        vals.append([math.sqrt(4) * float(np.linalg.norm(w[k])) for k in range(4)])
    vals = np.array(vals)
    assert np.allclose(c.mean, vals.mean(0))
    sd = np.sqrt(((vals - vals.mean(0)) ** 2).sum(0) / 2)
    assert np.allclose(c.half_width, 1.96 * sd / math.sqrt(3))


def test_single_run_has_zero_band():
    mean, half = P.mean_band(np.array([[1.0, 2.0]]))
    assert np.allclose(mean, [1, 2]) and np.all(half == 0)


def test_pvar_table_and_format():
    groups = P.group_by_depth(_runs())
    table = P.pvar_table(groups, 2.0, 0.25)
    _, w = groups[8][1]
    x = 8 ** 0.25 * w.reshape(8, -1)
    assert table[8][1] == pytest.approx(pvar_reference(x, 2.0)[0] ** 0.5)
    text = P.format_pvar_table(table, 2.0)
    assert "Max 2-variation for $W_L$" in text and f"{max(table[4]):.4g}" in text


def test_entries():
    assert P.parse_entries(None) == P.DEFAULT_ENTRIES
    assert P.parse_entries("0,1; 2,2") == ((0, 1), (2, 2))
    with pytest.raises(UsageError, match="--entries"):
        P.parse_entries("0;1")
    groups = P.group_by_depth(_runs())
    curves = P.entry_curves(groups, ((0, 1),), 0.5)
    L, label, x, y = curves[(0, 1)][0]
    assert L == 4 and np.allclose(y, 2.0 * groups[4][0][1][:, 0, 1])
    with pytest.raises(UsageError, match="outside"):
        P.entry_curves(groups, ((7, 3),), 0.5)


def test_as_stack_shapes():
    assert P.as_stack(np.zeros((5, 2, 2))).shape == (5, 2, 2)
    assert P.as_stack(np.zeros((5, 1))).shape == (5, 1, 1)
    with pytest.raises(UsageError):
        P.as_stack([])
