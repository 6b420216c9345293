"""A study killed (SIGKILL) in the middle of a training child, then re-run with the same command: finished children
are reused, the interrupted one resumes from its newest snapshot, and no epoch is trained twice."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import step_counter

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3
# one seed, 3 epochs, the re-initialization on 100 test images: the cheapest study that still has a finished
# child before the killed one and one after it
ARGS = ["hyperplane-bias", "study", "--scale", "smoke", "--seeds", "0", "--epochs", str(EPOCHS), "--max-test", "100"]
BATCHES = math.ceil(1437 / 64)  # digits training split, smoke batch size


def _child_runs(client, exps, prefix):
    return [r for r in client.search_runs(exps, filter_string="tags.study_child LIKE '" + prefix + "%'")]


@pytest.mark.timeout(1800)  # a loaded machine: start-up alone takes minutes (about 40 s when idle)
def test_killed_study_resumes_without_training_twice(mlflow_store, cli, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    import shared.train

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", *ARGS], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = MlflowClient()
    deadline = time.time() + 900  # generous: start-up alone takes minutes on a loaded machine
    killed_in = None
    try:
        while time.time() < deadline and proc.poll() is None:
            exps = [e.experiment_id for e in client.search_experiments()]
            for r in _child_runs(client, exps, "train-random-seed0"):
                done = [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")]
                if r.info.status == "RUNNING" and len(done) >= 1:
                    killed_in = r.info.run_id
                    break
            if killed_in:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None and not killed_in:
            proc.kill()
        proc.wait()
    assert killed_in, "the study never reached the second training child: " + proc.stderr.read().decode()[-2000:]
    exps = [e.experiment_id for e in client.search_experiments()]
    (clean_before,) = _child_runs(client, exps, "train-clean-seed0")
    assert clean_before.info.status == "FINISHED"
    assert client.get_run(killed_in).info.status == "RUNNING"  # what kill -9 leaves behind

    counter = step_counter()
    shared.train.GLOBAL_CALLBACKS.append(counter)
    try:
        res = cli(*ARGS)
    finally:
        shared.train.GLOBAL_CALLBACKS.remove(counter)
    assert res.exit_code == 0, res.stderr
    (parent,) = client.search_runs(exps, filter_string="tags.entry_point = 'study'")
    doc = json.loads(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/report/study.json"))
    kids = {c["name"]: c for c in doc["children"]}
    assert kids["train-clean-seed0"]["reused"] and kids["train-clean-seed0"]["run_id"] == clean_before.info.run_id
    assert kids["projections-clean-seed0"]["reused"]
    control = kids["train-random-seed0"]
    assert not control["reused"] and control["resumed_from"].startswith(f"runs:/{killed_in}/snapshots/epoch_")
    k = int(control["resumed_from"].rsplit("epoch_", 1)[1][:3])
    assert k >= 1
    # exactly the missing epochs were trained: the rest of the interrupted child (the random-labels control), then
    # the pixel-shuffle control
    assert counter.steps == BATCHES * ((EPOCHS - k) + EPOCHS)
    # the same command from the interrupted run's newest snapshot continues that run (shared.resume): it is the
    # child, now FINISHED, with every epoch logged once and every snapshot
    assert control["run_id"] == killed_in and client.get_run(killed_in).info.status == "FINISHED"
    epochs = [m.step for m in client.get_metric_history(killed_in, "train_loss")]
    assert sorted(epochs) == list(range(1, EPOCHS + 1))
    snaps = sorted(Path(a.path).name for a in client.list_artifacts(killed_in, "snapshots"))
    assert snaps == [f"epoch_{e:03d}.pt" for e in range(EPOCHS + 1)]
