"""Small models shared by the hyperplane_bias tests (imported as a module; fixtures live in conftest.py)."""
from __future__ import annotations

import torch
from torch import nn


class TinyBN(nn.Module):
    """A VGG-shaped conv net with BatchNorm, small enough for exhaustive reference checks."""

    def __init__(self, num_classes: int = 3, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
            nn.Conv2d(6, 6, 1), nn.ReLU(inplace=True),  # 1x1: never counted
            nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                        nn.Linear(8, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def make_tiny_bn(seed: int = 0, warm: torch.Tensor | None = None) -> TinyBN:
    torch.manual_seed(seed)
    m = TinyBN()
    if warm is not None:  # non-trivial running statistics
        m.train()
        with torch.no_grad():
            for i in range(0, len(warm), 32):
                m(warm[i:i + 32] * 1.5 + 0.3)
    return m.eval()


def self_labelled(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Labels = the model's own predictions, so the untouched model has 100% accuracy.

    The last layer's bias is first shifted by minus the mean logit over ``X``, so that a random network does not
    predict one class for every input (the labels then cover several classes).
    """
    model.eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.bias -= model(X).mean(0)
        return model(X).argmax(1)
