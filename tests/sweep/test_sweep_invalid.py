"""The shared driver's "invalid trial: recorded, not counted" (feature_amounts' skew-normal space, which replaced
`feature-amounts optimize`), and required options found before the first trial."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from projects.feature_amounts.variants import invalid_reason, make_variant

REPO = Path(__file__).resolve().parents[2]

# (mean, scale, skew): 0 and 15 put half the density outside the 15 layers of VGG-16, 7 with scale 3 is valid
FA_SPACE = """\
params:
  mean: {type: categorical, choices: [0.0, 15.0, 7.0]}
  scale: {type: categorical, choices: [3.0]}
  skew: {type: categorical, choices: [0.0]}
fixed: {dataset: digits, patch_size: 28, width_multiplier: 0.02, train_fraction: 0.25, split_cache: "", epochs: 1,
        split: 0.2, abort_rule: false}
"""


def _one_error_line(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_the_test_space_has_invalid_and_valid_points():
    assert invalid_reason(make_variant(0.0, 3.0, 0.0, 16, 28, 0.02))
    assert invalid_reason(make_variant(15.0, 3.0, 0.0, 16, 28, 0.02))
    assert invalid_reason(make_variant(7.0, 3.0, 0.0, 16, 28, 0.02)) is None


def _fa_sweep(cli, space, storage, n, *extra):
    return cli("sweep", "feature_amounts", "train", "--space", space, "--n-trials", str(n), "--study", "fa",
               "--storage", storage, "--metric", "val_acc", "--objective", "best", *extra)


def test_invalid_points_are_recorded_and_not_counted(mlflow_store, cli, tmp_path):
    space = tmp_path / "fa.yaml"
    space.write_text(FA_SPACE.replace("mean: {type: categorical, choices: [0.0, 15.0, 7.0]}",
                                      "mean: {type: float, low: 0.0, high: 15.0}"))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    r = _fa_sweep(cli, space, storage, 1, "--sampler", "random", "--seed", "2")  # seed 2: two invalid means first
    assert r.exit_code == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="fa", storage=storage)
    invalid = [t for t in study.trials if "invalid" in t.user_attrs]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 1 and len(invalid) == 2 and len(study.trials) == 3  # one trained, two recorded
    assert all(t.state.name == "PRUNED" and "original's rules reject" in t.user_attrs["invalid"] for t in invalid)
    assert all(not t.user_attrs.get("mlflow_run_ids") for t in invalid)  # nothing trained for them
    assert len(complete[0].user_attrs["mlflow_run_ids"]) == 1
    # the counts the user reads are the study's: invalid trials are not reported as pruned
    assert "1/1 trials done (1 complete, 0 pruned, 0 failed, 2 invalid, not counted)" in r.stdout
    table = json.loads((tmp_path / "outputs" / "sweeps" / "fa" / "trials.json").read_text())
    assert sum("invalid" in row for row in table) == 2


def test_a_grid_with_invalid_points_ends_when_its_valid_points_are_done(mlflow_store, cli, tmp_path):
    space = tmp_path / "fa.yaml"
    space.write_text(FA_SPACE)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    r = _fa_sweep(cli, space, storage, 3, "--sampler", "grid")
    assert r.exit_code == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="fa", storage=storage)
    assert sorted(t.params["mean"] for t in study.trials) == [0.0, 7.0, 15.0]  # each point once
    assert "1/1 trials done (1 complete, 0 pruned, 0 failed, 2 invalid, not counted)" in r.stdout


def test_example_optimize_spaces_parse_against_the_command(mlflow_store, cli, tmp_path):
    from shared.sweep.command import check_space
    from shared.sweep.space import load_space
    from tests.sweep.test_sweep_space import resolve_command

    target = resolve_command("feature_amounts", "train")
    for name in ("optimize.yaml", "optimize_grid.yaml"):
        check_space(load_space(REPO / "projects" / "feature_amounts" / "spaces" / name), target)


@pytest.mark.parametrize("project", ["shared", "cone_geometry", "hyperplane_bias"])
def test_a_space_without_a_required_arch_stops_before_any_trial(mlflow_store, cli, tmp_path, project):
    space = tmp_path / "noarch.yaml"
    space.write_text("params:\n  lr: {type: float, low: 1.0e-2, high: 2.0e-1}\nfixed: {dataset: digits, epochs: 1}\n")
    storage = tmp_path / "optuna.db"
    r = cli("sweep", project, "train", "--space", space, "--n-trials", "3", "--storage", f"sqlite:///{storage}",
            "--metric", "test_acc")
    line = _one_error_line(r)
    assert "needs --arch" in line and "fixed:" in line and str(space) in line
    assert not storage.exists()  # no study, no trial
