"""Literal, slow reference implementations of the project's statistics, written straight from their definitions.

They exist to test the fast versions (tests/hyperplane_bias) and as the naive baseline of the benchmark
(benchmarks/hyperplane_bias). Do not use them for real runs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from projects.hyperplane_bias.projections import LayerRef


def projection_of_filter(values: Sequence[float], normalize: bool) -> float:
    """<w, 1>, or <w, 1> / (||w|| sqrt(D)) with 0 for a zero filter, by explicit sums over Python floats."""
    s = 0.0
    for v in values:
        s += v
    if not normalize:
        return s
    sq = 0.0
    for v in values:
        sq += v * v
    if sq == 0.0:
        return 0.0
    return s / (math.sqrt(sq) * math.sqrt(len(values)))


def layer_projections(weight: torch.Tensor, normalize: bool) -> list[float]:
    w = weight.detach().to(torch.float64)
    return [projection_of_filter([float(v) for v in w[n].flatten()], normalize) for n in range(w.shape[0])]


def mass_of(projections: Sequence[float]) -> float:
    """Fraction of values that are <= 0, by counting."""
    count = 0
    for p in projections:
        if p <= 0:
            count += 1
    return count / len(projections)


def relative_l2(w: torch.Tensor, w0: torch.Tensor) -> float:
    num = sum((float(a) - float(b)) ** 2 for a, b in zip(w.flatten(), w0.flatten()))
    den = sum(float(b) ** 2 for b in w0.flatten())
    return math.sqrt(num) / math.sqrt(den)


def relative_linf(w: torch.Tensor, w0: torch.Tensor) -> float:
    return max(abs(float(a) - float(b)) for a, b in zip(w.flatten(), w0.flatten())) / \
        max(abs(float(b)) for b in w0.flatten())


def tensor_loader(X: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterable:
    """A plain DataLoader over in-memory tensors."""
    return DataLoader(TensorDataset(X, y), batch_size=batch_size, shuffle=False)


def accuracy_with_loader(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy in percent, the plain way: iterate a DataLoader in a no_grad loop."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for xb, yb in loader:
            correct += int((model(xb).argmax(dim=1) == yb).sum())
            total += len(yb)
    return 100.0 * correct / total


def reinit_sweep_naive(factory: Callable[[], nn.Module], trained_state: Mapping[str, torch.Tensor],
                       layers: Sequence[LayerRef], checkpoints: Mapping[str, Mapping[str, Any]],
                       X: torch.Tensor, y: torch.Tensor, batch_size: int = 128, bn: str = "keep",
                       X_bn: torch.Tensor | None = None, bn_batch_size: int | None = None,
                       make_loader: Callable[[], Iterable] | None = None) -> dict[str, list[float]]:
    """For every checkpoint and layer: build the model, load the trained weights, overwrite that layer's weight and
    bias with the checkpoint's, optionally re-estimate the BatchNorm layers registered after it, build a test
    DataLoader (``make_loader()``, default: over the tensors ``X``, ``y``) and evaluate."""
    out: dict[str, list[float]] = {}
    for key, ck in checkpoints.items():
        accs = []
        for ref in layers:
            model = factory()
            model.load_state_dict(trained_state)
            layer = dict(model.named_modules())[ref.name]
            w, b = ck[ref.name]
            with torch.no_grad():
                layer.weight.copy_(w)
                if b is not None:
                    layer.bias.copy_(b)
            model.eval()
            if bn == "reestimate":
                mods = list(model.modules())
                after = mods[mods.index(layer) + 1:]
                bns = [m for m in after if isinstance(m, nn.modules.batchnorm._BatchNorm)]
                for m in bns:
                    m.reset_running_stats()
                    m.momentum = None
                    m.train()
                with torch.no_grad():
                    bs = bn_batch_size or batch_size
                    for xb, in DataLoader(TensorDataset(X_bn), batch_size=bs, shuffle=False):
                        model(xb)
                model.eval()
            loader = make_loader() if make_loader is not None else tensor_loader(X, y, batch_size)
            accs.append(accuracy_with_loader(model, loader))
        out[key] = accs
    return out
