"""CLI integration: variants, train, sweep (+ skip on re-run), plot, on digits, tiny widths."""
import json
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from projects.feature_amounts.sgdr import nominal_steps, sgdr_lr
from projects.feature_amounts.variants import generate_variants

torch.set_num_threads(1)
QUICK = ["--dataset", "digits", "--patch-size", "28", "--width-multiplier", "0.02", "--train-fraction", "0.25",
         "--split-cache", ""]


def runs(filter_string=""):
    c = MlflowClient()
    exps = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(exps, filter_string=filter_string, max_results=1000)


def test_variants_command(cli):
    r = cli("feature-amounts", "variants")
    assert r.exit_code == 0, r.output
    assert "193 networks" in r.stdout
    assert "v000_m0_s4.0_a8" in r.stdout and "823 961 852 708" in r.stdout
    r = cli("feature-amounts", "variants", "--vgg-depth", "19", "--format", "json")
    rows = json.loads(r.stdout)
    assert len(rows) == 139 and rows[0]["index"] == 0 and len(rows[0]["widths"]) == 18
    r = cli("feature-amounts", "variants", "--vgg-depth", "17")
    assert r.exit_code == 2 and "error: --vgg-depth" in r.stderr


def test_usage_errors(cli, mlflow_store):
    r = cli("feature-amounts", "train", *QUICK, "--weight-init", "orthogonal")  # the old name of --init
    assert r.exit_code == 2 and "unknown --init" in r.stderr
    r = cli("feature-amounts", "train", *QUICK, "--mean", "3")
    assert r.exit_code == 2 and "go together" in r.stderr
    r = cli("feature-amounts", "train", *QUICK, "--mean", "7", "--sn-scale", "0.5", "--skew", "0")
    assert r.exit_code == 2 and "--allow-invalid" in r.stderr
    r = cli("feature-amounts", "train", *QUICK, "--memory-limit", "lots")
    assert r.exit_code == 2 and "memory" in r.stderr
    r = cli("feature-amounts", "train", *QUICK, "--variant", "500")
    assert r.exit_code == 2 and "0..192" in r.stderr


def test_train_logs_original_columns_sgdr_and_split(cli, mlflow_store):
    r = cli("feature-amounts", "train", *QUICK, "--epochs", "3", "--lr-wr-epochs", "1", "--variant", "5",
            "--memory-limit", "20MB", "--no-abort-rule")
    assert r.exit_code == 0, r.output
    (run,) = runs("tags.`fa.role` = 'variant'")
    c = MlflowClient()
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert p["variant_id"] == "v005_m0_s4.0_a28" and p["Mean"] == "0.0" and p["Variance"] == "4.0"
    widths = generate_variants(16, 28, 0.02)[5].widths
    assert p["Skew"] == "28.0" and p["Filters"] == ",".join(map(str, widths))
    assert t["fa.complete"] == "1" and int(t["split.chunks"]) > 1  # 20 MB forces a split (about 48 MB unsplit)
    acc = [x.value for x in sorted(c.get_metric_history(run.info.run_id, "test_acc"), key=lambda x: x.step)]
    tr_acc = [x.value for x in sorted(c.get_metric_history(run.info.run_id, "train_acc"), key=lambda x: x.step)]
    assert len(acc) == 3
    best = max(range(3), key=lambda i: (acc[i], -i))
    # MLflow holds fractions under the names every project uses (the CSV row keeps the original's percent)
    assert m["best_val_acc"] == pytest.approx(acc[best]) and m["best_epoch"] == best + 1
    assert m["best_val_train_acc"] == pytest.approx(tr_acc[best])
    assert not {"BestVal", "LastValPrec", "LastTrainPrec"} & set(m)
    # SGDR per step: the lr of each epoch's last step equals the closed form (cycles 1, 2: restart after epoch 0)
    n_train = int(round(1437 * 0.25))
    steps, nb = math.ceil(n_train / 128), nominal_steps(n_train, 128)
    last = {x.step: x.value for x in c.get_metric_history(run.info.run_id, "lr_last_step")}
    for e in range(3):
        assert last[e + 1] == pytest.approx(sgdr_lr(e, steps, nb, 0.01, 1e-5, 1, 2), rel=1e-9)
    rec = json.loads(open(c.download_artifacts(run.info.run_id, "feature_amounts/result.json")).read())
    assert rec["BestVal"] == pytest.approx(100 * m["best_val_acc"]) and rec["BestEpoch"] == best and len(rec["AllVal"]) == 3 and rec["Chunks"] > 1
    assert "v005_m0_s4.0_a28" in r.stdout and "micro-batch" in r.stdout


def test_abort_rule(cli, mlflow_store):
    r = cli("feature-amounts", "train", *QUICK, "--epochs", "3", "--lr-wr-epochs", "1", "--learning-rate", "1e-7",
            "--lr-wr-min", "0")
    assert r.exit_code == 0, r.output
    (run,) = runs("tags.`fa.role` = 'variant'")
    assert run.data.tags["fa.stop_reason"].startswith("aborted: train top-1")
    rec = json.loads(open(MlflowClient().download_artifacts(run.info.run_id, "feature_amounts/result.json")).read())
    assert rec["EpochsDone"] == 1 and len(rec["AllTrain"]) == 1 and rec["AllTrain"][0] < 20.0


def test_sweep_skips_finished_and_plot(cli, mlflow_store, tmp_path):
    args = ["feature-amounts", "sweep", *QUICK, "--ids", "0,96", "--include-reference", "--epochs", "1"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    (parent,) = runs("tags.`fa.role` = 'sweep'")
    kids = runs(f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(k.data.tags["fa.variant_id"] for k in kids) == ["v000_m0_s4.0_a8", "v096_m7_s3.5_a0",
                                                                    "vgg16_reference"]
    csv_text = open(MlflowClient().download_artifacts(parent.info.run_id, "feature_amounts/sweep.csv")).read()
    lines = csv_text.strip().splitlines()
    assert lines[0].startswith("Filters,Parameters,Mean,Variance,Skew,BestVal,BestValsTrain,BestEpoch,LastValPrec,"
                               "LastTrainPrec,AllTrain,AllVal")
    assert len(lines) == 4
    r2 = cli(*args)
    assert r2.exit_code == 0, r2.output
    assert "0 trained, 3 already done" in r2.stdout
    assert len(runs("tags.`fa.role` = 'variant'")) == 3 and len(runs("tags.`fa.role` = 'sweep'")) == 1
    r3 = cli("feature-amounts", "plot", parent.info.run_id, "--out-dir", str(tmp_path / "figs"))
    assert r3.exit_code == 0, r3.output
    assert (tmp_path / "figs" / "accuracy_vs_mean_skew.png").stat().st_size > 1000
    assert (tmp_path / "figs" / "accuracy_vs_parameters.png").stat().st_size > 1000
    (plot_run,) = runs("tags.`fa.role` = 'plot'")
    assert plot_run.data.tags["source_run_id"] == parent.info.run_id
    r4 = cli("feature-amounts", "plot", "not-a-run")
    assert r4.exit_code == 2
