"""Architectures of the hyperplane-bias project (Gamba et al. 2020).

Every constructor has the signature ``(num_classes, in_channels, input_size, pretrained=False) -> nn.Module``.

* ``lenet``: the seed's 9-layer LeNet (6 convs + 3 linear layers): convs 6,6,M,16,16,M,64,64,M (3x3, padding 1,
  ReLU), ``AdaptiveAvgPool2d(3)``, then 576 -> 120 -> 84 -> K with ReLU and Dropout; Xavier-uniform (gain sqrt 2)
  weights, zero biases.
* ``alexnet``, ``vgg11/13/16/19`` and ``vgg11_bn/13_bn/16_bn/19_bn``: torchvision's models with ``num_classes``.
  With ``in_channels != 3`` the first conv is built with that many input channels and a Kaiming-normal (fan-out)
  weight and zero bias, as the original did.
* ``vgg19_orig``: torchvision's VGG19 with every conv and linear weight drawn from N(0, 0.01^2), zero biases.
* ``mlp`` / ``mlp_bn`` (paper supplement): D -> 4096, three 4096 -> 1024 -> 4096 bottlenecks, -> K, with Dropout(0.2)
  [+ BatchNorm1d] + ReLU after the first layer and after each bottleneck; Kaiming-normal (fan-out) weights, zero biases.

Small inputs (the original crashed on them, see README "Differences from the original code"):

* VGG: five 2x2 max-pools need inputs divisible by 32; for other sizes (28x28 MNIST, 8x8 digits) the pools use
  ``ceil_mode=True`` (28 -> 14 -> 7 -> 4 -> 2 -> 1). At 32 and 224 the network is exactly torchvision's.
* AlexNet: torchvision's stem (11x11 conv, stride 4, three 3x3/2 pools) needs inputs of at least 63 pixels. Below
  that, the first conv uses stride 2 and padding 5 and the pools use padding 1 (32 -> 16 -> 8 -> 4 -> 2); all
  weight shapes are unchanged, so pretrained weights still load.

All models follow one layout that the re-initialization code relies on: ``forward(x) = classifier(flatten(
avgpool(features(x))))`` for the conv nets, and a plain ``nn.Sequential`` for the MLPs.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
import torchvision
from torch import nn

from shared.errors import UsageError
from shared.models import register_model

Constructor = Callable[..., nn.Module]

ALEXNET_MIN_INPUT = 63  # smallest input on which torchvision's AlexNet runs (3rd max-pool needs a 3x3 map)


# --------------------------------------------------------------------------------------------------------------
# LeNet (9 layers)

class LeNet(nn.Module):
    """The seed's LeNet: 6 convs (6,6,M,16,16,M,64,64,M) + 3 linear layers."""

    cfg = (6, 6, "M", 16, 16, "M", 64, 64, "M")

    def __init__(self, num_classes: int, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))
        self.classifier = nn.Sequential(
            nn.Linear(64 * 9, 120), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(84, num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight, gain=math.sqrt(2.0))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------------------------------------------
# MLP (supplement)

class MLP(nn.Sequential):
    """Supplement MLP: D -> 4096, 3 x (4096 -> 1024 -> 4096), -> K."""

    def __init__(self, num_classes: int, in_features: int, batch_norm: bool = False, width: int = 4096,
                 bottleneck: int = 1024, blocks: int = 3, dropout: float = 0.2):
        def act(n: int) -> list[nn.Module]:
            return [nn.Dropout(dropout)] + ([nn.BatchNorm1d(n)] if batch_norm else []) + [nn.ReLU(inplace=True)]

        layers: list[nn.Module] = [nn.Flatten(1), nn.Linear(in_features, width), *act(width)]
        for _ in range(blocks):
            layers += [nn.Linear(width, bottleneck), nn.Linear(bottleneck, width), *act(width)]
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------------------
# torchvision models

_TV = {
    "alexnet": ("alexnet", "AlexNet_Weights"),
    "vgg11": ("vgg11", "VGG11_Weights"), "vgg13": ("vgg13", "VGG13_Weights"),
    "vgg16": ("vgg16", "VGG16_Weights"), "vgg19": ("vgg19", "VGG19_Weights"),
    "vgg11_bn": ("vgg11_bn", "VGG11_BN_Weights"), "vgg13_bn": ("vgg13_bn", "VGG13_BN_Weights"),
    "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights"), "vgg19_bn": ("vgg19_bn", "VGG19_BN_Weights"),
}


InputSize = Union[int, Sequence[int]]


def hw(input_size: InputSize) -> tuple[int, int]:
    """(height, width) of an int (square) or (H, W) input size."""
    if isinstance(input_size, (tuple, list)):
        if len(input_size) != 2:
            raise UsageError(f"input size must be an int or (height, width), got {tuple(input_size)}")
        return int(input_size[0]), int(input_size[1])
    return int(input_size), int(input_size)


def _check_sizes(arch: str, num_classes: int, in_channels: int, input_size: InputSize, min_size: int = 1) -> None:
    if num_classes < 2:
        raise UsageError(f"{arch} needs at least 2 classes, got {num_classes}; check the dataset / --subsample-classes")
    if in_channels < 1:
        raise UsageError(f"{arch}: in_channels must be >= 1, got {in_channels}")
    if min(hw(input_size)) < min_size:
        raise UsageError(f"{arch} needs inputs of at least {min_size}x{min_size} pixels, got {hw(input_size)}; "
                         "use a dataset with larger images (or --resize) or another --arch")


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Rebuild features[0] with ``in_channels`` inputs: Kaiming-normal fan-out weight, zero bias (as the original)."""
    old = model.features[0]
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(new.bias)
    model.features[0] = new


def _adapt_small_inputs(arch: str, model: nn.Module, input_size: InputSize) -> None:
    h, w = hw(input_size)
    if arch.startswith("vgg"):
        if h % 32 or w % 32:
            for m in model.features:
                if isinstance(m, nn.MaxPool2d):
                    m.ceil_mode = True
    elif arch == "alexnet" and min(h, w) < ALEXNET_MIN_INPUT:
        conv = model.features[0]
        conv.stride, conv.padding = (2, 2), (5, 5)
        for m in model.features:
            if isinstance(m, nn.MaxPool2d):
                m.padding = 1


def torch_cache_dir() -> Path:
    """Where torchvision keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints`` (default ~/.cache/torch/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def pretrained_weights_file(arch: str) -> Path:
    """The local file torchvision would cache ``arch``'s ImageNet weights in (it may not exist)."""
    if arch not in _TV:
        raise UsageError(f"no pretrained weights exist for --arch {arch}; pretrained is available for: "
                         f"{', '.join(_TV)}")
    enum = getattr(torchvision.models, _TV[arch][1])
    url = enum.IMAGENET1K_V1.url
    return torch_cache_dir() / os.path.basename(url)


def load_pretrained_state(arch: str) -> dict[str, torch.Tensor]:
    """Read ``arch``'s ImageNet weights from the local torch cache, never from the network."""
    path = pretrained_weights_file(arch)
    if not path.is_file():
        enum = getattr(torchvision.models, _TV[arch][1])
        raise UsageError(f"pretrained weights for {arch} not found at {path} and downloads are disabled; "
                         f"copy {enum.IMAGENET1K_V1.url} to that path (or set TORCH_HOME to a folder whose "
                         f"hub/checkpoints/ holds it)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupted / truncated file
        raise UsageError(f"cannot read pretrained weights {path} ({type(e).__name__}: {e}); delete it and copy "
                         "a fresh one") from e


def apply_pretrained(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> list[str]:
    """Copy ImageNet weights into ``model``; returns the names left at their fresh initialization.

    * The first conv of a model with ``in_channels = c != 3`` gets the pretrained filters summed over RGB and
      divided by c on each of its c channels (its response to a gray image equals the RGB net's response to that
      gray image replicated on 3 channels).
    * The last linear layer is kept freshly initialized when ``num_classes != 1000`` (fine-tuning head).
    Anything else that does not match is an error.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise UsageError(f"pretrained file for {arch} lacks {missing[:3]}...; it is not a torchvision {arch} file")
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    first = "features.0"
    fresh: list[str] = []
    new: dict[str, torch.Tensor] = {}
    for name, t in own.items():
        src = state[name]
        if src.shape == t.shape:
            new[name] = src
        elif name == f"{first}.weight" and src.shape[1] == 3 and src.shape[0] == t.shape[0]:
            c = t.shape[1]
            new[name] = (src.sum(dim=1, keepdim=True) / c).repeat(1, c, 1, 1)
        elif name.startswith(last + "."):
            new[name] = t
            fresh.append(name)
        else:
            raise UsageError(f"pretrained {arch} tensor {name} has shape {tuple(src.shape)}, model has "
                             f"{tuple(t.shape)}")
    model.load_state_dict(new)
    return fresh


def _torchvision(arch: str) -> Constructor:
    def build(num_classes: int, in_channels: int = 3, input_size: InputSize = 32,
              pretrained: bool = False) -> nn.Module:
        _check_sizes(arch, num_classes, in_channels, input_size)
        model = getattr(torchvision.models, _TV[arch][0])(weights=None, num_classes=num_classes)
        if in_channels != 3:
            _replace_first_conv(model, in_channels)
        _adapt_small_inputs(arch, model, input_size)
        if pretrained:
            apply_pretrained(model, load_pretrained_state(arch), arch)
        return model

    build.__name__ = arch
    build.__doc__ = f"torchvision {arch} with num_classes (first conv rebuilt for in_channels != 3)."
    return build


def vgg19_orig(num_classes: int, in_channels: int = 3, input_size: InputSize = 32,
               pretrained: bool = False) -> nn.Module:
    """VGG19 with the VGG paper's initialization: all conv/linear weights ~ N(0, 0.01^2), zero biases."""
    if pretrained:
        raise UsageError("vgg19_orig differs from vgg19 only by its initialization, so it has no pretrained "
                         "weights; use --arch vgg19 --pretrained")
    model = _torchvision("vgg19")(num_classes, in_channels, input_size)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


def lenet(num_classes: int, in_channels: int = 3, input_size: InputSize = 32, pretrained: bool = False) -> nn.Module:
    """The seed's 9-layer LeNet (see module docstring); needs inputs of at least 8x8."""
    if pretrained:
        raise UsageError("lenet has no pretrained weights; drop --pretrained")
    _check_sizes("lenet", num_classes, in_channels, input_size, min_size=8)
    return LeNet(num_classes, in_channels)


def _mlp(batch_norm: bool) -> Constructor:
    name = "mlp_bn" if batch_norm else "mlp"

    def build(num_classes: int, in_channels: int = 3, input_size: InputSize = 32,
              pretrained: bool = False) -> nn.Module:
        if pretrained:
            raise UsageError(f"{name} has no pretrained weights; drop --pretrained")
        _check_sizes(name, num_classes, in_channels, input_size)
        h, w = hw(input_size)
        return MLP(num_classes, in_channels * h * w, batch_norm=batch_norm)

    build.__name__ = name
    build.__doc__ = f"Supplement MLP{' with BatchNorm1d' if batch_norm else ''} (D -> 4096 -> 3 bottlenecks -> K)."
    return build


ARCHS: dict[str, Constructor] = {
    "lenet": lenet,
    **{a: _torchvision(a) for a in _TV},
    "vgg19_orig": vgg19_orig,
    "mlp_supp": _mlp(False),
    "mlp_supp_bn": _mlp(True),
}
# the original's names: the supplement's mlp / mlp_bn ("mlp" is the shared generic baseline in the model registry)
# and the BatchNorm VGGs spelled without underscore (HEAD)
ALIASES = {"mlp": "mlp_supp", "mlp_bn": "mlp_supp_bn", **{f"vgg{d}bn": f"vgg{d}_bn" for d in (11, 13, 16, 19)}}
PROJECT = "hyperplane_bias"

for _name, _ctor in ARCHS.items():
    register_model(_name, project=PROJECT, pretrained=_name in _TV)(_ctor)


def canonical_arch(arch: str | None) -> str:
    """The registered name of ``arch`` (accepting the original's names); unknown names list the choices."""
    if not arch:
        raise UsageError(f"no architecture given; pass --arch with one of: {', '.join(ARCHS)}")
    arch = ALIASES.get(arch, arch)
    if arch not in ARCHS:
        raise UsageError(f"unknown --arch {arch!r}; choose one of: {', '.join(ARCHS)} "
                         f"(also accepted: {', '.join(ALIASES)})")
    return arch


def build_model(arch: str, num_classes: int, in_channels: int = 3, input_size: InputSize = 32,
                pretrained: bool = False, seed: int | None = None) -> nn.Module:
    """Build ``arch`` through the shared registry (so snapshots can rebuild it); ``seed`` draws the initialization
    from a private, seeded generator state. The recorded spec never says ``pretrained``: the weights travel in the
    snapshot, and rebuilding must not need the ImageNet file."""
    from shared.models import build_model as shared_build

    arch = canonical_arch(arch)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        model = shared_build(arch, num_classes, in_channels, input_size, project=PROJECT, pretrained=pretrained)
    model.geomlab_spec["options"] = {}  # type: ignore[index]
    return model
