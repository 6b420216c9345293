"""The VGG of the original (``architectures.VGG`` with ``custom_filters=True``), built from a width list.

``widths`` has ``depth - 1`` entries: ``depth - 3`` conv layers followed by the two hidden linear layers. The convs
form five blocks -- [w0, w1], [w2, w3], then three blocks of ``(depth - 7) / 3`` convs -- each conv being
Conv3x3 (padding 1, no bias) -> BatchNorm2d(eps) -> ReLU, each block ending in MaxPool 2x2. The classifier is
flatten -> Linear(no bias) -> BN1d -> ReLU -> Linear(no bias) -> BN1d -> ReLU -> Dropout(0.5) -> Linear(bias).
``bn_eps = 0`` removes every BatchNorm (as ``--batch-norm 0`` did in the original); the linear layers keep no bias.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from shared.errors import UsageError

from .variants import base_widths, check_depth

INITS = ("kaiming-normal", "kaiming-uniform", "xavier-normal", "xavier-uniform")


def _hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        h = w = input_size
    else:
        h, w = (int(v) for v in input_size)
    if h < 1 or w < 1:
        raise UsageError(f"input size must be positive, got {input_size}")
    return h, w


def block_layout(depth: int) -> list[tuple[int, int]]:
    """(first index, count) of each of the five conv blocks in the width list."""
    lpb = check_depth(depth)
    return [(0, 2), (2, 2), (4, lpb), (4 + lpb, lpb), (4 + 2 * lpb, lpb)]


class FeatureVGG(nn.Module):
    """VGG with arbitrary per-layer widths; see the module docstring for the layout."""

    def __init__(self, widths: Sequence[int], num_classes: int = 10, in_channels: int = 3,
                 input_size: int | Sequence[int] = 32, bn_eps: float = 1e-4, dropout: float = 0.5,
                 init: str = "kaiming-normal"):
        super().__init__()
        widths = [int(w) for w in widths]
        depth = len(widths) + 1
        if (depth - 7) % 3 != 0 or depth < 10:
            raise UsageError(f"a width list must have depth - 1 entries with depth = 7 + 3k (e.g. 15 for VGG-16), "
                             f"got {len(widths)} entries")
        if min(widths) < 1:
            raise UsageError(f"every layer needs at least one feature, got widths {widths}")
        if bn_eps < 0:
            raise UsageError(f"--batch-norm is the BatchNorm epsilon (>= 0; 0 disables BatchNorm), got {bn_eps}")
        if not 0.0 <= dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), got {dropout}")
        if num_classes < 1 or in_channels < 1:
            raise UsageError(f"need num_classes >= 1 and in_channels >= 1, got {num_classes}, {in_channels}")
        self.widths = tuple(widths)
        self.depth = depth
        self.bn_eps = float(bn_eps)
        h, w = _hw(input_size)
        blocks = []
        c = in_channels
        self.pools = 0
        for start, count in block_layout(depth):
            layers: list[nn.Module] = []
            for width in widths[start:start + count]:
                layers.append(nn.Conv2d(c, width, kernel_size=3, padding=1, bias=False))
                if bn_eps > 0:
                    layers.append(nn.BatchNorm2d(width, eps=bn_eps))
                layers.append(nn.ReLU(inplace=True))
                c = width
            # The original always pooled (32-px inputs reach 1x1 after five pools); a pool that would need a
            # map smaller than 2x2 is left out so that small inputs (digits: 8 px, MNIST: 28 px) still work.
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
                self.pools += 1
            blocks.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*blocks)
        self.out_hw = (h, w)
        f1, f2 = widths[-2], widths[-1]
        cls: list[nn.Module] = [nn.Flatten(), nn.Linear(c * h * w, f1, bias=False)]
        if bn_eps > 0:
            cls.append(nn.BatchNorm1d(f1, eps=bn_eps))
        cls += [nn.ReLU(inplace=True), nn.Linear(f1, f2, bias=False)]
        if bn_eps > 0:
            cls.append(nn.BatchNorm1d(f2, eps=bn_eps))
        cls += [nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(f2, num_classes)]
        self.classifier = nn.Sequential(*cls)
        init_weights(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def init_weights(model: nn.Module, scheme: str = "kaiming-normal") -> nn.Module:
    """The original's WeightInit: conv/linear weights by ``scheme`` (PyTorch defaults), biases 0, BN weight 1 / bias 0.

    Unlike the original, an unknown scheme is an error rather than a silent fallback to kaiming-normal.
    """
    fns = {"kaiming-normal": nn.init.kaiming_normal_, "kaiming-uniform": nn.init.kaiming_uniform_,
           "xavier-normal": nn.init.xavier_normal_, "xavier-uniform": nn.init.xavier_uniform_}
    if scheme not in fns:
        raise UsageError(f"unknown --init {scheme!r}; use one of: {', '.join(INITS)}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fns[scheme](m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def feature_vgg(num_classes: int, in_channels: int, input_size: int | Sequence[int], widths: Sequence[int],
                bn_eps: float = 1e-4, dropout: float = 0.5, init: str = "kaiming-normal") -> FeatureVGG:
    """A variant's network (constructor order shared with the model registry)."""
    return FeatureVGG(widths, num_classes, in_channels, input_size, bn_eps=bn_eps, dropout=dropout, init=init)


def vgg_reference(num_classes: int, in_channels: int, input_size: int | Sequence[int], depth: int = 16,
                  patch_size: int | None = None, bn_eps: float = 1e-4, dropout: float = 0.5,
                  init: str = "kaiming-normal") -> FeatureVGG:
    """The unmodified VGG-``depth`` (VGG-D for 16) of the same family: widths = :func:`base_widths`."""
    if patch_size is None:
        patch_size = max(_hw(input_size))
    return FeatureVGG(base_widths(depth, patch_size), num_classes, in_channels, input_size, bn_eps=bn_eps,
                      dropout=dropout, init=init)


def count_parameters(model: nn.Module) -> int:
    """The true number of trainable parameters (weights, biases and BN affine terms)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------------------------
# Registry entries (``geomlab archs --project feature_amounts``)

from shared.models import register_model  # noqa: E402

register_model("feature_vgg", project="feature_amounts")(feature_vgg)
register_model("vgg_reference", project="feature_amounts")(vgg_reference)
