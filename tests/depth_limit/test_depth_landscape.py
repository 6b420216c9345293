"""Landscape directions, the cell planner and batched evaluation against the one-point-at-a-time reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from projects.depth_limit import landscape as LS
from projects.depth_limit.models import DepthLimitResNet
from depth_reference import surface_reference
from shared.errors import UsageError


def _model(aug="skip", L=5, dim=3, out=4):
    m = DepthLimitResNet(6, out, L=L, dim=dim, alpha=0.5, augmentation=aug, seed=0)
    with torch.no_grad():
        m.W.copy_(0.2 * torch.randn(L, dim, dim, generator=torch.Generator().manual_seed(1)))
    return m


def test_directions_are_orthogonal_filter_normalised_and_seeded():
    theta = {"W": torch.randn(6, 4, 4), "b": torch.randn(4)}
    d1, d2 = LS.random_directions(theta, seed=7, res=0.1)
    e1, e2 = LS.random_directions(theta, seed=7, res=0.1)
    assert torch.equal(d1["W"], e1["W"]) and torch.equal(d2["W"], e2["W"])
    f1, _ = LS.random_directions(theta, seed=8, res=0.1)
    assert not torch.allclose(d1["W"], f1["W"])
    for k in range(6):
        a, b, w = d1["W"][k].double(), d2["W"][k].double(), theta["W"][k].double()
        assert float((a * b).sum()) == pytest.approx(0.0, abs=1e-10)
        assert float(a.norm()) == pytest.approx(0.1 * float(w.norm()), rel=1e-8)
        assert float(b.norm()) == pytest.approx(0.1 * float(w.norm()), rel=1e-8)
    assert torch.all(d1["b"] == 0) and torch.all(d2["b"] == 0)
    with pytest.raises(UsageError, match="--res"):
        LS.random_directions(theta, res=0.0)


def test_planner_covers_grid_once_and_resumes():
    plan = LS.plan_cells(7, 3)
    cover = np.zeros((7, 7), int)
    for c in plan:
        cover[c.i0:c.i1, c.j0:c.j1] += 1
    assert np.all(cover == 1) and [c.index for c in plan] == list(range(9))
    assert [c.index for c in LS.pending_cells(plan, {0, 4, 8})] == [1, 2, 3, 5, 6, 7]
    shares = [LS.assign_cells(plan, r, 4) for r in range(4)]
    assert sorted(c.index for s in shares for c in s) == list(range(9))
    surf = LS.assemble(7, plan, {0: np.ones((3, 3))})
    assert np.all(surf[:3, :3] == 1) and np.isnan(surf[3:, :]).all()
    with pytest.raises(UsageError, match="shape"):
        LS.assemble(7, plan, {8: np.ones((3, 3))})  # the corner cell is 1 x 1


@pytest.mark.parametrize("aug", ["skip", "inc_skip"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_batched_surface_equals_pointwise_reference(aug, task):
    torch.manual_seed(0)
    m = _model(aug, out=4 if task == "classification" else 1)
    x = torch.randn(10, 6)
    y = torch.randint(0, 4, (10,)) if task == "classification" else torch.randn(10, 1)
    d1, d2 = LS.random_directions({"W": m.W.detach()}, seed=3, res=0.3)
    steps = 5
    batched = LS.render_surface(steps, LS.depth_limit_evaluator(m, d1["W"], d2["W"], x, y, task, dtype=torch.float64), cell_size=2,
                                batch_points=3)

    theta = m.W.detach().double().clone()
    md = _model(aug, out=4 if task == "classification" else 1).double()

    def loss_at(w):
        with torch.no_grad():
            md.W.copy_(w)
            out = md(x.double())
            if task == "classification":
                return F.cross_entropy(out, y)
            return (y.double() - out).pow(2).sum(-1).mean()

    ref = surface_reference(loss_at, theta, d1["W"], d2["W"], steps)
    assert np.allclose(batched, ref, rtol=1e-10, atol=1e-12)
    # centre of the grid is the trained model
    assert batched[2, 2] == pytest.approx(float(loss_at(theta)))
    # the pointwise baseline evaluator agrees too
    point = LS.render_surface(steps, LS.pointwise_evaluator(_model(aug, out=4 if task == "classification" else 1),
                                                            d1["W"], d2["W"], x, y, task, dtype=torch.float64), cell_size=5)
    assert np.allclose(point, ref, rtol=1e-10)


def test_functional_vmap_evaluator_matches_depth_limit_evaluator():
    m = _model()
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    d1, d2 = LS.random_directions({"W": m.W.detach()}, seed=1, res=0.2)
    fast = LS.render_surface(4, LS.depth_limit_evaluator(m, d1["W"], d2["W"], x, y, "classification", dtype=torch.float64))
    generic = LS.render_surface(4, LS.functional_evaluator(m.double(), d1, d2, x.double(), y, "classification"))
    assert np.allclose(fast, generic, rtol=1e-10)


def test_functional_evaluator_on_a_conv_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3)).double()
    x, y = torch.randn(5, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    theta = {k: v.detach() for k, v in net.named_parameters()}
    d1, d2 = LS.random_directions(theta, seed=0, res=0.5)
    surf = LS.render_surface(3, LS.functional_evaluator(net, d1, d2, x, y, "classification"), batch_points=4)
    with torch.no_grad():
        for k, v in net.named_parameters():
            v.add_(1.0 * d1[k] - 1.0 * d2[k])  # column j=2 (a=+1), row i=0 (b=-1)
        expected = float(F.cross_entropy(net(x), y))
    assert surf[0, 2] == pytest.approx(expected, rel=1e-10)
