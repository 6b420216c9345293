"""Projection statistics on hand-built weights with known answers, and fast vs literal reference."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import hyper_reference as ref
from projects.hyperplane_bias.models import build_model
from projects.hyperplane_bias.projections import (LayerRef, counted_layers, epoch_from_name, filter_projections,
                                                  mass, projection_metrics, projection_statistics,
                                                  projections_document, relative_distances)
from shared.errors import UsageError


class Hand(nn.Module):
    """conv_a (0,0) | 1x1 skipped | pool | conv_b (1,0) | pool | linears (2,0), (2,1) with the modules walk."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.MaxPool2d(2),
                                      nn.Conv2d(2, 3, 2), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([[1., 2, 3, 4], [-1, -1, 1, 1]]).view(2, 1, 2, 2))
            w = torch.stack([-torch.ones(8), torch.zeros(8), 0.5 * torch.ones(8)]).view(3, 2, 2, 2)
            self.features[4].weight.copy_(w)
            self.classifier[0].weight.copy_(torch.tensor([[1., 1, 1], [-2, 0, 0]]))
            self.classifier[2].weight.copy_(torch.tensor([[3., -4], [0, 0]]))


def test_counted_layers_keys_and_walks():
    m = Hand()
    got = counted_layers(m, "modules", with_linear=True)
    assert got == [LayerRef("features.0", "conv", 0, 0), LayerRef("features.4", "conv", 1, 0),
                   LayerRef("classifier.0", "linear", 2, 0), LayerRef("classifier.2", "linear", 2, 1)]
    assert counted_layers(m, "features", with_linear=True) == got[:2]  # seed walk never sees the classifier
    assert counted_layers(m, "modules") == got[:2]
    with pytest.raises(UsageError):
        counted_layers(nn.Sequential(nn.Linear(2, 2)), "features")
    with pytest.raises(UsageError):
        counted_layers(m, "sideways")


def test_hand_built_projections_mass_mean():
    doc = projection_statistics(Hand(), normalize=False)
    a, b = doc["0"]["0"], doc["1"]["0"]
    assert a["projections"] == [10.0, 0.0] and a["mean"] == 5.0 and a["mass"] == 0.5  # the tie at 0 counts
    assert b["projections"] == [-8.0, 0.0, 4.0] and b["mean"] == pytest.approx(-4 / 3) and b["mass"] == 2 / 3
    assert doc["net"]["projections"] == [10.0, 0.0, -8.0, 0.0, 4.0]
    assert doc["net"]["mass"] == 3 / 5 and doc["net"]["mean"] == pytest.approx(6 / 5)

    n = projection_statistics(Hand(), normalize=True)
    assert n["0"]["0"]["projections"] == pytest.approx([10 / (math.sqrt(30) * 2), 0.0])
    assert n["1"]["0"]["projections"] == pytest.approx([-1.0, 0.0, 1.0])  # zero filter -> 0, not NaN
    assert n["1"]["0"]["mass"] == 2 / 3 and n["1"]["0"]["mean"] == pytest.approx(0.0)


def test_hand_built_linear_rows():
    doc = projection_statistics(Hand(), normalize=True, with_linear=True)
    lin0, lin1 = doc["2"]["0"], doc["2"]["1"]
    assert lin0["projections"] == pytest.approx([1.0, -2 / (2 * math.sqrt(3))])
    assert lin0["mass"] == 0.5
    assert lin1["projections"] == pytest.approx([-1 / (5 * math.sqrt(2)) * 1, 0.0])
    assert lin1["mass"] == 1.0
    assert len(doc["net"]["projections"]) == 2 + 3 + 2 + 2


def test_relative_distances_known_and_degenerate():
    w = torch.tensor([[1., 2, 3, 4], [-1, -1, 1, 1]])
    d = relative_distances(w, torch.ones(2, 4))
    assert d["l2_dist"] == pytest.approx(math.sqrt(22 / 8)) and d["l_inf_dist"] == pytest.approx(3.0)
    assert relative_distances(w, w) == {"l2_dist": 0.0, "l_inf_dist": 0.0}
    assert relative_distances(w, torch.zeros(2, 4)) == {"l2_dist": None, "l_inf_dist": None}
    with pytest.raises(UsageError):
        relative_distances(w, torch.ones(4, 2))


def test_distances_in_document_use_the_init_state():
    m = Hand()
    init = {k: torch.ones_like(v) for k, v in m.state_dict().items()}
    doc = projection_statistics(m, init_state=init)
    assert doc["0"]["0"]["l2_dist"] == pytest.approx(math.sqrt(22 / 8))
    assert doc["1"]["0"]["l_inf_dist"] == pytest.approx(2.0)  # max|W - 1| = |-1 - 1|
    assert "l2_dist" not in doc["net"]
    with pytest.raises(UsageError):
        projection_statistics(m, init_state={})


@pytest.mark.parametrize("normalize", [False, True])
def test_fast_matches_literal_reference_on_lenet(normalize):
    m = build_model("lenet", 10, 1, 28, seed=3)
    init = build_model("lenet", 10, 1, 28, seed=4).state_dict()
    doc = projection_statistics(m, normalize=normalize, with_linear=True, init_state=init)
    mods = dict(m.named_modules())
    for r in counted_layers(m, with_linear=True):
        e = doc[str(r.stage)][str(r.block)]
        p = ref.layer_projections(mods[r.name].weight, normalize)
        assert e["projections"] == pytest.approx(p, rel=1e-10, abs=1e-12)
        assert e["mass"] == ref.mass_of(p)
        assert e["mean"] == pytest.approx(sum(p) / len(p), rel=1e-10, abs=1e-12)
        w0 = init[f"{r.name}.weight"]
        assert e["l2_dist"] == pytest.approx(ref.relative_l2(mods[r.name].weight, w0), rel=1e-9)
        assert e["l_inf_dist"] == pytest.approx(ref.relative_linf(mods[r.name].weight, w0), rel=1e-9)


def test_stage_block_keys_of_real_architectures():
    lenet = build_model("lenet", 10, 3, 32, seed=0)
    keys = [(r.stage, r.block) for r in counted_layers(lenet, with_linear=True)]
    assert keys == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    alex = build_model("alexnet", 10, 3, 32, seed=0)
    assert [(r.stage, r.block) for r in counted_layers(alex, "features")] == \
        [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
    assert counted_layers(alex, "features") == counted_layers(alex, "modules")


def test_mass_ties_and_filter_projection_shapes():
    assert mass(torch.tensor([0.0, 0.0, 1.0, -1.0])) == 0.75
    p = filter_projections(torch.randn(5, 3, 3, 3), normalize=True)
    assert p.shape == (5,) and bool((p.abs() <= 1 + 1e-12).all())


def test_epoch_from_name_follows_the_original_rule():
    assert epoch_from_name("vgg19_init_0") == 0
    assert epoch_from_name("alexnet_pretrained_0") == -1
    assert epoch_from_name("lenet_4") == 5
    assert epoch_from_name("vgg19_bn_19") == 20  # the original's final file <arch>_<epochs> -> epochs + 1
    with pytest.raises(UsageError):
        epoch_from_name("lenet_final")


def test_document_schema_is_plain_json():
    doc = projections_document(projection_statistics(Hand(), normalize=True), "hand", "digits", 3, seed=7)
    back = json.loads(json.dumps(doc, allow_nan=False))
    assert set(back) == {"0", "1", "net", "arch", "dataset", "epoch", "seed"}
    assert back["epoch"] == "3" and back["seed"] == "7"
    assert set(back["0"]["0"]) == {"projections", "mean", "mass"}
    metrics = projection_metrics(back)
    assert metrics["proj/s0b0/mass"] == 0.5 and metrics["proj/s1b0/mass"] == pytest.approx(2 / 3)
    assert metrics["proj/net/mass"] == 0.6
