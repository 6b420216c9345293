"""correlate: alignment of the two documents, Spearman against scipy-free ranks, table and figures."""
from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from projects.hyperplane_bias.correlate import correlate, correlation_metrics, format_table
from projects.hyperplane_bias.plots import correlation_figure, projections_over_training
from shared.errors import UsageError


def _proj(masses, means=None):
    doc = {"net": {"projections": [], "mean": 0.0, "mass": 0.5}, "arch": "x", "dataset": "d", "epoch": "3"}
    keys = [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)][:len(masses)]
    for i, ((s, b), m) in enumerate(zip(keys, masses)):
        doc.setdefault(str(s), {})[str(b)] = {"projections": [], "mass": m,
                                              "mean": (means or [0.0] * 5)[i]}
    return doc, keys


def _reinit(keys, accs, rand=None, layers=True):
    doc = {"init_from_epoch": {"0": accs, "2": [90.0] * len(accs)}, "top1_test": 90.0, "top5_test": 99.0,
           "num_classes": 10}
    if rand:
        doc["init_from_epoch"]["rand"] = rand
    if layers:
        doc["layers"] = [{"name": f"features.{i}", "stage": s, "block": b} for i, (s, b) in enumerate(keys)]
    return doc


def _ranks(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    for rank, i in enumerate(order):
        r[i] = rank + 1.0
    return r


def _pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5


def test_perfectly_monotone_bias_gives_rho_one():
    proj, keys = _proj([0.5, 0.6, 0.75, 0.9, 1.0])  # bias 0, .1, .25, .4, .5
    res = correlate(proj, _reinit(keys, [90.0, 80.0, 50.0, 20.0, 9.0], rand=[9.0] * 5))
    assert res["checkpoint"] == "0"
    assert [r["bias"] for r in res["rows"]] == pytest.approx([0, 0.1, 0.25, 0.4, 0.5])
    assert [r["drop"] for r in res["rows"]] == pytest.approx([0, 1 / 9, 4 / 9, 7 / 9, 0.9])
    assert res["spearman"]["bias"]["rho"] == pytest.approx(1.0)
    assert res["spearman"]["mass"]["rho"] == pytest.approx(1.0)
    assert res["spearman"]["mean"] == {"rho": None, "p": None}  # constant column
    assert correlation_metrics(res) == {"correlate/spearman_mass": pytest.approx(1.0),
                                        "correlate/spearman_bias": pytest.approx(1.0)}
    assert "Spearman rho(bias, drop@0) = +1.000" in format_table(res)


def test_spearman_equals_pearson_of_ranks_without_ties():
    masses = [0.1, 0.95, 0.55, 0.3, 0.7]
    accs = [40.0, 88.0, 10.0, 60.0, 75.0]
    proj, keys = _proj(masses, means=[0.3, -0.2, 0.05, 0.1, -0.4])
    res = correlate(proj, _reinit(keys, accs), checkpoint="0")
    drops = [(90 - a) / 90 for a in accs]
    for stat, xs in (("mass", masses), ("mean", [0.3, -0.2, 0.05, 0.1, -0.4]),
                     ("bias", [abs(m - 0.5) for m in masses])):
        assert res["spearman"][stat]["rho"] == pytest.approx(_pearson(_ranks(xs), _ranks(drops)))


def test_alignment_by_stage_block_and_positional_for_original_files():
    proj, keys = _proj([0.5, 0.6, 0.75, 0.9, 1.0])
    # a reinit over a subset (the last 4 layers, in its own order) aligns by key, not by position
    sub = _reinit(keys[1:], [80.0, 50.0, 20.0, 9.0])
    res = correlate(proj, sub)
    assert [r["layer"] for r in res["rows"]] == ["s0b1", "s1b0", "s2b0", "s2b1"]
    assert [r["mass"] for r in res["rows"]] == [0.6, 0.75, 0.9, 1.0]
    orig = _reinit(keys, [90.0, 80.0, 50.0, 20.0, 9.0], layers=False)  # the original's JSON has no layers
    assert [r["layer"] for r in correlate(proj, orig)["rows"]] == ["s0b0", "s0b1", "s1b0", "s2b0", "s2b1"]


def test_usage_errors():
    proj, keys = _proj([0.5, 0.6, 0.75, 0.9, 1.0])
    with pytest.raises(UsageError, match="choose one of"):
        correlate(proj, _reinit(keys, [1.0] * 5), checkpoint="7")
    with pytest.raises(UsageError, match="at least 3"):
        correlate(proj, _reinit(keys[:2], [1.0, 2.0]))
    with pytest.raises(UsageError):
        correlate(proj, {"init_from_epoch": {}, "top1_test": 1.0})


def test_figures_are_pure_figures():
    proj, keys = _proj([0.5, 0.6, 0.75, 0.9, 1.0])
    res = correlate(proj, _reinit(keys, [90.0, 80.0, 50.0, 20.0, 9.0], rand=[9.0] * 5))
    fig = correlation_figure(res)
    assert isinstance(fig, Figure) and "+1.00" in fig.axes[1].get_title()
    docs = [dict(_proj([0.5, 0.5, 0.5])[0], epoch="0"), dict(_proj([0.6, 0.9, 0.2])[0], epoch="4")]
    fig2 = projections_over_training(docs[::-1], "mass")
    lines = [l for l in fig2.axes[0].lines if l.get_label().startswith("s")]
    assert len(lines) == 3
    assert list(lines[1].get_xdata()) == [0, 4] and list(lines[1].get_ydata()) == [0.5, 0.9]
