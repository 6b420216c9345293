"""Re-initialization sweep: invariants, fast path vs the literal rebuild-and-evaluate reference, JSON schema."""
from __future__ import annotations

import json

import pytest
import torch
from hyper_helpers import make_tiny_bn, self_labelled
from matplotlib.figure import Figure

import hyper_reference as ref
from projects.hyperplane_bias.models import build_model
from projects.hyperplane_bias.plots import heatmap_matrix, reinit_heatmap
from projects.hyperplane_bias.reinit import (FoldedLinear, _make_plan, evaluate, fresh_layer_tensors,
                                             layer_tensors, reinit_document, reinit_layers_for, reinit_metrics,
                                             reinit_sweep, topk_correct, zero_layer_tensors)
from shared.errors import UsageError


def _lenet(seed):
    return build_model("lenet", 4, 1, 8, seed=seed).eval()


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("strategy", ["sequence", "inplace"])
def test_own_weights_keep_accuracy_and_zeros_drop_it(images, strategy):
    model = _lenet(0)
    y = self_labelled(model, images)
    layers = reinit_layers_for(model)
    assert [l.name for l in layers] == ["features.0", "features.2", "features.5", "features.7",
                                        "features.10", "features.12"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cks = {"own": layer_tensors(model.state_dict(), model, layers), "zeros": zero_layer_tensors(model, layers)}
    res = reinit_sweep(model, layers, cks, images, y, batch_size=32, strategy=strategy)
    assert res.top1_test == 100.0 and res.strategy == strategy
    assert res.top1["own"] == [100.0] * len(layers)
    assert all(a < 100.0 for a in res.top1["zeros"])
    assert _state_equal(before, model.state_dict())  # restored exactly


def _checkpoints(model, layers, factory, X):
    init = factory(11).state_dict()
    half = {k: (v + init[k]) / 2 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return {"0": layer_tensors(init, model, layers), "1": layer_tensors(half, model, layers),
            "rand": fresh_layer_tensors(lambda: factory(None), layers, seed=5, like=model)}


def _close(a, b, n):
    """Equal up to one test sample per entry (rounding-level differences may flip a near-tie)."""
    return a.keys() == b.keys() and all(abs(p - q) <= 100.0 / n + 1e-9 for k in a for p, q in zip(a[k], b[k]))


@pytest.mark.parametrize("with_linear", [False, True])
@pytest.mark.parametrize("fast", [False, True])
def test_fast_sweep_equals_naive_reference_lenet(images, with_linear, fast):
    torch.manual_seed(0)
    model = _lenet(1)
    y = self_labelled(model, images)
    layers = reinit_layers_for(model, with_linear=with_linear)
    cks = _checkpoints(model, layers, _lenet, images)
    res = reinit_sweep(model, layers, cks, images, y, batch_size=40, max_rows=64, fold=fast, channels_last=fast)
    assert res.strategy == "sequence"
    naive = ref.reinit_sweep_naive(lambda: _lenet(0), model.state_dict(), layers, cks, images, y, batch_size=40)
    if fast:
        assert _close(res.top1, naive, len(images))
    else:
        assert res.top1 == naive
    assert len({a for v in naive.values() for a in v}) > 5  # a non-degenerate comparison


@pytest.mark.parametrize("bn", ["keep", "reestimate"])
@pytest.mark.parametrize("strategy", ["sequence", "inplace"])
def test_fast_sweep_equals_naive_reference_with_batchnorm(images, bn, strategy):
    torch.manual_seed(0)
    model = make_tiny_bn(2, warm=images)
    y = self_labelled(model, images)
    layers = reinit_layers_for(model, with_linear=True)
    assert [(l.stage, l.block) for l in layers] == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1)]
    factory = lambda s: make_tiny_bn(0 if s is None else s)  # noqa: E731
    cks = _checkpoints(model, layers, factory, images)
    X_bn = images[:64] * 0.7
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = reinit_sweep(model, layers, cks, images, y, batch_size=32, bn=bn, X_bn=X_bn, bn_batch_size=16,
                       strategy=strategy, fold=False, channels_last=False)
    assert _state_equal(before, model.state_dict())
    naive = ref.reinit_sweep_naive(lambda: make_tiny_bn(0), model.state_dict(), layers, cks, images, y,
                                   batch_size=32, bn=bn, X_bn=X_bn, bn_batch_size=16)
    assert res.top1 == naive
    fast = reinit_sweep(model, layers, cks, images, y, batch_size=32, bn=bn, X_bn=X_bn, bn_batch_size=16,
                        strategy=strategy)
    assert _close(fast.top1, naive, len(images))
    assert len({a for v in naive.values() for a in v}) > 5
    if bn == "reestimate":  # re-estimation must matter for this net, otherwise the test proves nothing
        kept = reinit_sweep(model, layers, cks, images, y, batch_size=32, bn="keep")
        assert kept.top1 != res.top1


def test_rand_is_drawn_from_the_models_initializer():
    model = _lenet(0)
    layers = reinit_layers_for(model)
    a = fresh_layer_tensors(lambda: _lenet(None), layers, seed=9, like=model)
    b = fresh_layer_tensors(lambda: _lenet(None), layers, seed=9, like=model)
    c = fresh_layer_tensors(lambda: _lenet(None), layers, seed=10, like=model)
    w = a["features.0"][0]
    assert torch.equal(w, b["features.0"][0]) and not torch.equal(w, c["features.0"][0])
    bound = (2.0 ** 0.5) * (6.0 / (1 * 9 + 6 * 9)) ** 0.5  # Xavier-uniform, gain sqrt 2, not N(0, 1)
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.5 * bound
    assert torch.count_nonzero(a["features.0"][1]) == 0


def test_checkpoint_errors_are_usage_errors(images):
    model = _lenet(0)
    layers = reinit_layers_for(model)
    with pytest.raises(UsageError, match="no tensor features.0.weight"):
        layer_tensors({}, model, layers)
    other = build_model("lenet", 4, 3, 8, seed=0)
    with pytest.raises(UsageError, match="shape"):
        layer_tensors(other.state_dict(), model, layers)
    y = self_labelled(model, images)
    with pytest.raises(UsageError, match="training inputs"):
        reinit_sweep(model, layers, {}, images, y, bn="reestimate")
    with pytest.raises(UsageError):
        reinit_sweep(model, layers, {"0": {}}, images, y)


def test_topk_caps_k_at_the_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2]])
    assert topk_correct(logits, torch.tensor([1, 2]), (1, 5)) == [1, 2]
    model = _lenet(0)
    X = torch.randn(10, 1, 8, 8)
    assert evaluate(model, X, self_labelled(model, X), 4) == {"top1": 100.0, "top5": 100.0}


def test_document_schema_metrics_and_heatmap(images):
    model = _lenet(0)
    y = self_labelled(model, images)
    layers = reinit_layers_for(model)
    cks = {"0": layer_tensors(_lenet(5).state_dict(), model, layers),
           "3": layer_tensors(model.state_dict(), model, layers),
           "rand": zero_layer_tensors(model, layers)}
    doc = reinit_document(reinit_sweep(model, layers, cks, images, y), "lenet", "digits", 4, seed=1)
    back = json.loads(json.dumps(doc, allow_nan=False))
    assert {"init_from_epoch", "top1_test", "top5_test", "arch", "dataset", "epoch", "seed"} <= set(back)
    assert list(back["init_from_epoch"]) == ["0", "3", "rand"]
    assert all(len(v) == len(layers) for v in back["init_from_epoch"].values())
    assert back["num_classes"] == 4 and back["epoch"] == "4"
    m = reinit_metrics(back)
    assert m["reinit/s0b0/3"] == 0.0 and m["reinit/top1_test"] == 100.0
    drop, rows, cols = heatmap_matrix(back)
    assert drop.shape == (len(layers), 3) and cols == ["0", "3", "rand"] and rows[0] == "s0b0"
    assert (drop[:, 1] == 0).all()
    fig = reinit_heatmap(back)
    assert isinstance(fig, Figure)
    img = fig.axes[0].images[0].get_array()
    assert img.shape == (len(layers), 3)
    cbar = fig.axes[1]
    assert any(abs(l.get_ydata()[0] - 0.75) < 1e-9 for l in cbar.lines)  # chance 25% of 100% top-1


def test_folded_linear_is_the_pool_then_linear():
    torch.manual_seed(0)
    for pool_out, hw in [((7, 7), (1, 1)), ((6, 6), (2, 2)), ((3, 3), (2, 2))]:
        pool, lin = torch.nn.AdaptiveAvgPool2d(pool_out), torch.nn.Linear(5 * pool_out[0] * pool_out[1], 4)
        folded = FoldedLinear(lin, pool, 5, hw)
        x = torch.randn(3, 5, *hw)
        with torch.no_grad():
            assert torch.allclose(folded(x.flatten(1)), lin(pool(x).flatten(1)), atol=1e-5)
        assert folded.weight.shape == (4, 5 * hw[0] * hw[1])


def test_plan_folds_only_where_it_saves_work():
    small, large = _lenet(0), build_model("lenet", 4, 1, 28, seed=0).eval()
    layers = reinit_layers_for(small, with_linear=True)
    plan = _make_plan(small, layers, torch.randn(2, 1, 8, 8), fold=True, channels_last=True)
    assert any(isinstance(m, FoldedLinear) for m in plan.seq) and plan.channels_last
    assert isinstance(plan.seq[plan.pos["classifier.0"]], FoldedLinear)  # a re-initialized layer can be folded
    plan28 = _make_plan(large, layers, torch.randn(2, 1, 28, 28), fold=True, channels_last=False)
    assert not any(isinstance(m, FoldedLinear) for m in plan28.seq)  # 3x3 maps pooled to 3x3: nothing to fold
    vgg = build_model("vgg11", 3, 1, 8, seed=0).eval()
    vplan = _make_plan(vgg, reinit_layers_for(vgg), torch.randn(2, 1, 8, 8), fold=True, channels_last=True)
    fl = next(m for m in vplan.seq if isinstance(m, FoldedLinear))
    assert fl.weight.shape == (4096, 512)  # 25088 -> 512 inputs
