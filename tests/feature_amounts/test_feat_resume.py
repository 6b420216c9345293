"""A sweep killed with SIGKILL in the middle of a variant continues when the same command is run again."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
from helpers import copy_store
from mlflow.tracking import MlflowClient

from projects.feature_amounts.results import from_csv

ROOT = Path(__file__).resolve().parents[2]
V2 = "v096_m7_s3.5_a0"


def sweep_cmd(out_dir):
    return [sys.executable, "-m", "shared.cli", "feature-amounts", "sweep", "--dataset", "digits", "--patch-size", "28",
            "--width-multiplier", "0.02", "--train-fraction", "0.25", "--split-cache", "", "--ids", "0,96",
            "--epochs", "4", "--lr-wr-epochs", "2", "--no-abort-rule", "--device", "cpu", "--out-dir", str(out_dir)]


def env_for(uri):
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", "GEOMLAB_NO_PROGRESS": "1",
            "PYTHONPATH": str(ROOT)}


def variant_runs(client):
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, "tags.`fa.role` = 'variant'", max_results=100)


def test_sweep_resumes_after_kill_9(mlflow_store, tmp_path, _template_store, cli, monkeypatch):
    out = tmp_path / "out"
    env = env_for(mlflow_store)
    proc = subprocess.Popen(sweep_cmd(out), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    target = out / V2 / "snapshots" / "epoch_001.pt"
    deadline = time.time() + 240
    while not target.exists():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the sweep did not reach the second variant in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    client = MlflowClient(mlflow_store)
    before = {r.data.tags["fa.variant_id"]: r for r in variant_runs(client)}
    assert before["v000_m0_s4.0_a8"].data.tags.get("fa.complete") == "1"
    assert before[V2].data.tags.get("fa.complete") is None and before[V2].info.status == "RUNNING"

    res = subprocess.run(sweep_cmd(out), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "1 trained, 1 already done, 1 resumed, 0 failed" in res.stdout
    after = {r.data.tags["fa.variant_id"]: r for r in variant_runs(client)}
    assert len(after) == 2 and after[V2].info.run_id == before[V2].info.run_id  # continued in the same run
    assert after[V2].info.status == "FINISHED" and after[V2].data.tags["fa.complete"] == "1"
    for r in after.values():  # every epoch logged exactly once: nothing counted twice, nothing missing
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "train_loss"))
        assert steps == [1, 2, 3, 4]
        assert len(client.get_metric_history(r.info.run_id, "best_val_acc")) == 1
    exps = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(exps, "tags.`fa.role` = 'sweep'")
    assert parent.info.status == "FINISHED"
    rows = from_csv(Path(client.download_artifacts(parent.info.run_id, "feature_amounts/sweep.csv")).read_text())
    assert [r["VariantId"] for r in rows] == ["v000_m0_s4.0_a8", V2]
    snaps = sorted(p.name for p in (out / V2 / "snapshots").iterdir())
    assert snaps == ["epoch_004.pt"]  # --keep-snapshots last

    # the interrupted-and-resumed sweep trains exactly what an uninterrupted one trains (CPU, same seeds)
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    copy_store(_template_store, ref_dir / "mlflow.db")
    ref_uri = f"sqlite:///{ref_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ref_uri)
    mlflow.set_tracking_uri(ref_uri)
    ref = cli(*sweep_cmd(ref_dir / "out")[3:])  # in-process: the same command through typer
    assert ref.exit_code == 0, ref.output
    ref_rows = from_csv((ref_dir / "out" / "sweep.csv").read_text())
    for a, b in zip(rows, ref_rows):
        assert a["AllTrain"] == b["AllTrain"] and a["AllVal"] == b["AllVal"], a["VariantId"]
