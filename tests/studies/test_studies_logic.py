"""The study driver's pure parts: settings, verdict rules, the studies' statistics, the quoted claims."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from shared.errors import UsageError
from shared.study import (FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED, Claim, Paper, PaperClaim, Precondition, Report,
                          mean_ci, resolve_settings, verdict_by_interval, verdict_by_p, verdict_vs_null)


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


def test_verdict_vs_null_gives_each_verdict():
    null = [0.010, 0.020, 0.015]
    assert verdict_vs_null([0.30, 0.32, 0.31], null)[0] == HOLDS
    assert verdict_vs_null([0.012, 0.019, 0.016], null, min_effect=0.05)[0] == FAILS  # far below the smallest effect
    assert verdict_vs_null([0.0, 0.01, 0.005], null)[0] == FAILS  # the other way: below the null
    assert verdict_vs_null([0.012, 0.019, 0.016], null)[0] == INCONCLUSIVE  # no effect, none required either
    assert verdict_vs_null([0.30], [0.01])[0] == INCONCLUSIVE  # one pair: no spread
    assert verdict_vs_null([0.30, float("nan"), 0.31], null)[0] == INCONCLUSIVE
    # smaller is the claim's side
    assert verdict_vs_null([-0.30, -0.32, -0.31], null, larger=False)[0] == HOLDS
    # an effect smaller than the replicates' spread does not hold, even with a narrow paired interval
    assert verdict_vs_null([1.05, 2.05, 3.05], [1.0, 2.0, 3.0])[0] == INCONCLUSIVE
    assert verdict_vs_null([0.30, 0.32, 0.31], null, min_effect=0.5)[0] == FAILS  # real, but below what counts
    d = verdict_vs_null([0.3, 0.32], [0.1, 0.1])[1]
    assert d == pytest.approx([0.2, 0.22])


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_the_null_in_both_arms_does_not_hold(n):
    """Both arms the same null: never "holds". Both arms drawn from one distribution (seed-only differences): "holds"
    in under 0.5% of 4000 draws, whichever side is claimed (a fixed-seed draw: the test is deterministic)."""
    rng = np.random.default_rng(n)
    held = 0
    for _ in range(2000):
        a, b = rng.normal(0.3, 0.05, n), rng.normal(0.3, 0.05, n)
        assert verdict_vs_null(list(a), list(a))[0] != HOLDS
        held += sum(verdict_vs_null(list(a), list(b), larger=larger)[0] == HOLDS for larger in (True, False))
    assert held / 4000 < 0.005


def test_a_failed_precondition_makes_the_claim_not_tested_and_the_report_shows_why():
    ok = Precondition("student mimics teacher", "agreement 0.91 vs 0.12", "above the epoch-0 student's", True)
    bad = Precondition("loss fell", "first 1.0, last 0.9", "must fall by x2", False)
    c = Claim("c", "a quote", "Fig. 2", "stat", "1.0 ± 0.1", "rule", HOLDS, 1.0, null="0.1 ± 0.1",
              preconditions=[ok, bad])
    assert c.verdict == NOT_TESTED and "loss fell" in c.reason and "student mimics" not in c.reason
    c2 = Claim("d", "own words", "study hypothesis", "stat", "m", "rule", FAILS, preconditions=[ok], hypothesis=True)
    assert c2.verdict == FAILS
    paper = Paper("A. Author, Title, Venue 2020", (PaperClaim("p1", "Sec. 3", "a quote", ("c",)),
                                                   PaperClaim("p2", "Fig. 9", "other", (), "needs ImageNet")))
    rep = Report("T", "proj", "cpu", "summary", claims=[c, c2], paper=paper, hardware={"cpu": "X", "cpu_isa": "avx2"})
    md = rep.markdown()
    assert "not tested: loss fell: first 1.0, last 0.9 (must fall by x2) FAILED" in md
    assert "0.1 ± 0.1" in md and "(study hypothesis)" in md and "| cpu_isa | avx2 |" in md
    assert "| p1 | Sec. 3 | “a quote” | c: not tested |" in md and "not tested: needs ImageNet" in md
    doc = rep.as_dict()
    assert doc["hardware"]["cpu"] == "X" and doc["paper"]["claims"][1]["why_not"] == "needs ImageNet"
    assert doc["claims"][0]["null"] == "0.1 ± 0.1" and doc["claims"][0]["preconditions"][1]["ok"] is False
    assert "not tested: loss fell" in rep.html({})


def test_hardware_is_described_and_bf16_detection_follows_the_cpu_flags(monkeypatch):
    import shared.hardware as hw

    d = hw.describe("cpu")
    assert {"cpu", "cpu_isa", "gpu", "torch", "threads", "cpu_bf16"} <= set(d) and all(isinstance(v, str) for v in d.values())
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert hw.cpu_isa() == "avx512_bf16,avx512f,avx2" and hw.fast_precision("cpu") == ("bf16-mixed", True)
    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset({"avx2"}))
    assert hw.fast_precision("cpu") == ("fp32", False)


SEED_FILES = {"cone_geometry": "002_c8e1d96860136141.txt", "hyperplane_bias": "001_0d6e72c4d5690c7b.txt",
              "depth_limit": "003_ebcfadec71355410.txt", "feature_amounts": "004_33ec712cee959f3a.txt"}
SEEDS = Path(os.environ.get("GEOMLAB_SEEDS_DIR", Path(__file__).resolve().parents[3] / "shared" / "seeds"))


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the papers' READMEs are not on this machine (set GEOMLAB_SEEDS_DIR)")
@pytest.mark.parametrize("project", sorted(SEED_FILES))
def test_every_quoted_claim_is_verbatim_in_its_paper(project):
    """The quotes kept in the repository (each project's PAPER) appear verbatim in the paper's README or poster."""
    import importlib

    mod = importlib.import_module(f"projects.{project}.study")
    text = " ".join((SEEDS / SEED_FILES[project]).read_text().split())
    for pc in mod.PAPER.claims:
        assert " ".join(pc.quote.split()) in text, (project, pc.name, pc.quote)
