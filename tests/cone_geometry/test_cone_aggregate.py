"""Aggregation over runs and epochs against explicit loops; the figures are produced from it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from projects.cone_geometry import aggregate, plots
from shared.errors import UsageError


def _doc(seed, epoch="10", run="0", shape=((4, 2), (6,)), arch="LeNet9"):
    rng = np.random.default_rng(seed)
    blocks = []
    for block in shape:
        pairs = []
        for n in block:
            pairs.append([{"distance": float(rng.uniform(0, 5)), "opening": float(rng.uniform(0, 1)),
                           "rotation": float(rng.uniform(0, 1)), "binary_nesting": int(rng.integers(0, 4))}
                          for _ in range(n)])
        blocks.append({"layer_pairs": pairs})
    return {"name": f"d{seed}", "arch": arch, "dataset": "cifar10", "epoch": epoch, "run": run, "blocks": blocks}


def _loop_fraction(entries):
    out = [0.0] * 4
    for e in entries:
        out[e["binary_nesting"]] += 1
    return [v / len(entries) for v in out]


def test_fractions_match_loops():
    d = _doc(0)
    fr = aggregate.doc_fractions(d)
    allent = [e for b in d["blocks"] for p in b["layer_pairs"] for e in p]
    np.testing.assert_allclose(fr["net"], _loop_fraction(allent))
    for b, block in enumerate(d["blocks"]):
        np.testing.assert_allclose(fr["blocks"][b], _loop_fraction([e for p in block["layer_pairs"] for e in p]))
        for p, pair in enumerate(block["layer_pairs"]):
            np.testing.assert_allclose(fr["pairs"][b][p], _loop_fraction(pair))
    assert aggregate.structure(d) == [[4, 2], [6]]


def test_mean_and_std_over_runs():
    docs = [_doc(s, run=str(s)) for s in range(3)]
    agg = aggregate.aggregate_states(docs)
    per_run = [_loop_fraction([e for b in d["blocks"] for p in b["layer_pairs"] for e in p]) for d in docs]
    for k in range(4):
        vals = [r[k] for r in per_run]
        mean = sum(vals) / 3
        assert agg["net"]["mean"][k] == pytest.approx(mean)
        assert agg["net"]["std"][k] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in vals) / 3))
    assert agg["runs"] == 3 and len(agg["blocks"]) == 2 and len(agg["pairs"][0]) == 2


def test_continuous_values_normalize_distance_by_max_over_runs():
    docs = [_doc(s) for s in range(2)]
    agg = aggregate.aggregate_values(docs)
    dist = [[e["distance"] for b in d["blocks"] for p in b["layer_pairs"] for e in p] for d in docs]
    top = max(max(r) for r in dist)
    expected = [(a / top + b / top) / 2 for a, b in zip(*dist)]
    np.testing.assert_allclose(agg["net"]["mean"][:, 0], expected)
    opening = [[e["opening"] for b in d["blocks"] for p in b["layer_pairs"] for e in p] for d in docs]
    np.testing.assert_allclose(agg["net"]["std"][:, 1], [abs(a - b) / 2 for a, b in zip(*opening)])
    # block level: normalized by the block's maximum
    b1 = [[e["distance"] for e in d["blocks"][1]["layer_pairs"][0]] for d in docs]
    top1 = max(max(r) for r in b1)
    np.testing.assert_allclose(agg["blocks"][1]["mean"][:, 0], [(a + b) / 2 / top1 for a, b in zip(*b1)])


def test_mismatched_structures_are_rejected():
    with pytest.raises(UsageError, match="same blocks"):
        aggregate.aggregate_states([_doc(0), _doc(1, shape=((4,), (6,)))])
    with pytest.raises(UsageError, match="not a nesting JSON"):
        aggregate.aggregate_states([{"name": "x"}])


def test_grouping_and_evolution():
    docs = [_doc(10 * e + r, epoch=str(e), run=str(r)) for e in (20, 0, 100) for r in range(2)]
    docs.append(_doc(99, arch="VGG9"))
    groups = aggregate.group_documents(docs)
    assert set(groups) == {("LeNet9", "cifar10"), ("VGG9", "cifar10")}
    by_epoch = groups[("LeNet9", "cifar10")]
    assert list(by_epoch) == ["0", "20", "100"] and all(len(v) == 2 for v in by_epoch.values())
    evo = aggregate.evolution(by_epoch)
    assert evo["net_mean"].shape == (3, 4) and evo["block_mean"].shape == (3, 2, 4) and evo["cont_mean"].shape == (3, 2, 3)
    np.testing.assert_allclose(evo["net_mean"][1], aggregate.aggregate_states(by_epoch["20"])["net"]["mean"])
    np.testing.assert_allclose(evo["net_mean"].sum(axis=1), 1.0)
    # continuous: the block-1 mean opening of epoch 0 is the mean over runs of the per-run block means
    op = [np.mean([e["opening"] for e in d["blocks"][1]["layer_pairs"][0]]) for d in by_epoch["0"]]
    assert evo["cont_mean"][0, 1, 1] == pytest.approx(np.mean(op))
    assert evo["cont_mean"][:, :, 0].max() <= 1.0
    for fig in (plots.evolution_states(evo, "t"), plots.evolution_continuous(evo, "t")):
        assert len(fig.axes) >= 3


def test_figures_are_built():
    docs = [_doc(s) for s in range(2)]
    figs = plots.figure_set(aggregate.aggregate_states(docs), aggregate.aggregate_values(docs), "LeNet9")
    assert set(figs) == {"netwise_states", "blockwise_states", "continuous"}
    heights = [p.get_height() for p in figs["netwise_states"].axes[0].patches]
    np.testing.assert_allclose(heights, aggregate.aggregate_states(docs)["net"]["mean"])


def test_jsonable():
    obj = aggregate.to_jsonable({"a": np.array([1.0, np.nan]), "b": (np.float64(2.0),)})
    assert obj == {"a": [1.0, None], "b": [2.0]}
