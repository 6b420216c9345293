"""Projection statistics of convolutional (and optionally linear) layers on the all-ones direction (Gamba et al.
2020).

For a layer with weight W of shape (N, C, k, k) (conv) or (N, D) (linear), filter n is flattened to
W_n in R^D (D = C*k*k) -- the normal of the first hyperplane of that filter. Then

* raw projection         p_n = <W_n, 1> = sum_j W_n[j]
* normalized projection  p_n = <W_n, 1> / (||W_n||_2 * sqrt(D))  (the cosine between W_n and 1, in [-1, 1];
                         a zero filter gets 0, where the original produced NaN)
* layer ``mean``         mean_n p_n
* layer ``mass``         #{n : p_n <= 0} / N  (the right-continuous ECDF at 0: ties at 0 count)
* ``net``                the same three keys over the concatenation of all counted layers
* distance from an initialization W0 (weights only, no bias):
  ``l2_dist``   = ||W - W0||_F / ||W0||_F,  ``l_inf_dist`` = max|W - W0| / max|W0|  (None when W0 is all zero)

Counted layers: every ``nn.Conv2d`` whose kernel is not 1x1, plus every ``nn.Linear`` with ``with_linear``.
Layers are keyed by (stage, block): walking the modules in order, ``stage`` starts at 0 and increments at every
``nn.MaxPool2d``; ``block`` resets to 0 at each pool and increments after each counted layer.

Two walks (they give the same conv layers and keys for every model of this project):
* ``walk="features"``: ``model.features`` only (the seed's code, commit e6f521a): linear layers are never seen;
* ``walk="modules"``: ``model.modules()`` (the original's HEAD): linear layers after the last pool fall into
  stage = number of pools.

Everything here is a pure function of tensors / modules; nothing is read or written.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from shared.errors import UsageError

WALKS = ("modules", "features")


@dataclass(frozen=True)
class LayerRef:
    """A counted layer: its qualified module name, kind, and (stage, block) key."""

    name: str
    kind: str  # "conv" | "linear"
    stage: int
    block: int

    @property
    def label(self) -> str:
        return f"s{self.stage}b{self.block}"


def _is_counted(m: nn.Module, with_linear: bool) -> str | None:
    if isinstance(m, nn.Conv2d):
        return None if tuple(m.kernel_size) == (1, 1) else "conv"
    if with_linear and isinstance(m, nn.Linear):
        return "linear"
    return None


def counted_layers(model: nn.Module, walk: str = "modules", with_linear: bool = False) -> list[LayerRef]:
    """The counted layers of ``model`` in walk order, with their stage/block keys (see module docstring)."""
    if walk not in WALKS:
        raise UsageError(f"unknown walk {walk!r}; use one of: {', '.join(WALKS)}")
    if walk == "features":
        feats = getattr(model, "features", None)
        if not isinstance(feats, nn.Module):
            raise UsageError(f"{type(model).__name__} has no .features; use the 'modules' walk")
        items: Iterable[tuple[str, nn.Module]] = ((f"features.{n}" if n else "features", m)
                                                 for n, m in feats.named_modules())
    else:
        items = model.named_modules()
    out: list[LayerRef] = []
    stage = block = 0
    for name, m in items:
        if isinstance(m, nn.MaxPool2d):
            stage, block = stage + 1, 0
            continue
        kind = _is_counted(m, with_linear)
        if kind:
            out.append(LayerRef(name, kind, stage, block))
            block += 1
    return out


# --------------------------------------------------------------------------------------------------------------
# statistics on tensors

def filter_projections(weight: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Projection of each filter (row of the flattened weight) on the all-ones direction, as float64 of shape (N,)."""
    w = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    p = w.sum(dim=1)
    if normalize:
        norm = w.norm(dim=1) * math.sqrt(w.shape[1])
        p = torch.where(norm > 0, p / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(p))
    return p


def mass(p: torch.Tensor) -> float:
    """Fraction of projections <= 0 (ECDF at 0, ties count)."""
    return float((p <= 0).to(torch.float64).mean())


def summarize(p: torch.Tensor) -> dict[str, Any]:
    """The per-layer (or ``net``) entry: projections, mean and mass."""
    return {"projections": p.tolist(), "mean": float(p.mean()), "mass": mass(p)}


def relative_distances(w: torch.Tensor, w0: torch.Tensor) -> dict[str, float | None]:
    """``l2_dist`` = ||W-W0||_F/||W0||_F and ``l_inf_dist`` = max|W-W0|/max|W0|; None where W0 is all zero."""
    if w.shape != w0.shape:
        raise UsageError(f"initialization has shape {tuple(w0.shape)} where the model has {tuple(w.shape)}; "
                         "--init-from must be a snapshot of the same architecture and dataset")
    w, w0 = w.detach().to(torch.float64), w0.detach().to(torch.float64)
    d = w - w0
    n2, ninf = float(w0.norm()), float(w0.abs().max())
    return {"l2_dist": float(d.norm()) / n2 if n2 > 0 else None,
            "l_inf_dist": float(d.abs().max()) / ninf if ninf > 0 else None}


def projection_statistics(model: nn.Module, normalize: bool = False, walk: str = "modules",
                          with_linear: bool = False,
                          init_state: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Stage -> block -> {projections, mean, mass[, l2_dist, l_inf_dist]} plus ``net`` (the original's schema).

    ``init_state`` is a state dict of the initialization (same architecture); when given, the relative distances
    of every counted layer's weight from it are added.
    """
    layers = counted_layers(model, walk, with_linear)
    if not layers:
        raise UsageError(f"{type(model).__name__} has no counted layer (conv with kernel > 1x1"
                         f"{' or linear' if with_linear else ''}); try --with-linear")
    modules = dict(model.named_modules())
    doc: dict[str, Any] = {}
    allp = []
    for ref in layers:
        w = modules[ref.name].weight
        p = filter_projections(w, normalize)
        allp.append(p)
        entry = summarize(p)
        if init_state is not None:
            key = f"{ref.name}.weight"
            if key not in init_state:
                raise UsageError(f"initialization has no tensor {key}; --init-from must be a snapshot of the same "
                                 "architecture")
            entry.update(relative_distances(w, init_state[key]))
        doc.setdefault(str(ref.stage), {})[str(ref.block)] = entry
    doc["net"] = summarize(torch.cat(allp))
    return doc


def epoch_from_name(stem: str) -> int:
    """The original's epoch rule for a snapshot file stem: 'pretrained' -> -1, 'init' -> 0, else last token + 1.

    (Applied to the original's final file ``<arch>_<epochs>.pt`` it gives epochs + 1; our own snapshots carry
    their epoch, so this is only used for files without one.)
    """
    tokens = stem.split("_")
    if "pretrained" in tokens:
        return -1
    if "init" in tokens:
        return 0
    try:
        return int(tokens[-1]) + 1
    except ValueError:
        raise UsageError(f"cannot read an epoch from the file name {stem!r}; name snapshots <arch>_<epoch>, "
                         "<arch>_init_0 or <arch>_pretrained_0") from None


def projections_document(stats: Mapping[str, Any], arch: str, dataset: str, epoch: int | str,
                         seed: int | None = None) -> dict[str, Any]:
    """The original's JSON document: the statistics plus ``arch``, ``dataset``, [``seed``], ``epoch`` (strings)."""
    doc = dict(stats)
    doc.update(arch=arch, dataset=dataset, epoch=str(epoch))
    if seed is not None:
        doc["seed"] = str(seed)
    return doc


def iter_layer_entries(doc: Mapping[str, Any]) -> list[tuple[int, int, Mapping[str, Any]]]:
    """(stage, block, entry) for every layer of a projections document, in (stage, block) order."""
    out = []
    for s, blocks in doc.items():
        if not s.isdigit():
            continue
        for b, entry in blocks.items():
            out.append((int(s), int(b), entry))
    return sorted(out, key=lambda t: (t[0], t[1]))


def projection_metrics(doc: Mapping[str, Any]) -> dict[str, float]:
    """Flat scalar metrics for tracking: ``proj/s<stage>b<block>/<stat>`` and ``proj/net/<stat>``."""
    out: dict[str, float] = {}
    for s, b, entry in iter_layer_entries(doc):
        for k in ("mean", "mass", "l2_dist", "l_inf_dist"):
            if entry.get(k) is not None:
                out[f"proj/s{s}b{b}/{k}"] = float(entry[k])
    for k in ("mean", "mass"):
        out[f"proj/net/{k}"] = float(doc["net"][k])
    return out


# --------------------------------------------------------------------------------------------------------------
# the random-layer null: the bias |mass - 0.5| of a layer that was never trained
#
# A layer whose filters are drawn independently from a distribution that is symmetric under w -> -w (every
# initializer of this project's models: Xavier-uniform, Kaiming-normal, N(0, s^2), all with continuous weights)
# has each filter's projection <= 0 with probability exactly 1/2, independently of the other filters (the
# normalization only rescales by a positive number). So the count #{n : p_n <= 0} of a random layer of N filters is
# Binomial(N, 1/2) and its mass is that count / N, whatever the filter's size. The bias of a random layer falls with
# its width (E|mass - 0.5| = 0.156 for N = 6, 0.098 for 16, 0.050 for 64): a raw bias ranks layers by width.

def random_layer_bias_pmf(n: int) -> list[tuple[float, float]]:
    """The exact distribution of ``|mass - 0.5|`` of a random layer of ``n`` filters: (value, probability) pairs,
    by increasing value (value = |2k - n| / 2n for k ~ Binomial(n, 1/2))."""
    if n < 1:
        raise UsageError(f"a layer needs at least one filter, got {n}")
    probs: dict[int, int] = {}
    for k in range(n + 1):  # exact integer counts: comb(n, k) of the 2^n sign patterns have k projections <= 0
        d = abs(2 * k - n)
        probs[d] = probs.get(d, 0) + math.comb(n, k)
    total = 2 ** n
    return [(d / (2 * n), c / total) for d, c in sorted(probs.items())]


def random_layer_bias_mean(n: int) -> float:
    """E|mass - 0.5| of a random layer of ``n`` filters (exact)."""
    return float(sum(v * p for v, p in random_layer_bias_pmf(n)))


def random_layer_bias_sf(n: int, bias: float) -> float:
    """P(|mass - 0.5| >= ``bias``) for a random layer of ``n`` filters: the exact one-sided p-value of an observed
    bias against the random-layer null (1.0 for a bias of 0)."""
    tol = 0.25 / n  # the values are multiples of 1/(2n): half a step separates them
    return float(min(1.0, sum(p for v, p in random_layer_bias_pmf(n) if v >= bias - tol)))


def layer_biases(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per counted layer of a projections document, in (stage, block) order: its label ``s<stage>b<block>``, its
    number of filters ``n``, ``mass``, ``bias`` = |mass - 0.5|, the random-layer null's mean ``null_mean`` and
    ``excess`` = bias - null_mean (0 on average for a random layer of any width)."""
    out = []
    for s, b, e in iter_layer_entries(doc):
        p = e.get("projections")
        n = len(p) if isinstance(p, (list, tuple)) else 1  # the original wrote a lone float for a 1-filter layer
        m = float(e["mass"])
        null = random_layer_bias_mean(n)
        out.append({"layer": f"s{s}b{b}", "n": n, "mass": m, "bias": abs(m - 0.5), "null_mean": null,
                    "excess": abs(m - 0.5) - null})
    return out


def random_layer_bias_quantile(n: int, q: float) -> float:
    """The smallest value v with P(|mass - 0.5| <= v) >= ``q`` for a random layer of ``n`` filters."""
    acc = 0.0
    pmf = random_layer_bias_pmf(n)
    for v, p in pmf:
        acc += p
        if acc >= q - 1e-12:
            return v
    return pmf[-1][0]
