"""Depth-limit ResNet, inits, losses, metrics and the per-step quantities against literal references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from projects.depth_limit import models as M
from projects.depth_limit.pvar import p_variation
from depth_reference import (init_values_reference, macro_scores_reference, omega_reference,
                                            pvar_reference, resnet_forward_reference)
from shared.errors import UsageError
from shared.metrics import topk_accuracy


@pytest.mark.parametrize("init", M.INITS)
@pytest.mark.parametrize("L,alpha,gamma", [(7, 0.5, 0.5), (10, 0.75, 1.0), (4, 0.25, 2.0)])
def test_init_values_match_reference(init, L, alpha, gamma):
    assert np.allclose(M.init_values(init, L, alpha, gamma), init_values_reference(init, L, alpha, gamma), rtol=1e-13)


def test_init_examples_and_readme_variant():
    # L=4, alpha=0.5, gamma=0.5: s = 2.5, m = 4^-2.5 = 1/32
    assert M.init_values("constant", 4, 0.5, 0.5)[0] == pytest.approx(1 / 64)
    assert M.init_values("constant", 4, 0.5, 0.5, dim=3, convention="readme")[0] == pytest.approx(1 / 32 / 9)
    v = M.init_values("lin_inc_sym", 4, 0.5, 0.5)
    assert v[2] == pytest.approx(0.0) and v[0] < 0 and v[3] > 0  # 2i - L = 0 at i = 2; sgn(0) = +1
    m = M.DepthLimitResNet(3, 1, L=4, dim=2, alpha=0.5, gamma=0.5, init="lin_dec")
    assert torch.allclose(m.W[1], torch.full((2, 2), float(M.init_values("lin_dec", 4, 0.5, 0.5)[1])))


def test_ntrunc_bounds_and_fallback():
    g = torch.Generator().manual_seed(0)
    W = M.init_weights(torch.empty(50, 4, 4), "ntrunc", 0.0, 100.0, generator=g)  # m = 50^-1.01, bound m/2
    bound = M.init_values("ntrunc", 50, 0.0, 100.0)[0]
    assert W.abs().max() <= bound + 1e-12 and W.std() > bound / 4  # std sqrt(b) >> b: almost uniform
    W = M.init_weights(torch.empty(3, 2, 2), "ntrunc", 0.5, 0.01)  # m/2 ~ 3^-100.5 / 2 < 1e-9: constant
    assert torch.all(W == W.flatten()[0])


@pytest.mark.parametrize("aug", M.AUGMENTATIONS)
@pytest.mark.parametrize("act", list(M.ACTIVATIONS))
def test_forward_matches_columnwise_reference(aug, act):
    torch.manual_seed(0)
    m = M.DepthLimitResNet(5, 3, L=6, dim=4, alpha=0.75, init="constant", activation=act, augmentation=aug, seed=1)
    with torch.no_grad():
        m.W.copy_(0.3 * torch.randn(6, 4, 4))
    m = m.double()
    x = torch.randn(7, 5, dtype=torch.float64)
    ref = resnet_forward_reference(x, m.U_in, m.U_out, list(m.W.detach()), 6 ** -0.75, M.ACTIVATIONS[act], aug)
    assert torch.allclose(m(x), ref, atol=1e-12)
    # batched weights: row g of the output is the model with W_batch[g]
    Wb = torch.stack([m.W.detach(), 2 * m.W.detach()])
    out = m.forward_with_weights(x, Wb)
    ref2 = resnet_forward_reference(x, m.U_in, m.U_out, list(2 * m.W.detach()), 6 ** -0.75, M.ACTIVATIONS[act], aug)
    assert torch.allclose(out[0], ref, atol=1e-12) and torch.allclose(out[1], ref2, atol=1e-12)


def test_only_blocks_are_trainable_and_seeded():
    a = M.DepthLimitResNet(784, 10, L=3, dim=5, seed=3)
    b = M.DepthLimitResNet(784, 10, L=3, dim=5, seed=3)
    assert [n for n, _ in a.named_parameters()] == ["W"]
    assert torch.equal(a.U_in, b.U_in) and torch.equal(a.U_out, b.U_out)
    assert a.U_in.abs().max() <= 1 / math.sqrt(784)  # default Linear init bound
    assert len(a.export_weights()) == 3 and a.export_weights()[0].shape == (5, 5)


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="--update-rule"):
        M.DepthLimitResNet(2, 1, augmentation="skipp")
    with pytest.raises(UsageError, match="--init"):
        M.DepthLimitResNet(2, 1, init="zeros")
    with pytest.raises(UsageError, match="--activation"):
        M.DepthLimitResNet(2, 1, activation="swish")
    with pytest.raises(UsageError, match="p-var"):
        M.pvar_metrics(torch.zeros(3, 1, 1), 1.5, 0.5)


def test_p_loss_and_readme_variant():
    yhat = torch.tensor([[1.0], [2.0], [-1.0]])
    y = torch.tensor([0.0, 0.0, 1.0])
    assert float(M.p_loss(yhat, y, 3.0)) == pytest.approx((1 + 8 + 8) / 3)
    assert float(M.p_loss(yhat, y, 3.0, "readme")) == pytest.approx((1 + 8 + 8) / 9)
    # the original's formula: vector norm to the power p, mean over the batch
    orig = torch.linalg.vector_norm(y.view(-1, 1) - yhat, ord=3.0, dim=-1).pow(3.0).mean()
    assert float(M.p_loss(yhat, y, 3.0)) == pytest.approx(float(orig))


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("conv", ["code", "readme"])
def test_omega_matches_per_sample_reference(task, conv):
    torch.manual_seed(0)
    if task == "classification":
        yhat, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 4, (9,))
        per = lambda z, t: F.cross_entropy(z, t, reduction="none")  # noqa: E731
    else:
        yhat, y = torch.randn(9, 1, dtype=torch.float64), torch.randn(9, 1, dtype=torch.float64)
        per = lambda z, t: (t - z).abs().pow(2.5).sum(-1)  # noqa: E731
    loss = M.make_loss(task, 2.5)
    assert M.omega(yhat, y, loss, conv) == pytest.approx(omega_reference(yhat, y, per, conv), rel=1e-10)


def test_omega_cross_entropy_closed_form():
    z = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    g = torch.softmax(z, -1) - F.one_hot(y, 3)
    assert M.omega(z, y, M.make_loss("classification")) == pytest.approx(float((g ** 2).sum() / 5 ** 3))


def test_classification_scores_match_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n, k = int(rng.integers(1, 40)), int(rng.integers(2, 6))
        logits = torch.tensor(rng.standard_normal((n, k)))
        target = torch.tensor(rng.integers(0, k, n))
        got = M.classification_scores(logits, target, k)
        ref = macro_scores_reference(logits.argmax(-1).numpy(), target.numpy(), k)
        for key in ref:
            assert got[key] == pytest.approx(ref[key]), key


def test_weight_path_and_pvar_metrics():
    torch.manual_seed(0)
    W = torch.randn(8, 3, 3)
    x = M.weight_path(W, 0.25)
    assert x.shape == (8, 9) and np.allclose(x[2], 8 ** 0.25 * W[2].reshape(-1).double().numpy())
    vals = M.pvar_metrics(W, 2.0, 0.25)
    assert list(vals) == ["2.000-variation", "1.000-variation", "1.500-variation"]
    assert vals["2.000-variation"] == pytest.approx(pvar_reference(x, 2.0)[0] ** 0.5)
    assert vals["1.500-variation"] == pytest.approx(pvar_reference(x, 1.5)[0] ** (1 / 1.5))
    assert vals["1.000-variation"] == pytest.approx(np.linalg.norm(np.diff(x, axis=0), axis=1).sum())
    assert M.pvar_keys(3.0) == ("3.000-variation", "1.500-variation", "2.250-variation")
    # a list of exported matrices gives the same path
    assert np.allclose(M.weight_path(list(W), 0.25), x)
    assert p_variation(x, 2.0).norm == pytest.approx(vals["2.000-variation"])


def test_dynamic_lr_rule():
    assert M.dynamic_lr(0.1, 2.0, "relu") == pytest.approx(10 * 0.1 / 4)
    assert M.dynamic_lr(0.1, 2.0, "tanh") == pytest.approx(2 * 0.1 / 4)
    assert M.dynamic_lr(0.1, 0.0, "tanh") is None


def test_cifar_resnet_shapes_scaling_and_lr():
    net = M.cifar_resnet(56)
    assert net.delta == pytest.approx(9 ** -0.75)
    assert sum(isinstance(m, M.ScaledBasicBlock) for m in net.modules()) == 27
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert convs + 1 == 56  # 6n + 1 convs + 1 linear = depth
    net.eval()
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert M.cifar_lr(56) == pytest.approx(56 ** 0.45) and M.cifar_lr(224) == pytest.approx(11.4, abs=0.05)
    with pytest.raises(UsageError, match="--L"):
        M.cifar_resnet(20)
    blk = M.ScaledBasicBlock(16, 32, 2, 0.5)
    assert blk(torch.randn(1, 16, 8, 8)).shape == (1, 32, 4, 4)


def test_topk_accuracy_is_per_sample():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    target = torch.tensor([1, 0, 1])
    # sample 0: top2 {0,1} contains 1; sample 1: top2 {2,1} lacks 0; sample 2: top2 {0,2} lacks 1
    assert topk_accuracy(logits, target, 2) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, target, 1) == pytest.approx(0.0)
