"""Layer re-initialization robustness (Zhang, Bengio & Singer, "Are All Layers Created Equal?", section 2).

For each counted layer d (conv layers with kernel > 1x1, optionally linear layers; see ``projections``) and each
checkpoint tau, the trained network's layer d gets tau's weight *and* bias while every other layer stays trained;
the top-1 test accuracy of that network is recorded, then layer d is restored. ``rand`` (re-randomization) is
a checkpoint drawn fresh from the model's own initializer.

BatchNorm statistics after a reset are either kept as trained (``bn="keep"``, the original) or re-estimated
(``bn="reestimate"``): the running mean/var of every BatchNorm layer *after* the reset layer (in forward order) are
recomputed as the plain average of batch statistics over the given training tensors (PyTorch's ``momentum=None``),
with the network in eval mode otherwise. BatchNorm layers before the reset layer see unchanged inputs and keep
their statistics.

Speed (see benchmarks/hyperplane_bias): one model, no copies, data held as tensors, ``inference_mode``. For models of
the form ``classifier(flatten(avgpool(features(x))))`` or ``nn.Sequential`` the network is run as a flat list of
modules: for each test batch, the activations entering layer d are computed once (incrementally from the previous
layer) and shared by every checkpoint, layer d is applied with the checkpoint's tensors (no weight swapping), and
only the rest of the network is run, with several checkpoints concatenated into one batch. Other models fall back
to swapping the tensors in place and running the whole network.

Pure functions: tensors and modules in, numbers out; no I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from shared import interrupts
from shared.errors import UsageError
from shared.metrics import topk_correct

from .projections import LayerRef, counted_layers

BN_MODES = ("keep", "reestimate")
LayerTensors = tuple[torch.Tensor, "torch.Tensor | None"]  # (weight, bias)
CheckpointLayers = dict[str, LayerTensors]  # layer name -> tensors


# --------------------------------------------------------------------------------------------------------------
# checkpoints

def layer_tensors(state: Mapping[str, torch.Tensor], model: nn.Module, layers: Sequence[LayerRef],
                  source: str = "checkpoint") -> CheckpointLayers:
    """(weight, bias) of ``layers`` from a state dict, checked against ``model``'s shapes, cast to its dtype."""
    mods = dict(model.named_modules())
    out: CheckpointLayers = {}
    for ref in layers:
        m = mods[ref.name]
        wk, bk = f"{ref.name}.weight", f"{ref.name}.bias"
        if wk not in state:
            raise UsageError(f"{source} has no tensor {wk}; it must be a snapshot of the same architecture")
        w = state[wk]
        if tuple(w.shape) != tuple(m.weight.shape):
            raise UsageError(f"{source}: {wk} has shape {tuple(w.shape)}, the model has {tuple(m.weight.shape)}; "
                             "use snapshots of the same architecture, dataset and class count")
        b = None
        if m.bias is not None:
            if bk not in state:
                raise UsageError(f"{source} has no tensor {bk}; it must be a snapshot of the same architecture")
            b = state[bk].detach().to(m.bias.dtype).to(m.bias.device).clone()
        out[ref.name] = (w.detach().to(m.weight.dtype).to(m.weight.device).clone(), b)
    return out


def fresh_layer_tensors(factory: Callable[[], nn.Module], layers: Sequence[LayerRef], seed: int | None,
                        like: nn.Module) -> CheckpointLayers:
    """Re-randomization: the layers of a new model drawn from the model's own initializer (seeded privately)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        fresh = factory()
    return layer_tensors(fresh.state_dict(), like, layers, source="fresh initialization")


def zero_layer_tensors(model: nn.Module, layers: Sequence[LayerRef]) -> CheckpointLayers:
    """All-zero weights and biases (a sanity 'checkpoint')."""
    mods = dict(model.named_modules())
    return {r.name: (torch.zeros_like(mods[r.name].weight),
                     None if mods[r.name].bias is None else torch.zeros_like(mods[r.name].bias)) for r in layers}


# --------------------------------------------------------------------------------------------------------------
# evaluation

@torch.inference_mode()
def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent (top-5 is capped at the class count)."""
    _check_data(X, y, batch_size)
    model.eval()
    c1 = c5 = 0
    for i in range(0, len(X), batch_size):
        a, b = topk_correct(model(X[i:i + batch_size]), y[i:i + batch_size], (1, 5))
        c1, c5 = c1 + a, c5 + b
    return {"top1": 100.0 * c1 / len(X), "top5": 100.0 * c5 / len(X)}


def _check_data(X: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
    if len(X) == 0 or len(X) != len(y):
        raise UsageError(f"need a non-empty test set with one label per input (got {len(X)} inputs, {len(y)} labels)")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")


# --------------------------------------------------------------------------------------------------------------
# flat view of the network

def flat_sequence(model: nn.Module) -> list[nn.Module] | None:
    """The model as a list of modules applied one after the other, or None if it has no such known layout."""
    if isinstance(model, nn.Sequential):
        return list(model)
    feats, cls = getattr(model, "features", None), getattr(model, "classifier", None)
    if isinstance(feats, nn.Sequential) and isinstance(cls, nn.Sequential):
        pool = getattr(model, "avgpool", None)
        return [*feats, *([pool] if isinstance(pool, nn.Module) else []), nn.Flatten(1), *cls]
    return None


class FoldedLinear(nn.Module):
    """``AdaptiveAvgPool2d -> Flatten -> [Dropout] -> Linear`` folded into one linear map of the un-pooled features.

    In eval mode the pool maps each channel's h*w values linearly onto oh*ow values (a fixed matrix P), so
    ``linear(flatten(pool(x))) = x_flat @ W'^T + b`` with ``W'[f, c, :] = W[f, c, :] @ P`` (computed in float64).
    This pays when h*w < oh*ow: torchvision's VGG pools the 1x1 maps of 32x32 inputs up to 7x7, which makes the
    first linear layer 49 times larger (and about half of the network's time) for nothing.
    """

    def __init__(self, linear: nn.Linear, pool: nn.Module, channels: int, hw: tuple[int, int]):
        super().__init__()
        h, w = hw
        eye = torch.eye(h * w, dtype=torch.float64).view(h * w, 1, h, w)
        self.P = pool(eye).reshape(h * w, -1).T.contiguous()  # (oh*ow, h*w)
        self.channels = channels
        self.source = [linear]  # not a registered submodule
        self.weight = self.fold(linear.weight.detach())
        self.bias = linear.bias

    def fold(self, w: torch.Tensor) -> torch.Tensor:
        o, i = self.P.shape
        wf = w.detach().to(torch.float64).reshape(w.shape[0], self.channels, o) @ self.P
        return wf.reshape(w.shape[0], self.channels * i).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@dataclass
class _Plan:
    """How the sweep runs the model: a flat module list, each layer's position in it, memory format."""

    seq: list[nn.Module]
    pos: dict[str, int]
    channels_last: bool

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def _same(seq: Sequence[nn.Module], x: torch.Tensor, ref: torch.Tensor) -> bool:
    h = x.clone()
    for m in seq:
        h = m(h)
    return h.shape == ref.shape and torch.allclose(h, ref, rtol=1e-4, atol=1e-5)


def _fold(seq: list[nn.Module], probe: torch.Tensor, ref: torch.Tensor) -> list[nn.Module]:
    """Replace a ``pool, flatten, [dropout...], linear`` run by a FoldedLinear where that is cheaper and exact."""
    for i, m in enumerate(seq[:-2]):
        if not isinstance(m, nn.AdaptiveAvgPool2d) or not isinstance(seq[i + 1], nn.Flatten):
            continue
        j = i + 2
        while j < len(seq) and isinstance(seq[j], (nn.Dropout, nn.Identity)):
            j += 1
        if j == len(seq) or not isinstance(seq[j], nn.Linear):
            continue
        h = probe.clone()
        for mod in seq[:i]:
            h = mod(h)
        if h.dim() != 4:
            continue
        pooled = m(h)
        if h.shape[2] * h.shape[3] >= pooled.shape[2] * pooled.shape[3]:
            continue
        folded = FoldedLinear(seq[j], m, h.shape[1], (h.shape[2], h.shape[3]))
        cand = seq[:i] + [nn.Flatten(1), folded] + seq[j + 1:]
        return cand if _same(cand, probe, ref) else seq
    return seq


@torch.inference_mode()
def _make_plan(model: nn.Module, layers: Sequence[LayerRef], probe: torch.Tensor, fold: bool,
               channels_last: bool) -> _Plan | None:
    seq = flat_sequence(model)
    if seq is None:
        return None
    ref = model(probe.clone())
    if not _same(seq, probe, ref):
        return None
    if fold:
        seq = _fold(seq, probe, ref)
    index: dict[int, int] = {}
    for i, m in enumerate(seq):
        index[id(m.source[0] if isinstance(m, FoldedLinear) else m)] = i
    mods = dict(model.named_modules())
    if any(id(mods[r.name]) not in index for r in layers):
        return None
    plan = _Plan(seq, {r.name: index[id(mods[r.name])] for r in layers}, channels_last)
    if channels_last and not _same(seq, plan.inputs(probe), ref):
        plan.channels_last = False
    return plan


def _apply_layer(layer: nn.Module, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return layer._conv_forward(h, w, b)
    if isinstance(layer, (nn.Linear, FoldedLinear)):
        return F.linear(h, w, b)
    raise TypeError(f"cannot re-initialize a {type(layer).__name__}")


def _run(mods: Sequence[nn.Module], h: torch.Tensor,
         bn_stats: Mapping[int, "_BNStats"] | None = None, estimate: bool = False) -> torch.Tensor:
    """Run ``mods``; BatchNorm modules listed in ``bn_stats`` use those statistics (and update them if ``estimate``)."""
    for m in mods:
        st = bn_stats.get(id(m)) if bn_stats else None
        if st is None:
            h = m(h)
        elif estimate:
            st.count += 1
            h = F.batch_norm(h, st.mean, st.var, m.weight, m.bias, True, 1.0 / st.count, m.eps)
        else:
            h = F.batch_norm(h, st.mean, st.var, m.weight, m.bias, False, 0.0, m.eps)
    return h


@dataclass
class _BNStats:
    mean: torch.Tensor
    var: torch.Tensor
    count: int = 0

    @classmethod
    def fresh(cls, m: _BatchNorm) -> "_BNStats":
        return cls(torch.zeros_like(m.running_mean), torch.ones_like(m.running_var))


# --------------------------------------------------------------------------------------------------------------
# the sweep

@dataclass
class ReinitResult:
    """Accuracy (percent) of the trained model with one layer re-initialized, per checkpoint key and layer."""

    layers: list[LayerRef]
    top1: dict[str, list[float]] = field(default_factory=dict)
    top1_test: float = math.nan
    top5_test: float = math.nan
    num_test: int = 0
    num_classes: int = 0
    bn: str = "keep"
    strategy: str = ""


def reinit_sweep(model: nn.Module, layers: Sequence[LayerRef], checkpoints: Mapping[str, CheckpointLayers],
                 X: torch.Tensor, y: torch.Tensor, batch_size: int = 128, bn: str = "keep",
                 X_bn: torch.Tensor | None = None, bn_batch_size: int | None = None,
                 strategy: str = "auto", max_rows: int = 256, fold: bool = True,
                 channels_last: bool = True) -> ReinitResult:
    """Re-initialize each layer to each checkpoint, one at a time, and record the test top-1 accuracy.

    ``checkpoints`` maps a key ("0", "1", ..., "rand") to the layers' (weight, bias) (see ``layer_tensors``).
    ``bn="reestimate"`` needs ``X_bn`` (training inputs, no augmentation). ``strategy``: "auto" (flat sequence
    when the model has a known layout, else in place), "sequence" or "inplace". ``max_rows`` bounds the number of
    rows (batch x checkpoints) run through the network at once. With the flat sequence, ``fold`` folds an
    up-sampling average pool into the next linear layer (``FoldedLinear``) and ``channels_last`` runs convolutions
    in NHWC memory layout; both change results only at rounding level (an accuracy can move by one test sample on
    a near-tie). The model is left exactly as it was.
    """
    _check_data(X, y, batch_size)
    if bn not in BN_MODES:
        raise UsageError(f"unknown BatchNorm mode {bn!r}; use one of: {', '.join(BN_MODES)}")
    if bn == "reestimate" and (X_bn is None or len(X_bn) == 0):
        raise UsageError("re-estimating BatchNorm statistics needs training inputs; pass training data or use "
                         "--bn keep")
    if strategy not in ("auto", "sequence", "inplace"):
        raise ValueError(f"unknown strategy {strategy!r}")
    if not layers:
        raise UsageError("no layer to re-initialize (the model has no conv layer with kernel > 1x1); "
                         "try --with-linear")
    for key, ck in checkpoints.items():
        missing = [r.name for r in layers if r.name not in ck]
        if missing:
            raise UsageError(f"checkpoint {key!r} lacks layers {missing}; use snapshots of the same architecture")
    model.eval()
    base = evaluate(model, X, y, batch_size)
    with torch.inference_mode():
        num_classes = int(model(X[:1]).shape[1])
    plan = None if strategy == "inplace" else _make_plan(model, layers, X[:2], fold, channels_last)
    if strategy == "sequence" and plan is None:
        raise ValueError(f"{type(model).__name__} has no verified flat layout")
    res = ReinitResult(list(layers), top1_test=base["top1"], top5_test=base["top5"], num_test=len(X),
                       num_classes=num_classes, bn=bn, strategy="sequence" if plan is not None else "inplace")
    bn_bs = bn_batch_size or batch_size
    if plan is not None:
        cks = {k: {n: (plan.seq[plan.pos[n]].fold(w) if isinstance(plan.seq[plan.pos[n]], FoldedLinear) else w, b)
                   for n, (w, b) in ck.items() if n in plan.pos} for k, ck in checkpoints.items()}
        counts = _sweep_sequence(plan, layers, cks, X, y, batch_size, bn, X_bn, bn_bs, max_rows)
    else:
        counts = _sweep_inplace(model, layers, checkpoints, X, y, batch_size, bn, X_bn, bn_bs)
    res.top1 = {k: [100.0 * c / len(X) for c in counts[k]] for k in checkpoints}
    return res


@torch.inference_mode()
def _sweep_sequence(plan, layers, checkpoints, X, y, batch_size, bn, X_bn, bn_bs, max_rows):
    seq = plan.seq
    pos = [plan.pos[r.name] for r in layers]
    order = sorted(range(len(layers)), key=lambda j: pos[j])
    keys = list(checkpoints)
    counts = {k: [0] * len(layers) for k in keys}
    downstream = {j: [m for m in seq[pos[j] + 1:] if isinstance(m, _BatchNorm) and m.running_mean is not None]
                  for j in range(len(layers))}
    if bn == "reestimate":
        keep_layers = [j for j in order if not downstream[j]]
    else:
        keep_layers = order
    if keep_layers:
        _count_keep(plan, layers, pos, keep_layers, checkpoints, keys, X, y, batch_size, max_rows, counts)
    # BN re-estimation: per layer, statistics for every checkpoint from one pass over the training inputs
    for j in (j for j in order if j not in keep_layers):
        interrupts.check()  # a safe point: between layers
        layer, p, name = seq[pos[j]], pos[j], layers[j].name
        stats = {k: {id(m): _BNStats.fresh(m) for m in downstream[j]} for k in keys}
        for i in range(0, len(X_bn), bn_bs):
            h = _run(seq[:p], plan.inputs(X_bn[i:i + bn_bs]))
            for k in keys:
                _run(seq[p + 1:], _apply_layer(layer, h, *checkpoints[k][name]), stats[k], estimate=True)
        for i in range(0, len(X), batch_size):
            h, yb = _run(seq[:p], plan.inputs(X[i:i + batch_size])), y[i:i + batch_size]
            for k in keys:
                out = _run(seq[p + 1:], _apply_layer(layer, h, *checkpoints[k][name]), stats[k])
                counts[k][j] += int(out.argmax(1).eq(yb).sum())
    return counts


def _count_keep(plan, layers, pos, order, checkpoints, keys, X, y, batch_size, max_rows, counts) -> None:
    """Batch-outer loop: the activations entering each layer are computed once per batch, incrementally."""
    seq = plan.seq
    for i in range(0, len(X), batch_size):
        interrupts.check()  # a safe point: between batches
        h, yb = plan.inputs(X[i:i + batch_size]), y[i:i + batch_size]
        cur = 0
        group = max(1, max_rows // len(h))
        for j in order:
            p, name = pos[j], layers[j].name
            h = _run(seq[cur:p], h)
            cur = p
            layer = seq[p]
            for g in range(0, len(keys), group):
                ks = keys[g:g + group]
                outs = [_apply_layer(layer, h, *checkpoints[k][name]) for k in ks]
                z = outs[0] if len(outs) == 1 else torch.cat(outs)
                pred = _run(seq[p + 1:], z).argmax(1).view(len(ks), -1)
                hits = pred.eq(yb.view(1, -1)).sum(1).tolist()
                for k, c in zip(ks, hits):
                    counts[k][j] += int(c)


def _bn_after(model: nn.Module, layer: nn.Module) -> list[_BatchNorm]:
    """BatchNorm modules registered after ``layer`` (forward order for sequential models)."""
    mods = list(model.modules())
    i = next(n for n, m in enumerate(mods) if m is layer)
    return [m for m in mods[i + 1:] if isinstance(m, _BatchNorm) and m.running_mean is not None]


@torch.inference_mode()
def reestimate_bn(model: nn.Module, bns: Sequence[_BatchNorm], X_bn: torch.Tensor, batch_size: int) -> None:
    """Recompute the running statistics of ``bns`` as the average over batches of ``X_bn`` (model otherwise eval)."""
    saved = [(m.momentum, m.training) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        for i in range(0, len(X_bn), batch_size):
            model(X_bn[i:i + batch_size])
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)


@torch.inference_mode()
def _sweep_inplace(model, layers, checkpoints, X, y, batch_size, bn, X_bn, bn_bs):
    mods = dict(model.named_modules())
    counts = {k: [0] * len(layers) for k in checkpoints}
    for j, ref in enumerate(layers):
        m = mods[ref.name]
        saved_w = m.weight.detach().clone()
        saved_b = None if m.bias is None else m.bias.detach().clone()
        bns = _bn_after(model, m) if bn == "reestimate" else []
        saved_bn = [{k: v.clone() for k, v in b.state_dict().items()} for b in bns]
        try:
            for key, ck in checkpoints.items():
                interrupts.check()  # a safe point: between (layer, checkpoint) evaluations
                w, b = ck[ref.name]
                m.weight.copy_(w)
                if b is not None:
                    m.bias.copy_(b)
                if bns:
                    reestimate_bn(model, bns, X_bn, bn_bs)
                counts[key][j] = sum(int(model(X[i:i + batch_size]).argmax(1).eq(y[i:i + batch_size]).sum())
                                     for i in range(0, len(X), batch_size))
        finally:
            m.weight.copy_(saved_w)
            if saved_b is not None:
                m.bias.copy_(saved_b)
            for b, st in zip(bns, saved_bn):
                for k, v in st.items():
                    getattr(b, k).copy_(v)
    return counts


# --------------------------------------------------------------------------------------------------------------
# documents

def reinit_layers_for(model: nn.Module, walk: str = "features", with_linear: bool = False) -> list[LayerRef]:
    """The layers the sweep resets: the original used the conv layers of ``model.features`` (1x1 skipped)."""
    if walk == "features" and with_linear:
        walk = "modules"  # linear layers live outside .features
    if walk == "features" and not isinstance(getattr(model, "features", None), nn.Module):
        walk = "modules"
    return counted_layers(model, walk, with_linear)


def relative_drop(top1: float, acc: float) -> float:
    """(top1_test - acc) / top1_test, the heatmap's value (0 = unchanged, 1 = accuracy fell to zero)."""
    return (top1 - acc) / top1 if top1 > 0 else math.nan


def reinit_document(res: ReinitResult, arch: str, dataset: str, epoch: int | str,
                    seed: int | None = None) -> dict[str, Any]:
    """The original's JSON (``init_from_epoch``, ``top1_test``, ``top5_test``, ``arch``, ``dataset``, [``seed``],
    ``epoch``) plus ``layers`` (name, kind, stage, block per row), ``num_classes``, ``num_test`` and ``bn``."""
    doc: dict[str, Any] = {
        "init_from_epoch": {k: list(v) for k, v in res.top1.items()},
        "top1_test": res.top1_test, "top5_test": res.top5_test,
        "arch": arch, "dataset": dataset, "epoch": str(epoch),
        "layers": [{"name": r.name, "kind": r.kind, "stage": r.stage, "block": r.block} for r in res.layers],
        "num_classes": res.num_classes, "num_test": res.num_test, "bn": res.bn,
    }
    if seed is not None:
        doc["seed"] = str(seed)
    return doc


def reinit_metrics(doc: Mapping[str, Any]) -> dict[str, float]:
    """Flat metrics: ``reinit/<layer label>/<checkpoint key>`` = relative accuracy drop, plus the baseline."""
    labels = layer_labels(doc)
    out = {"reinit/top1_test": float(doc["top1_test"]), "reinit/top5_test": float(doc["top5_test"])}
    for key, accs in doc["init_from_epoch"].items():
        for lab, acc in zip(labels, accs):
            out[f"reinit/{lab}/{key}"] = relative_drop(float(doc["top1_test"]), float(acc))
    return out


def layer_labels(doc: Mapping[str, Any]) -> list[str]:
    """Row labels of a reinit document: ``s<stage>b<block>`` (or ``layer<i>`` for the original's files)."""
    if "layers" in doc:
        return [f"s{l['stage']}b{l['block']}" for l in doc["layers"]]
    n = len(next(iter(doc["init_from_epoch"].values()), []))
    return [f"layer{i + 1}" for i in range(n)]
