"""The study driver's pure parts: settings, verdict rules, the studies' statistics, the quoted claims."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shared.errors import UsageError
from shared.study import (FAILS, HOLDS, INCONCLUSIVE, SEEDS_DIR, mean_ci, quote_in_seed, resolve_settings,
                          verdict_by_interval, verdict_by_p)


def test_verdict_by_interval():
    assert verdict_by_interval(0.1, 0.3, 0.0) == HOLDS
    assert verdict_by_interval(-0.3, -0.1, 0.0) == FAILS
    assert verdict_by_interval(-0.1, 0.2, 0.0) == INCONCLUSIVE
    assert verdict_by_interval(math.nan, math.nan, 0.0) == INCONCLUSIVE
    assert verdict_by_interval(-0.5, -0.2, 0.1, above_holds=False) == HOLDS
    assert verdict_by_interval(0.2, 0.5, 0.1, above_holds=False) == FAILS


def test_verdict_by_p():
    assert verdict_by_p(0.01, 0.8) == HOLDS
    assert verdict_by_p(0.01, -0.8) == FAILS
    assert verdict_by_p(0.2, 0.8) == INCONCLUSIVE
    assert verdict_by_p(None, None) == INCONCLUSIVE
    assert verdict_by_p(0.01, -0.8, positive=False) == HOLDS


def test_mean_ci():
    m, sd, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and sd == 1.0
    assert lo == pytest.approx(2 - 4.302653 / math.sqrt(3)) and hi == pytest.approx(2 + 4.302653 / math.sqrt(3))
    assert math.isnan(mean_ci([1.0])[2])


def test_settings_override_and_bad_values():
    from projects.depth_limit.study import PRESETS

    s = resolve_settings(PRESETS, "smoke", {"depths": "8,16", "epochs": "3", "alphas": None})
    assert s.depths == (8, 16) and s.epochs == 3 and s.alphas == PRESETS["smoke"].alphas
    with pytest.raises(UsageError, match="--scale must be one of: smoke, cpu, paper"):
        resolve_settings(PRESETS, "huge", {})
    with pytest.raises(UsageError, match="--epochs got 'x'"):
        resolve_settings(PRESETS, "smoke", {"epochs": "x"})
    with pytest.raises(UsageError, match="at least two"):
        resolve_settings(PRESETS, "smoke", {"alphas": "0.5"})
    with pytest.raises(UsageError, match="--classification 'cifar11' is not a registered dataset; use one of: .*mnist"):
        resolve_settings(PRESETS, "smoke", {"classification": "cifar11"})
    assert resolve_settings(PRESETS, "smoke", {"classification": ""}).classification == ""


def test_bad_scale_is_one_line_and_leaves_no_run(mlflow_store, cli):
    from mlflow.tracking import MlflowClient

    res = cli("depth-limit", "study", "--scale", "huge")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == ["error: --scale must be one of: smoke, cpu, paper; got 'huge'"]
    client = MlflowClient()
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def _cone_doc(block_counts):
    """A nesting document (the schema `nesting` writes): one pair per block, ``counts[s]`` filter-channels in state s."""
    blocks = []
    for counts in block_counts:
        entries = [{"distance": 1.0, "opening": 0.5, "rotation": 0.1, "binary_nesting": s}
                   for s, n in enumerate(counts) for _ in range(n)]
        blocks.append({"layer_pairs": [entries]})
    return {"blocks": blocks}


def test_cone_statistics_follow_the_documents():
    from projects.cone_geometry.aggregate import doc_fractions
    from projects.cone_geometry.study import block_variance, claims, consecutive_distances

    doc = _cone_doc([[4, 0, 0, 0], [0, 2, 2, 0]])
    fr = doc_fractions(doc)
    assert np.allclose(fr["blocks"][1], [0, 0.5, 0.5, 0])
    # block 0 differs between runs, block 1 does not; block 1 moves to state 3 ever more slowly (8, 12, 14, 15 of 16)
    docs = {(k, e): _cone_doc([[8 - shift, shift, 0, 0], [16 - m, 0, 0, m]])
            for k, shift in enumerate([0, 2, 4]) for e, m in zip([1, 2, 3, 4], [8, 12, 14, 15])}
    var = block_variance(docs, [0, 1, 2], [1, 2, 3, 4])
    assert var.shape == (4, 2) and np.all(var[:, 0] > var[:, 1])
    dist = consecutive_distances(docs, [0, 1, 2], [1, 2, 3, 4])
    assert dist.shape == (3, 3) and np.all(np.diff(dist, axis=1) <= 0)
    (c_var, c_stab), _, _ = claims(docs, [0, 1, 2], [1, 2, 3, 4])
    assert c_var.verdict == HOLDS and c_var.value < 0
    assert c_stab.verdict == HOLDS and c_stab.value < 0


def test_cone_accuracy_table_shows_untrained_teachers_and_students_per_epoch():
    from projects.cone_geometry.study import accuracy_rows

    accs = {(0, 0): (None, 0.10), (1, 0): (None, 0.12), (0, 2): (0.85, 0.70), (1, 2): (0.87, 0.74)}
    rows = accuracy_rows(accs, [0, 1], [0, 2])
    assert rows[0] == ["0", "–", "0.110 ± 0.014"]  # no test accuracy of the epoch-0 (untrained) teacher
    assert rows[1] == ["2", "0.860 ± 0.014", "0.720 ± 0.028"]
    assert accuracy_rows({(0, 2): (0.85, 0.7)}, [0], [2]) == [["2", "0.850", "0.700"]]


def test_depth_slope_and_feature_amounts_rule():
    from projects.depth_limit.study import log_log_slope
    from projects.feature_amounts.study import early_claim

    assert log_log_slope([8, 32, 128], [1.0, 4.0, 16.0]) == pytest.approx(1.0)
    assert log_log_slope([8, 32, 128], [2.0, 2.0, 2.0]) == pytest.approx(0.0)
    recs = [{"VariantId": "a", "Mean": 0.0, "Variance": 4.0, "Skew": 24, "BestVal": 89.0, "Parameters": 10},
            {"VariantId": "b", "Mean": 14.0, "BestVal": 70.0, "Parameters": 10},
            {"VariantId": "ref", "Mean": None, "BestVal": 90.0, "Parameters": 12}]
    c1, c2, rows = early_claim(recs, 16, 2.0, 10.0)
    assert c1.verdict == HOLDS and c1.value == pytest.approx(-1.0)
    assert c2.verdict == HOLDS and "ranks 1 of 3" in c2.statistic
    assert rows[1] == ["a", 0.0, 4.0, 24, 10, 89.0]  # the result record's columns (its scale is "Variance")
    recs[0]["BestVal"] = 80.0
    assert early_claim(recs, 16, 2.0, 10.0)[0].verdict == FAILS
    recs[2]["BestVal"] = 11.0  # a reference at chance level learned nothing: no verdict either way
    assert early_claim(recs, 16, 2.0, 10.0)[0].verdict == INCONCLUSIVE
    recs[0]["BestVal"] = 10.5  # the median network at chance: the range is noise
    assert early_claim(recs, 16, 2.0, 10.0)[1].verdict == INCONCLUSIVE


def test_feature_amounts_grid_spreads_over_mean_and_skew():
    from projects.feature_amounts.study import choose_grid
    from projects.feature_amounts.variants import generate_variants

    grid = choose_grid(generate_variants(16, 16, 0.05), 12)
    assert len(grid) == 12 == len({(v.mean, v.skew) for v in grid})
    assert len({v.mean for v in grid}) >= 8 and min(v.skew for v in grid) < 0 < max(v.skew for v in grid)


def test_hyperplane_regularity_rule():
    from projects.hyperplane_bias.study import regularity_claims

    bias = {"init": {0: 0.01, 1: 0.02, 2: 0.015}, "clean": {0: 0.3, 1: 0.32, 2: 0.31},
            "noise": {0: 0.1, 1: 0.12, 2: 0.08}, "shuffle": {0: 0.35, 1: 0.2, 2: 0.4}}
    c = {x.name: x.verdict for x in regularity_claims(bias)}
    assert c["emerges_from_training"] == HOLDS
    assert c["correlates_with_learning_noise"] == HOLDS
    assert c["correlates_with_learning_shuffle"] == INCONCLUSIVE


@pytest.mark.skipif(not SEEDS_DIR.is_dir(), reason="the papers' READMEs are not on this machine")
def test_every_quoted_claim_is_verbatim_in_its_source():
    import projects.cone_geometry.study as cg
    import projects.depth_limit.study as dl
    import projects.feature_amounts.study as fa
    import projects.hyperplane_bias.study as hb

    for mod, quotes in ((cg, [cg.QUOTE_VAR, cg.QUOTE_STABLE]), (hb, [hb.QUOTE_REGULAR, hb.QUOTE_CRITICAL]),
                        (dl, [dl.QUOTE_TITLE]), (fa, [fa.QUOTE])):
        for q in quotes:
            assert quote_in_seed(q, mod.SEED), (mod.__name__, q)


@pytest.mark.parametrize("project", ["cone_geometry", "hyperplane_bias", "depth_limit", "feature_amounts"])
def test_mlproject_study_entry_point_reaches_the_study_command(project, mlflow_store, cli):
    """The entry point's command line with its defaults parses; an unknown scale then stops it before any run."""
    import shlex
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    ep = yaml.safe_load((root / "projects" / project / "MLproject").read_text())["entry_points"]["study"]
    values = {k: v.get("default", "") for k, v in ep["parameters"].items()}
    values["scale"] = "huge"
    argv = shlex.split(ep["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
    assert argv[:5] == ["python", "-m", "shared.cli", project.replace("_", "-"), "study"]
    r = cli(*argv[3:])
    assert r.exit_code == 2 and "--scale must be one of" in r.stderr, r.output
