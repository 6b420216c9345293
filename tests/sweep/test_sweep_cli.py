"""`geomlab sweep` end to end on one machine (SQLite storage, SQLite MLflow store): trials as nested MLflow runs,
the parent's summary, resume, pruning, grid, a worker killed in the middle of a trial, and bad input.

The trial command is the root `geomlab train --arch lenet_small --dataset digits` (tiny: a second per epoch)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient

from shared.sweep.samplers import PRUNERS

SPACE = """\
params:
  lr: {type: float, low: 1.0e-2, high: 2.0e-1, log: true}
  width: {type: int, low: 2, high: 6}
fixed:
  arch: lenet_small
  dataset: digits
  epochs: EPOCHS
"""


def _write_space(tmp_path: Path, epochs: int = 1, name: str = "space.yaml", text: str = SPACE) -> Path:
    p = tmp_path / name
    p.write_text(text.replace("EPOCHS", str(epochs)))
    return p


def _storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _sweep_args(tmp_path, space, study, n, *extra):
    return ["sweep", "shared", "train", "--space", str(space), "--n-trials", str(n), "--study", study,
            "--storage", _storage(tmp_path), "--metric", "test_acc", "--seed", "3", *extra]


def _runs(study: str):
    c = MlflowClient()
    exps = [e.experiment_id for e in c.search_experiments()]
    runs = c.search_runs(exps, filter_string=f"tags.optuna_study = '{study}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("entry_point") == "sweep"]
    children = [r for r in runs if r.data.tags.get("entry_point") != "sweep"]
    return parents, children


def _one_line_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def test_sweep_logs_trials_under_one_parent_and_resumes(mlflow_store, cli, tmp_path):
    space = _write_space(tmp_path)
    r = cli(*_sweep_args(tmp_path, space, "s1", 3))
    assert r.exit_code == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="s1", storage=_storage(tmp_path))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    parents, children = _runs("s1")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    by_trial = {int(c.data.tags["optuna_trial"]): c for c in children}
    assert sorted(by_trial) == [0, 1, 2]
    for t in study.trials:
        run = by_trial[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["state"] == "COMPLETE"
        assert run.data.params["train.lr"] == str(t.params["lr"])  # the sampled value reached the command
        assert run.data.params["model.width"] == str(t.params["width"])
        assert t.value == pytest.approx(run.data.metrics["test_acc"])
        assert t.user_attrs["mlflow_run_ids"] == [run.info.run_id]
    best = study.best_trial
    assert parent.data.tags["best_trial"] == str(best.number)
    assert float(parent.data.tags["best_value"]) == pytest.approx(best.value)
    assert parent.data.tags["best_params.width"] == str(best.params["width"])
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    c = MlflowClient()
    arts = {a.path for d in ("sweep", "figures") for a in c.list_artifacts(parent.info.run_id, d)}
    assert {"sweep/space.yaml", "sweep/best_trial.json", "sweep/trials.json", "sweep/param_importances.json",
            "figures/optimization_history.png", "figures/parallel_coordinate.png"} <= arts
    imp = c.download_artifacts(parent.info.run_id, "sweep/param_importances.json", str(tmp_path))
    assert set(json.loads(Path(imp).read_text())["importances"]) == {"lr", "width"}

    # the same command with a larger budget runs only the missing trial; once more, none
    r = cli(*_sweep_args(tmp_path, space, "s1", 4))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "3 of 4 trials done" in r.stdout and "trial 3: COMPLETE" in r.stdout
    r = cli(*_sweep_args(tmp_path, space, "s1", 4))
    assert r.exit_code == 0 and "trial 4" not in r.stdout
    study = optuna.load_study(study_name="s1", storage=_storage(tmp_path))
    assert len(study.trials) == 4
    parents, children = _runs("s1")
    assert len(parents) == 1 and len(children) == 4

    # continuing it with another space is refused before any trial
    other = _write_space(tmp_path, epochs=2, name="other.yaml")
    r = cli(*_sweep_args(tmp_path, other, "s1", 5))
    assert "was started with another fixed" in _one_line_error(r)
    assert len(optuna.load_study(study_name="s1", storage=_storage(tmp_path)).trials) == 4


def _always_prune(epochs):
    return optuna.pruners.ThresholdPruner(lower=2.0)  # accuracy is never >= 2: every trial is pruned at epoch 1


def test_pruned_trials_stop_early_and_are_tagged(mlflow_store, cli, tmp_path):
    if "always" not in PRUNERS:
        PRUNERS.register("always", _always_prune)
    space = _write_space(tmp_path, epochs=3)
    r = cli(*_sweep_args(tmp_path, space, "pr", 2, "--pruner", "always"))
    assert r.exit_code == 0, r.stdout + r.stderr
    study = optuna.load_study(study_name="pr", storage=_storage(tmp_path))
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    _, children = _runs("pr")
    assert len(children) == 2
    c = MlflowClient()
    for run in children:
        assert run.data.tags["state"] == "PRUNED"
        assert "pruned by Optuna" in run.data.tags["stop_reason"]
        assert run.info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(run.info.run_id, "test_acc")] == [1]  # stopped after epoch 1


def test_grid_sweep_runs_each_point_once(mlflow_store, cli, tmp_path):
    grid = "params:\n  width: {type: int, low: 2, high: 3}\nfixed: {arch: lenet_small, epochs: 1}\n"
    space = _write_space(tmp_path, name="grid.yaml", text=grid)
    r = cli(*_sweep_args(tmp_path, space, "g", 5, "--sampler", "grid"))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "the grid has 2 points" in r.stdout
    study = optuna.load_study(study_name="g", storage=_storage(tmp_path))
    assert sorted(t.params["width"] for t in study.trials) == [2, 3]


def test_metric_the_command_never_reports_stops_after_the_first_trial(mlflow_store, cli, tmp_path):
    text = SPACE + "metrics: [nesting_rate]\n"
    space = _write_space(tmp_path, name="m.yaml", text=text)
    args = _sweep_args(tmp_path, space, "m", 3)
    args[args.index("test_acc")] = "nesting_rate"
    msg = _one_line_error(cli(*args))
    assert "metric nesting_rate was not reported by `geomlab train` (it reported:" in msg and "test_acc" in msg
    study = optuna.load_study(study_name="m", storage=_storage(tmp_path))
    assert [t.state.name for t in study.trials] == ["FAIL"]


@pytest.mark.parametrize("case", ["bad_yaml", "unknown_param", "unknown_metric", "val_without_split",
                                  "unreachable_storage", "unreachable_tracking", "grid_without_step"])
def test_bad_input_fails_before_any_trial(mlflow_store, cli, tmp_path, monkeypatch, case):
    space = _write_space(tmp_path)
    args = _sweep_args(tmp_path, space, "bad", 2)

    def replace(option, value):
        args[args.index(option) + 1] = value

    needle = {
        "bad_yaml": "is not valid YAML at line 3",
        "unknown_param": "unknown parameter 'widht' for `geomlab train` (did you mean width?)",
        "unknown_metric": "unknown metric 'tset_acc'",
        "val_without_split": "metric val_acc is never reported by `geomlab train` with split=0.0",
        "unreachable_storage": "cannot reach the Optuna storage postgresql+psycopg2://127.0.0.1:1/x",
        "unreachable_tracking": "the MLflow tracking server http://127.0.0.1:1 does not answer",
        "grid_without_step": "the grid sampler needs a `step` for the float parameter lr",
    }[case]
    if case == "bad_yaml":
        space.write_text("params:\n  lr: {type: float, low: 0.1\n")
    elif case == "unknown_param":
        space.write_text(SPACE.replace("width:", "widht:").replace("EPOCHS", "1"))
    elif case == "unknown_metric":
        replace("--metric", "tset_acc")
    elif case == "val_without_split":
        replace("--metric", "val_acc")
    elif case == "unreachable_storage":
        replace("--storage", "postgresql://127.0.0.1:1/x")
    elif case == "unreachable_tracking":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    elif case == "grid_without_step":
        args += ["--sampler", "grid"]
    t0 = time.monotonic()
    msg = _one_line_error(cli(*args))
    assert needle in msg, msg
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "optuna.db").exists()  # no study, no trial
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    mlflow.set_tracking_uri(mlflow_store)
    assert _runs("bad") == ([], [])


def test_a_trial_whose_worker_died_is_failed_and_retried(mlflow_store, cli, tmp_path):
    """kill -9 a worker in the middle of a trial; the next run of the same command marks that trial FAIL (no
    heartbeat), closes its MLflow run as FAILED, and runs it again with the same parameters."""
    space = _write_space(tmp_path, epochs=6)
    args = _sweep_args(tmp_path, space, "hb", 1, "--heartbeat", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEOMLAB_NO_PROGRESS": "1"}
    worker = subprocess.Popen([sys.executable, "-c", "import sys; from shared.cli import main; main(sys.argv[1:])",
                               *args], cwd=tmp_path, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    c = MlflowClient()
    deadline = time.monotonic() + 90
    try:
        while True:
            assert worker.poll() is None, "the worker ended before it could be killed: " + worker.stdout.read()
            assert time.monotonic() < deadline, "the worker's trial run never appeared in MLflow"
            _, children = _runs("hb")
            if children and children[0].info.status == "RUNNING" and \
                    c.get_metric_history(children[0].info.run_id, "test_acc"):
                break  # the trial has finished one of its six epochs
            time.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    killed_run = children[0].info.run_id
    time.sleep(3)  # > the grace period (2 heartbeats)
    r = cli(*args)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "trial 0: its worker stopped sending heartbeats; marked FAIL and queued again" in r.stderr
    study = optuna.load_study(study_name="hb", storage=_storage(tmp_path))
    first, retry = study.trials
    assert first.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == first.params
    dead = c.get_run(killed_run)
    assert dead.info.status == "FAILED" and dead.data.tags["state"] == "FAIL"
    _, children = _runs("hb")
    assert sorted(r.data.tags["optuna_trial"] for r in children) == ["0", "1"]
    parents, _ = _runs("hb")
    assert parents[0].info.status == "FINISHED"


def test_an_empty_storage_option_falls_back_to_the_environment(mlflow_store, cli, tmp_path, monkeypatch):
    # the MLproject's sweep entry passes `--storage ''` when -P storage is not given: GEOMLAB_OPTUNA_STORAGE counts
    env_db = tmp_path / "from-env.db"
    monkeypatch.setenv("GEOMLAB_OPTUNA_STORAGE", f"sqlite:///{env_db}")
    args = _sweep_args(tmp_path, _write_space(tmp_path), "env", 1)
    args[args.index("--storage") + 1] = ""
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert optuna.get_all_study_names(f"sqlite:///{env_db}") == ["env"]
    assert not (tmp_path / "optuna.db").exists()
