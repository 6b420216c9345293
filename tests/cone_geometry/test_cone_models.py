"""Teachers, students, the student convolution and the inits of projects/cone_geometry/models.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import cone_reference as reference
from projects.cone_geometry import models
from projects.cone_geometry.models import StudentConv, build
from shared.errors import UsageError


def linears(model):
    return [m for m in model.classifier if isinstance(m, nn.Linear)]


def convs(model):
    return [m for m in model.features if isinstance(m, nn.Conv2d)]


# ---------------------------------------------------------------------------------------------------------------
# Architectures


@pytest.mark.parametrize("arch,in_linear", [
    ("VGG7", 8 * 8 * 128), ("VGG9", 4 * 4 * 256), ("VGG11exp", 2 * 2 * 512), ("VGG11", 512), ("VGG13", 512),
    ("VGG16", 512), ("VGG19", 512), ("LeNet5", 8 * 8 * 16), ("LeNet8", 8 * 8 * 16), ("LeNet9", 4 * 4 * 64),
])
def test_teacher_cifar_shapes(arch, in_linear):
    m = build(arch, 10, 3, 32)
    lin = linears(m)
    assert lin[0].in_features == in_linear
    hidden = [512, 512] if arch.startswith("VGG") else [120, 84]
    assert [l.out_features for l in lin] == hidden + [10]
    cfg = models.CFGS[arch]
    assert [c.out_channels for c in convs(m)] == [v for v in cfg if v != "M"]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs(m))
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.features) == cfg.count("M")
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())


def test_mnist_sizes_floor_like_the_original():
    assert linears(build("LeNet9", 10, 1, 28))[0].in_features == 3 * 3 * 64  # 28 -> 14 -> 7 -> 3
    assert linears(build("VGG11exp", 10, 1, 28))[0].in_features == 1 * 1 * 512
    assert linears(build("LeNet8", 10, 1, (28, 20)))[0].in_features == 7 * 5 * 16


def test_too_small_inputs_are_usage_errors():
    with pytest.raises(UsageError, match="at least 32x32"):
        build("VGG13", 10, 1, 28)
    with pytest.raises(UsageError, match="unknown architecture"):
        build("VGG12", 10, 3, 32)


@pytest.mark.parametrize("arch,hidden", [
    ("Student_LeNet5", [120]), ("Student_LeNet8", [120]), ("Student_LeNet9", [512, 512]),
    ("Student_VGG9", [512, 512]),
])
def test_student_classifiers(arch, hidden):
    m = build(arch, 10, 3, 32)
    assert [l.out_features for l in linears(m)] == hidden + [10]
    assert all(isinstance(c, StudentConv) for c in convs(m))


@pytest.mark.parametrize("arch", ["LeNet5", "LeNet9", "VGG7", "Student_LeNet8", "Student_VGG7"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_forward_shapes(arch, channels, size):
    m = build(arch, 10, channels, size)
    assert m(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_all_constructors_exist_and_take_the_common_signature():
    assert set(models.CONSTRUCTORS) == set(models.ARCHS) and len(models.ARCHS) == 20
    m = models.CONSTRUCTORS["Student_LeNet9"](num_classes=7, in_channels=1, input_size=28, init="h_uniform")
    assert m.arch == "Student_LeNet9" and linears(m)[-1].out_features == 7
    assert models.student_of("VGG9") == models.student_of("Student_VGG9") == "Student_VGG9"


def test_student_parameter_layout():
    m = build("Student_VGG7", 10, 3, 32)
    first, second = convs(m)[:2]
    assert first.weight.shape == (64 * 3, 1, 3, 3) and first.bias.shape == (64 * 3,)
    assert first.groups == 3 and second.groups == 64 and second.weight.shape == (64 * 64, 1, 3, 3)
    # the features' parameters are [W0, b0, W1, b1, ...] (nesting relies on this order)
    names = [n for n, _ in m.features.named_parameters()]
    assert names[:4] == ["0.weight", "0.bias", "1.weight", "1.bias"]


# ---------------------------------------------------------------------------------------------------------------
# The student convolution against the literal formula


@pytest.mark.parametrize("n_in,n_out,size", [(1, 3, 5), (3, 4, 6), (2, 2, 7)])
def test_student_conv_matches_literal_formula(n_in, n_out, size):
    torch.manual_seed(n_in * 10 + n_out)
    layer = StudentConv(n_in, n_out)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()  # nonzero per-(c, o) biases: they must act inside the ReLU
    x = torch.randn(2, n_in, size, size)
    expected = reference.student_conv(x, layer.weight, layer.bias, n_in, n_out)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # the bias is inside the ReLU: moving the summed bias outside gives a different function
    outside = reference.student_conv(x, layer.weight, torch.zeros_like(layer.bias), n_in, n_out)
    outside = outside + layer.bias.view(n_in, n_out).sum(0).view(1, -1, 1, 1)
    assert not torch.allclose(layer(x), outside, atol=1e-3)


def test_channel_filters_index_is_c_times_v_plus_o():
    layer = StudentConv(3, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(12.0).view(12, 1, 1, 1).expand(12, 1, 3, 3))
        layer.bias.copy_(torch.arange(12.0))
    w, b = layer.channel_filters()
    for c in range(3):
        for o in range(4):
            assert w[c, o, 1, 1].item() == c * 4 + o and b[c, o].item() == c * 4 + o


# ---------------------------------------------------------------------------------------------------------------
# Initialization


def _std(t):
    return t.detach().float().std().item()


def test_x_gaussian_and_x_uniform_std():
    m = build("VGG9", 10, 3, 32, init="x_gaussian")
    w = convs(m)[5].weight  # 256 -> 256, fan_in = fan_out = 2304
    expected = math.sqrt(2.0) * math.sqrt(2.0 / (2304 + 2304))
    assert _std(w) == pytest.approx(expected, rel=0.03)
    m = build("VGG9", 10, 3, 32, init="x_uniform")
    assert _std(convs(m)[5].weight) == pytest.approx(expected, rel=0.03)
    assert m.classifier[0].weight.abs().max().item() <= math.sqrt(2.0) * math.sqrt(6.0 / (4096 + 512)) + 1e-6


def test_kaiming_inits_use_fan_in():
    for init in ("h_uniform", "h_gaussian"):
        m = build("VGG9", 10, 3, 32, init=init)
        assert _std(convs(m)[5].weight) == pytest.approx(math.sqrt(2.0 / 2304), rel=0.03)


def test_fallback_init():
    m = build("VGG9", 10, 3, 32, init="fallback")
    assert _std(convs(m)[5].weight) == pytest.approx(math.sqrt(2.0 / (9 * 256)), rel=0.03)
    assert _std(m.classifier[0].weight) == pytest.approx(0.01, rel=0.03)


def test_student_fans_follow_the_grouped_weight_shape():
    m = build("Student_VGG9", 10, 3, 32, init="x_gaussian")
    w = convs(m)[5].weight  # (256 * 256, 1, 3, 3): fan_in = 9, fan_out = 9 * 65536
    expected = math.sqrt(2.0) * math.sqrt(2.0 / (9 + 9 * 65536))
    assert _std(w) == pytest.approx(expected, rel=0.03)


def test_biases_are_zero_and_lenet_teacher_linears_are_initialized():
    m = build("LeNet9", 10, 3, 32, init="fallback")
    for layer in convs(m) + linears(m):
        assert torch.count_nonzero(layer.bias) == 0
    # PyTorch's default would give std 1/sqrt(3 * 1024) = 0.018 for the first Linear; the documented init 0.01
    assert _std(m.classifier[0].weight) == pytest.approx(0.01, rel=0.05)


def test_unknown_init_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown --init"):
        build("LeNet5", 10, 1, 28, init="xavier")


# ---------------------------------------------------------------------------------------------------------------
# Original checkpoints


def test_convert_original_student_state_dict():
    ours = build("Student_LeNet8", 10, 1, 28)
    # original layout: [conv, ReLU, Bias] per conv -> conv indices 0, 3, (pool 6), 7, 10, (pool 13)
    original_index = {0: 0, 1: 3, 3: 7, 4: 10}
    state = {}
    for k, v in ours.state_dict().items():
        part = k.split(".")
        if part[0] == "features":
            part[1] = str(original_index[int(part[1])])
        state["module." + ".".join(part)] = v.clone() + 1.0
    converted = models.convert_original_state_dict(state, "Student_LeNet8")
    ours.load_state_dict(converted, strict=True)
    assert torch.equal(ours.features[3].weight, state["module.features.7.weight"])
