"""Sweep workers as real processes: SIGTERM in the middle of a trial, kill -9 and a rerun right after it, and
read-only stores. Nothing is lost or counted twice, the budget is finished, errors are one line."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import copy_store
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
SPACE = ("params:\n  lr: {type: float, low: 1.0e-2, high: 2.0e-1, log: true}\n"
         "fixed: {arch: mlp, width: 16, dataset: digits, epochs: EPOCHS}\n")


def _space(tmp_path: Path, epochs: int) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE.replace("EPOCHS", str(epochs)))
    return p


def _cmd(tmp_path: Path, space: Path, n: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", "sweep", "shared", "train", "--space", str(space), "--n-trials",
            str(n), "--study", "s", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--metric", "test_acc",
            "--seed", "1", *extra]


def _env(tmp_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GEOMLAB_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    return env


def _start(tmp_path, cmd) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"worker-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(tmp_path), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, log


def _wait_for_trial_run(tmp_path, log: Path, proc, number: int, timeout: float = 300) -> None:
    """Until trial ``number`` has its MLflow run (the middle of the trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        if f"trial {number}: lr=" in log.read_text() and (tmp_path / "mlflow.db").exists():
            c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
            runs = c.search_runs([e.experiment_id for e in c.search_experiments()],
                                 filter_string=f"tags.optuna_trial = '{number}'")
            if runs:
                return
        time.sleep(0.3)
    raise AssertionError("trial did not start: " + log.read_text())


def _runs(tmp_path):
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], filter_string="tags.optuna_study = 's'")
    return ([r for r in runs if r.data.tags.get("entry_point") == "sweep"],
            [r for r in runs if r.data.tags.get("entry_point") != "sweep"])


def _study(tmp_path):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def test_sigterm_marks_runs_killed_and_requeues_the_trial_at_once(tmp_path):
    space = _space(tmp_path, epochs=15)  # long enough to be in the middle of trial 0
    proc, log = _start(tmp_path, _cmd(tmp_path, space, 2))
    _wait_for_trial_run(tmp_path, log, proc, 0)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()
    out = log.read_text()
    assert "Traceback" not in out, out
    study = _study(tmp_path)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "FAIL", 1: "WAITING"}, states  # the retry is queued by the worker itself
    assert study.trials[1].params == study.trials[0].params
    assert "SIGTERM" in study.trials[0].user_attrs["error"]
    (parent,), children = _runs(tmp_path)
    assert [r.info.status for r in children] == ["KILLED"] and children[0].data.tags["state"] == "FAIL"
    assert parent.info.status == "KILLED"
    # a rerun takes the queued trial first (no wait for a heartbeat) and finishes the budget; nothing runs twice
    r = subprocess.run(_cmd(tmp_path, space, 2), cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2/2 trials done (2 complete, 0 pruned, 1 failed)" in r.stdout and "waiting" not in r.stderr
    study = _study(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    (parent,), children = _runs(tmp_path)
    assert parent.info.status == "FINISHED"
    assert sorted(int(r.data.tags["optuna_trial"]) for r in children) == [0, 1, 2]


def test_rerun_after_kill9_waits_for_the_stale_trial_and_finishes_the_budget(tmp_path):
    space = _space(tmp_path, epochs=40)  # trial 1 must still run when the kill lands (an mlp epoch: ~50 ms)
    proc, log = _start(tmp_path, _cmd(tmp_path, space, 2, "--heartbeat", "2"))
    _wait_for_trial_run(tmp_path, log, proc, 1)  # trial 0 done, trial 1 in the middle
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    r = subprocess.run(_cmd(tmp_path, space, 2, "--heartbeat", "2"), cwd=tmp_path, env=_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2/2 trials done (2 complete, 0 pruned, 1 failed)" in r.stdout, r.stdout
    study = _study(tmp_path)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert [t.number for t in done] == [0, 2] and done[1].params == study.trials[1].params  # the retry
    (parent,), children = _runs(tmp_path)
    assert parent.info.status == "FINISHED"
    by_trial = {}
    for run in children:
        by_trial.setdefault(int(run.data.tags["optuna_trial"]), []).append(run)
    assert sorted(by_trial) == [0, 1, 2] and all(len(v) == 1 for v in by_trial.values())  # none counted twice
    assert by_trial[1][0].info.status == "FAILED"


@contextlib.contextmanager
def read_only(path: Path):
    """``path`` read-only for this process tree: a read-only bind mount as root (root ignores modes), else chmod."""
    if os.geteuid() == 0:
        if not shutil.which("mount") or subprocess.run(["mount", "--bind", str(path), str(path)],
                                                       capture_output=True).returncode != 0:
            pytest.skip("root without permission to bind-mount: cannot make a folder read-only")
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True, capture_output=True)
            yield
        finally:
            subprocess.run(["umount", str(path)], capture_output=True)
    else:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)


@pytest.mark.parametrize("which", ["tracking", "optuna"])
def test_read_only_store_is_a_one_line_error(tmp_path, which, _template_store):
    store = tmp_path / "store"
    store.mkdir()
    space = _space(tmp_path, epochs=1)
    env = _env(tmp_path)
    if which == "tracking":  # an existing, migrated store in a folder that turned read-only
        copy_store(_template_store, store / "mlflow.db")
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    else:
        storage = f"sqlite:///{store / 'optuna.db'}"
    cmd = [*_cmd(tmp_path, space, 1)]
    cmd[cmd.index("--storage") + 1] = storage
    with read_only(store):
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stdout + r.stderr
    assert str(store) in lines[0] and ("read-only" in lines[0].lower() or "readonly" in lines[0].lower()
                                       or "not writable" in lines[0]), lines[0]
    if which == "optuna":
        assert not (store / "optuna.db").exists()
