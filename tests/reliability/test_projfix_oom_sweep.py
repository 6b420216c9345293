"""feature_amounts: a variant that runs out of memory even in micro-batches of 2 does not end the sweep; it is
recorded as failed for memory, skipped by a re-run with the same memory setting and trained again when the setting
changes (here --memory-limit).

The out-of-memory error is real: in the sweep process (started as a subprocess), variant 0's forward pass asks the
CPU allocator for a petabyte in every training step after the split probe, whatever the micro-batch.
"""
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
V0, V96 = "v000_m0_s4.0_a8", "v096_m7_s3.5_a0"

# Run the CLI with variant 0 (its first conv has 17 filters at this width) running out of memory in training.
INJECT = """
import sys, torch
from projects.feature_amounts import models as M, splitting as S
armed = {"on": False}
choose, forward = S.AutoSplitter.choose, M.FeatureVGG.forward
def choose_then_arm(self, *a, **k):
    d = choose(self, *a, **k)
    armed["on"] = True
    return d
def forward_oom(self, x):
    if self.training and armed["on"] and self.widths[0] == 17:
        torch.empty(2**50, dtype=torch.uint8)  # DefaultCPUAllocator: can't allocate memory
    return forward(self, x)
S.AutoSplitter.choose, M.FeatureVGG.forward = choose_then_arm, forward_oom
import shared.cli as cli
sys.argv = ["geomlab", *sys.argv[1:]]
cli.main()
"""

ARGS = ["feature-amounts", "sweep", "--dataset", "digits", "--patch-size", "28", "--width-multiplier", "0.02",
        "--train-fraction", "0.1", "--batch-size", "16", "--split-cache", "", "--ids", "0,96", "--epochs", "1",
        "--lr-wr-epochs", "1", "--no-abort-rule", "--device", "cpu"]


def variant_runs(client):
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, "tags.`fa.role` = 'variant'", max_results=100)


def test_oom_down_to_two_samples_fails_the_variant_not_the_sweep_and_a_new_limit_retries_it(mlflow_store, tmp_path,
                                                                                             cli):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "OMP_NUM_THREADS": "1", "GEOMLAB_NO_PROGRESS": "1",
           "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-c", INJECT, *ARGS, "--out-dir", str(out)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text[-3000:]
    assert "Traceback" not in text
    assert "1 trained, 0 already done, 0 resumed, 1 failed" in res.stdout
    (line,) = [ln for ln in res.stderr.splitlines() if ln.startswith(f"[1/2] {V0}: failed")]  # progress: stderr
    assert "even with micro-batches of 2" in line and "--memory-limit" in line
    client = MlflowClient(mlflow_store)
    runs = {r.data.tags["fa.variant_id"]: r for r in variant_runs(client)}
    assert len(runs) == 2
    failed = runs[V0].data.tags
    assert failed["fa.complete"] == "1" and "out of memory" in failed["fa.failed"]
    assert failed["fa.memory_failure"] == "limit=0|device=cpu|micro_batches=0"
    assert runs[V96].data.tags["fa.complete"] == "1" and "fa.failed" not in runs[V96].data.tags
    assert sorted(m.step for m in client.get_metric_history(runs[V96].info.run_id, "train_loss")) == [1]

    # the same memory setting: nothing to retry, nothing trained twice
    again = cli(*ARGS, "--out-dir", str(out))
    assert again.exit_code == 0, again.output
    assert "0 trained, 2 already done, 0 resumed, 1 failed" in again.stdout
    assert len(variant_runs(client)) == 2

    # a larger limit (without the injected failure): variant 0 is trained again, in a new run; variant 96 is kept
    more = cli(*ARGS, "--out-dir", str(out), "--memory-limit", "8GB")
    assert more.exit_code == 0, more.output
    assert f"{V0}: ran out of memory before (limit=0|device=cpu|micro_batches=0); trying again" in more.stderr
    assert "1 trained, 1 already done, 0 resumed, 0 failed" in more.stdout
    after = variant_runs(client)
    assert len(after) == 3
    (new,) = [r for r in after if r.info.run_id not in {x.info.run_id for x in runs.values()}]
    assert new.data.tags["fa.variant_id"] == V0 and new.data.tags["fa.complete"] == "1"
    assert "fa.failed" not in new.data.tags and new.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(new.info.run_id, "train_loss")) == [1]
