"""The VGG built from widths: layout, shapes, BN option, inits, and agreement with the capacity formula."""
import math

import pytest
import torch
from torch import nn

from projects.feature_amounts import models as M
from projects.feature_amounts.variants import base_widths, capacity, generate_variants
from shared.errors import UsageError

SMALL16 = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_layout_d16():
    m = M.feature_vgg(10, 3, 32, SMALL16)
    blocks = list(m.features)
    assert len(blocks) == 5
    per_block = [sum(isinstance(x, nn.Conv2d) for x in b) for b in blocks]
    assert per_block == [2, 2, 3, 3, 3]
    cs = convs(m)
    assert [c.in_channels for c in cs] == [3] + SMALL16[:12]
    assert [c.out_channels for c in cs] == SMALL16[:13]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in cs)
    assert all(isinstance(b[-1], nn.MaxPool2d) for b in blocks)
    bns = [x for x in m.modules() if isinstance(x, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(bns) == 15 and all(b.eps == 1e-4 for b in bns)
    lin = [x for x in m.classifier if isinstance(x, nn.Linear)]
    assert [(l.in_features, l.out_features, l.bias is not None) for l in lin] == [(15, 16, False), (16, 17, False), (17, 10, True)]
    kinds = [type(x).__name__ for x in m.classifier]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]
    assert m.classifier[7].p == 0.5


@pytest.mark.parametrize("depth,per_block", [(13, [2, 2, 2, 2, 2]), (19, [2, 2, 4, 4, 4]), (10, [2, 2, 1, 1, 1])])
def test_other_depths(depth, per_block):
    w = list(range(3, 3 + depth - 1))
    m = M.feature_vgg(7, 3, 32, w)
    assert [sum(isinstance(x, nn.Conv2d) for x in b) for b in m.features] == per_block
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_no_bn_when_eps_zero():
    m = M.feature_vgg(10, 3, 32, SMALL16, bn_eps=0)
    assert not any(isinstance(x, (nn.BatchNorm1d, nn.BatchNorm2d)) for x in m.modules())


# 28 -> 14 -> 7 -> 3 -> 1: the fifth pool is skipped; 8 -> 4 -> 2 -> 1: the last two are skipped
@pytest.mark.parametrize("size,pools,hw", [(32, 5, (1, 1)), (28, 4, (1, 1)), (8, 3, (1, 1)), (64, 5, (2, 2))])
def test_small_inputs_skip_pools(size, pools, hw):
    m = M.feature_vgg(10, 1, size, SMALL16)
    assert m.pools == pools and m.out_hw == hw
    assert m(torch.randn(2, 1, size, size)).shape == (2, 10)
    assert m.classifier[1].in_features == 15 * hw[0] * hw[1]


def test_true_params_equal_capacity_formula_without_bn():
    # 3 channels, 32 px (1x1 after the pools), no BN: the only difference is the classifier bias
    for v in generate_variants(16)[::40]:
        m = M.feature_vgg(10, 3, 32, v.widths, bn_eps=0)
        assert M.count_parameters(m) == capacity(v.widths, 10) + 10


def test_reference_vgg_d():
    m = M.vgg_reference(10, 3, 32)
    assert tuple(m.widths) == tuple(base_widths(16, 32))
    assert [c.out_channels for c in convs(m)] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
    big = M.vgg_reference(1000, 3, 224)
    assert big.widths[-1] == 4096 and big.classifier[1].in_features == 512 * 7 * 7


def _std_bound(w):
    fan_out, fan_in = w.shape[0] * w[0, 0].numel(), w.shape[1] * w[0, 0].numel()
    return fan_in, fan_out


@pytest.mark.parametrize("scheme", M.INITS)
def test_inits(scheme):
    torch.manual_seed(0)
    m = M.feature_vgg(10, 3, 32, [64] * 15, init=scheme)
    w = convs(m)[5].weight.detach()
    fan_in, fan_out = _std_bound(w)
    expected_std = {"kaiming-normal": math.sqrt(2 / fan_in), "kaiming-uniform": math.sqrt(2 / fan_in),
                    "xavier-normal": math.sqrt(2 / (fan_in + fan_out)),
                    "xavier-uniform": math.sqrt(2 / (fan_in + fan_out))}[scheme]
    assert w.std().item() == pytest.approx(expected_std, rel=0.05)
    if scheme.endswith("uniform"):
        assert w.abs().max().item() <= math.sqrt(3) * expected_std + 1e-6
        assert w.abs().max().item() > 0.95 * math.sqrt(3) * expected_std
    else:
        assert w.abs().max().item() > 2.5 * expected_std  # normal tails, impossible for the uniform bound
    assert torch.all(m.classifier[-1].bias == 0)
    bn = m.features[0][1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_bad_inputs():
    with pytest.raises(UsageError, match="--init"):
        M.feature_vgg(10, 3, 32, SMALL16, init="orthogonal")
    with pytest.raises(UsageError, match="depth"):
        M.feature_vgg(10, 3, 32, SMALL16[:-1])
    with pytest.raises(UsageError):
        M.feature_vgg(10, 3, 32, SMALL16, bn_eps=-1)
    with pytest.raises(UsageError):
        M.feature_vgg(10, 3, 32, [0] + SMALL16[1:])
