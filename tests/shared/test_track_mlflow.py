"""MLflow-native tracking (issue 12): experiments, run names, datasets as inputs, models, metric names, run status."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

TRAIN = ("train", "--arch", "lenet_small", "--dataset", "digits", "--epochs", "1", "--width", "4")


def _runs(**kw):
    return mlflow.search_runs(search_all_experiments=True, output_format="list", **kw)


def _exp_name(run) -> str:
    return MlflowClient().get_experiment(run.info.experiment_id).name


def test_root_train_run_is_named_typed_and_complete(mlflow_store, cli, tmp_path):
    r = cli(*TRAIN, "--out-dir", tmp_path / "out")
    assert r.exit_code == 0, r.output
    (run,) = _runs()
    # experiment of the root commands; a name that says what ran
    assert _exp_name(run) == "geomlab"
    assert re.fullmatch(r"train-lenet_small-digits-s0-[0-9a-f]{6}", run.info.run_name), run.info.run_name
    # no final_* duplicates; fractions under the shared names
    m = run.data.metrics
    assert {"train_loss", "test_acc", "train_acc"} <= set(m) and not [k for k in m if k.startswith("final_")]
    assert 0 <= m["test_acc"] <= 1
    # datasets: one input per split, digest of the actual arrays, options as input tags
    from shared.data import DataConfig, load_data
    from shared.tracking import _split_digest

    data = load_data(DataConfig(dataset="digits", batch_size=128))
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "test"}
    assert inputs["training"].dataset.name == "digits"
    assert inputs["training"].dataset.digest == _split_digest(data.train)
    assert inputs["test"].dataset.digest == _split_digest(data.test)
    tags = {t.key: t.value for t in inputs["training"].tags}
    assert tags["split_size"] == "1437" and tags["data.noise"] == "0.0" and tags["data.split_seed"] == "0"
    # the final network as an MLflow model that loads and predicts like the final snapshot
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    assert run.outputs.model_outputs, "the run has no logged model (Models column)"
    from shared.experiment import load_model_from

    final, _, _ = load_model_from(str(tmp_path / "out" / "snapshots" / "epoch_001.pt"))
    x, _ = next(iter(data.test))
    with torch.no_grad():
        assert torch.allclose(model(x[:8]), final.eval()(x[:8]), atol=1e-6)
    # snapshots are stored once: the artifact is the out-dir file itself (one inode), not a second copy
    from shared.tracking import _local_artifact_dir

    art = _local_artifact_dir(run.info.artifact_uri) / "snapshots" / "epoch_001.pt"
    assert os.path.samefile(art, tmp_path / "out" / "snapshots" / "epoch_001.pt")


def test_default_names_differ_unless_the_configuration_is_the_same(mlflow_store, cli):
    # the old bug: the RNG was seeded before MLflow drew its random name, so every seed-0 run had the same name
    for extra in ((), (), ("--lr", "0.1"), ("--seed", "1"), ("--noise", "0.2")):
        assert cli(*TRAIN, *extra).exit_code == 0
    names = [r.info.run_name for r in sorted(_runs(), key=lambda r: r.info.start_time)]
    assert names[0] == names[1]  # the same configuration
    assert len(set(names[1:])) == 4
    assert "-s1-" in names[3]
    noisy = sorted(_runs(), key=lambda r: r.info.start_time)[-1]
    tr = next(d for d in noisy.inputs.dataset_inputs if any(t.value == "training" for t in d.tags))
    first = sorted(_runs(), key=lambda r: r.info.start_time)[0]
    tr0 = next(d for d in first.inputs.dataset_inputs if any(t.value == "training" for t in d.tags))
    assert tr.dataset.digest != tr0.dataset.digest  # noise changes the training labels, hence the digest
    assert {t.key: t.value for t in tr.tags}["data.noise"] == "0.2"


def test_explicit_run_name_and_experiment_variables(mlflow_store, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mine")
    assert cli(*TRAIN, "--run-name", "baseline").exit_code == 0
    (run,) = _runs()
    assert _exp_name(run) == "mine" and run.info.run_name == "baseline"
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    eid = MlflowClient().create_experiment("by-id")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", eid)
    assert cli(*TRAIN).exit_code == 0
    assert len(_runs(experiment_ids=[eid])) == 1


def test_project_commands_log_to_their_project_experiment(mlflow_store, cli):
    r = cli("hyperplane-bias", "train", "--arch", "lenet", "--dataset", "digits", "--epochs", "1")
    if r.exit_code != 0 and "unknown architecture" in r.output:
        pytest.skip(r.output)
    assert r.exit_code == 0, r.output
    (run,) = _runs()
    assert _exp_name(run) == "hyperplane_bias" and run.info.run_name.startswith("train-lenet-digits-s0-")


def test_run_handed_over_by_mlflow_run_gets_the_default_name(mlflow_store, cli, monkeypatch):
    # what `mlflow run` does: create the run (random name, experiment in MLFLOW_EXPERIMENT_ID), export its id
    client = MlflowClient()
    eid = client.create_experiment("cone_geometry")
    created = client.create_run(eid)
    from shared.tracking import _generated_name

    assert _generated_name(created.info.run_name)
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", eid)
    assert cli(*TRAIN).exit_code == 0
    run = client.get_run(created.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("train-lenet_small-digits-s0-")
    assert "MLFLOW_RUN_ID" not in os.environ and "MLFLOW_EXPERIMENT_ID" not in os.environ  # consumed


@pytest.mark.parametrize("bad, message", [(("--epochs", "0"), "--epochs must be >= 1"),
                                          (("--optimizer", "adamm"), "unknown optimizer 'adamm'"),
                                          (("--device", "tpu"), "unknown device")])
def test_bad_options_leave_no_run(mlflow_store, cli, bad, message):
    r = cli(*[a for a in TRAIN if a not in ("--epochs", "1")], *bad)
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
    assert _runs() == []


def test_system_metrics_use_mlflows_sampler(mlflow_store, cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    r = cli(*[a for a in TRAIN if a not in ("--epochs", "1")], "--epochs", "3", "--system-metrics")
    assert r.exit_code == 0, r.output
    (run,) = _runs()
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert cli(*TRAIN).exit_code == 0  # off by default
    plain = [r for r in _runs() if r.info.run_id != run.info.run_id][0]
    assert not [k for k in plain.data.metrics if k.startswith("system/")]


def test_flush_keeps_the_buffer_when_the_write_fails(mlflow_store, monkeypatch):
    from shared.errors import UsageError
    from shared.tracking import Tracker

    t = Tracker()
    with t.start("shared", "unit", params={"x": 1}):
        t.log_metrics({"a": 1.0}, step=1)
        real = MlflowClient.log_batch
        monkeypatch.setattr(MlflowClient, "log_batch", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space")))
        with pytest.raises(UsageError):
            t.flush()
        assert len(t._buffer) == 1  # nothing dropped
        monkeypatch.setattr(MlflowClient, "log_batch", real)
    assert [m.value for m in MlflowClient().get_metric_history(t.run_id, "a")] == [1.0]


def test_default_run_name_parts():
    from shared.tracking import default_run_name

    a = default_run_name("nesting", {"source": "runs:/abc/snapshots/epoch_010.pt"}, {"arch": "Student_VGG9",
                                                                                     "dataset": "cifar10"})
    assert re.fullmatch(r"nesting-Student_VGG9-cifar10-e010-[0-9a-f]{6}", a), a
    b = default_run_name("train", {"train.seed": 3, "variant": "v005"}, {"arch": "feature_vgg", "dataset": "digits"})
    assert b.startswith("train-feature_vgg-digits-v005-s3-")
    assert default_run_name("train", {"train.seed": 3}, {}) != default_run_name("train", {"train.seed": 3, "lr": 1}, {})
    digest = hashlib.sha1(b"x").hexdigest()  # the suffix is a hash: 6 hex digits
    assert len(a.rsplit("-", 1)[1]) == 6 and digest

