"""Architectures: shapes on 8/28/32-pixel inputs, the seed's initializations, pretrained weights from the cache only."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from projects.hyperplane_bias import models as M
from projects.hyperplane_bias.models import build_model, canonical_arch
from shared.errors import UsageError


@pytest.mark.parametrize("arch", ["lenet", "alexnet", "vgg11", "vgg11_bn", "mlp_bn"])
@pytest.mark.parametrize("c,s", [(1, 28), (3, 32), (1, 8)])
def test_forward_shapes_on_small_inputs(arch, c, s):
    m = build_model(arch, 7, c, s, seed=0).eval()
    with torch.no_grad():
        out = m(torch.randn(2, c, s, s))
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    first = next(x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear)))
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) == \
        (c if isinstance(first, nn.Conv2d) else c * s * s)


def test_vgg_is_torchvision_at_32_and_uses_ceil_pools_otherwise():
    tv = torchvision.models.vgg13(num_classes=10)
    m32 = build_model("vgg13", 10, 3, 32)
    assert str(m32) == str(tv)
    m28 = build_model("vgg13", 10, 1, 28)
    assert all(p.ceil_mode for p in m28.features if isinstance(p, nn.MaxPool2d))
    assert m28.features[0].in_channels == 1


def test_alexnet_small_input_stem_keeps_weight_shapes():
    big = build_model("alexnet", 10, 3, 64)
    assert str(big) == str(torchvision.models.alexnet(num_classes=10))
    small = build_model("alexnet", 10, 3, 32)
    assert small.features[0].stride == (2, 2) and small.features[0].padding == (5, 5)
    assert all(p.padding == 1 for p in small.features if isinstance(p, nn.MaxPool2d))
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in big.state_dict().items()}
    with pytest.raises(RuntimeError):  # why the stem is adapted: torchvision's AlexNet cannot run on 32x32
        torchvision.models.alexnet(num_classes=10)(torch.randn(1, 3, 32, 32))


def test_first_conv_for_one_channel_is_kaiming_fan_out_with_zero_bias():
    torch.manual_seed(0)
    m = build_model("alexnet", 10, 1, 28)
    conv = m.features[0]
    assert conv.weight.shape == (64, 1, 11, 11) and torch.count_nonzero(conv.bias) == 0
    expected_std = math.sqrt(2.0 / (64 * 11 * 11))
    assert float(conv.weight.std()) == pytest.approx(expected_std, rel=0.1)


def test_lenet_structure_and_xavier_init():
    m = build_model("lenet", 10, 3, 32, seed=1)
    convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
    lins = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [c.out_channels for c in convs] == [6, 6, 16, 16, 64, 64] and all(c.kernel_size == (3, 3) for c in convs)
    assert [(l.in_features, l.out_features) for l in lins] == [(576, 120), (120, 84), (84, 10)]
    assert sum(isinstance(x, nn.MaxPool2d) for x in m.modules()) == 3
    for layer in convs + lins:
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
        bound = math.sqrt(2.0) * math.sqrt(6.0 / (fan_in + fan_out))
        assert float(layer.weight.abs().max()) <= bound and float(layer.weight.abs().max()) > 0.9 * bound
        assert torch.count_nonzero(layer.bias) == 0
    with pytest.raises(UsageError):
        build_model("lenet", 10, 1, 7)


def test_vgg19_orig_is_n0_001_everywhere_including_the_1_channel_stem():
    torch.manual_seed(0)
    m = build_model("vgg19_orig", 10, 1, 28)
    for layer in (x for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))):
        assert torch.count_nonzero(layer.bias) == 0
        if layer.weight.numel() > 5000:
            assert float(layer.weight.std()) == pytest.approx(0.01, rel=0.1)
    assert float(m.features[0].weight.std()) == pytest.approx(0.01, rel=0.3)  # 576 weights


def test_mlp_layout():
    m = build_model("mlp", 10, 3, 32, seed=0)
    lins = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lins] == \
        [(3072, 4096)] + [(4096, 1024), (1024, 4096)] * 3 + [(4096, 10)]
    assert not any(isinstance(x, nn.BatchNorm1d) for x in m.modules())
    assert sum(isinstance(x, nn.BatchNorm1d) for x in build_model("mlp_bn", 10, 1, 8).modules()) == 4
    assert float(lins[1].weight.std()) == pytest.approx(math.sqrt(2.0 / 1024), rel=0.05)  # fan-out Kaiming


def test_arch_names_and_aliases():
    assert canonical_arch("vgg16bn") == "vgg16_bn"
    with pytest.raises(UsageError, match="choose one of"):
        canonical_arch("resnet50")
    with pytest.raises(UsageError):
        build_model("lenet", 1, 1, 8)


def test_pretrained_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UsageError) as e:
        build_model("vgg11", 10, 3, 32, pretrained=True)
    msg = str(e.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg11-8a719046.pth") in msg and "download" in msg
    for arch in ("lenet", "mlp", "vgg19_orig"):
        with pytest.raises(UsageError):
            build_model(arch, 10, 3, 32, pretrained=True)


def test_pretrained_file_is_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = M.pretrained_weights_file("alexnet")
    path.parent.mkdir(parents=True)
    torch.save({"features.0.weight": torch.ones(1)}, path)
    assert torch.equal(M.load_pretrained_state("alexnet")["features.0.weight"], torch.ones(1))
    with pytest.raises(UsageError, match="lacks"):
        M.apply_pretrained(build_model("alexnet", 10, 3, 32), M.load_pretrained_state("alexnet"), "alexnet")


def test_apply_pretrained_new_head_and_gray_stem():
    torch.manual_seed(0)
    imagenet = torchvision.models.alexnet(num_classes=1000)
    state = imagenet.state_dict()
    m = build_model("alexnet", 10, 1, 64)
    fresh = M.apply_pretrained(m, state, "alexnet")
    assert fresh == ["classifier.6.weight", "classifier.6.bias"]
    own = m.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in own if k not in fresh and k != "features.0.weight")
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():  # the 1-channel stem sees a gray image as the RGB stem sees it on 3 channels
        assert torch.allclose(m.features[0](x), imagenet.features[0](x.repeat(1, 3, 1, 1)), atol=1e-5)
    same = build_model("alexnet", 1000, 3, 64)
    assert M.apply_pretrained(same, state, "alexnet") == []


def test_registered_in_the_shared_registry_and_rebuilt_from_the_spec():
    from shared.models import MODELS, rebuild

    assert {"lenet", "alexnet", "vgg16_bn", "vgg19_orig", "mlp_supp", "mlp_supp_bn"} <= \
        set(MODELS.names(project="hyperplane_bias"))
    m = build_model("mlp", 10, 1, (8, 6), pretrained=False, seed=0)  # the supplement MLP, non-square input
    assert m.geomlab_spec["arch"] == "mlp_supp" and m.geomlab_spec["options"] == {}
    again = rebuild(m.geomlab_spec)
    assert [p.shape for p in again.parameters()] == [p.shape for p in m.parameters()]
    assert m[1].in_features == 48
    vgg = build_model("vgg11", 10, 3, (32, 28))
    assert all(p.ceil_mode for p in vgg.features if isinstance(p, nn.MaxPool2d))
