"""The shared training loop: exact resume, gradient accumulation, NaN handling, plateau rules, MLflow logging."""
from __future__ import annotations

import copy

import mlflow
import pytest
import torch
from torch import nn

from shared.data import DataConfig, load_data
from shared.errors import UsageError
from shared.experiment import load_model_from, model_for, run_training
from shared.files import load_snapshot
from shared.train import Callback, KillPlateaus, TrainConfig, Trainer, evaluate, seed_everything


def _data(**kw):
    return load_data(DataConfig(dataset="digits", batch_size=64, augmentation=True, train_fraction=0.5, **kw), seed=3)


class _Interrupt(Callback):
    def __init__(self, at_epoch: int, at_batch: int):
        self.at = (at_epoch, at_batch)

    def on_step_end(self, tr, loss, output, y):
        if (tr.epoch, tr.batch_in_epoch) == self.at:
            raise KeyboardInterrupt


def test_resume_after_interruption_is_bit_identical(tmp_path):
    # dropout + momentum + step LR + augmentation + reshuffling: every piece of state matters
    cfg = TrainConfig(epochs=4, lr=0.05, lr_step=2, lr_decay=0.5, snapshot_every=1, seed=3)

    def fresh():
        seed_everything(3)
        d = _data()
        return model_for("lenet_small", d, width=4), d

    m, d = fresh()
    full = Trainer(m, d, cfg, out_dir=tmp_path / "full", progress=False)
    full.fit()

    m, d = fresh()
    with pytest.raises(KeyboardInterrupt):  # killed in the middle of epoch 3
        Trainer(m, d, cfg, out_dir=tmp_path / "cut", callbacks=[_Interrupt(2, 5)], progress=False).fit()
    assert (tmp_path / "cut/snapshots/epoch_002.pt").exists() and not (tmp_path / "cut/snapshots/epoch_003.pt").exists()

    m2, d2 = fresh()
    torch.manual_seed(12345)  # the resumed process starts with different RNG state; resume must restore it
    resumed = Trainer(m2, d2, cfg, out_dir=tmp_path / "cut", progress=False)
    res = resumed.fit(resume_from=str(tmp_path / "cut/snapshots/epoch_002.pt"))
    assert res.epochs_done == 4
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


def test_micro_batches_accumulate_to_the_full_batch_gradient():
    d = load_data(DataConfig(dataset="digits", batch_size=64, shuffle=False))
    seed_everything(0)
    base = model_for("mlp", d, hidden=32)
    runs = []
    for k in (1, 4):
        m = copy.deepcopy(base)
        t = Trainer(m, d, TrainConfig(epochs=1, lr=0.1, momentum=0.0, weight_decay=0.0, micro_batches=k,
                                      snapshot_init=False), progress=False)
        x, y = next(iter(d.train))
        t._train_step(x, y)
        runs.append(m.state_dict())
    assert all(torch.allclose(runs[0][k], runs[1][k], atol=1e-6) for k in runs[0])


def test_nan_loss_is_a_usage_error_and_keeps_snapshots(tmp_path):
    d = _data()
    seed_everything(0)
    m = model_for("mlp", d, hidden=16)
    t = Trainer(m, d, TrainConfig(epochs=50, lr=1e8, momentum=0.0, snapshot_every=1), out_dir=tmp_path, progress=False)
    with pytest.raises(UsageError, match="lower --lr"):
        t.fit()
    snap = load_snapshot(tmp_path / "snapshots/epoch_000.pt")  # the initialization survives intact
    assert snap["epoch"] == 0


def test_kill_plateaus_acc_equal_stops():
    d = _data()
    seed_everything(0)
    m = model_for("mlp", d, hidden=8)
    t = Trainer(m, d, TrainConfig(epochs=10, lr=1e-12), callbacks=[KillPlateaus("acc-equal")], progress=False)
    res = t.fit()
    assert not res.converged and res.epochs_done == 2 and "plateau" in res.stop_reason


def test_kill_plateaus_loss_ratio_rule():
    d = load_data(DataConfig(dataset="digits", batch_size=8), seed=0)  # 180 batches per epoch
    seed_everything(0)
    m = model_for("mlp", d, hidden=8)
    t = Trainer(m, d, TrainConfig(epochs=5, lr=1e-9, momentum=0.0),
                callbacks=[KillPlateaus("loss-ratio", at_epoch=3, at_batch=100)], progress=False)
    res = t.fit()
    assert not res.converged and res.epochs_done == 3


def test_evaluate_top5_with_fewer_classes():
    d = load_data(DataConfig(dataset="digits", subsample_classes=3))
    m = model_for("mlp", d, hidden=8)
    r = evaluate(m, d.test)
    assert r["top5"] == 1.0 and 0 <= r["acc"] <= 1


def test_run_is_tracked_and_snapshots_load_from_mlflow(mlflow_store):
    out = run_training(project="shared", entry_point="train", arch="lenet_small", model_options={"width": 4},
                       data_cfg=DataConfig(dataset="digits", batch_size=128),
                       train_cfg=TrainConfig(epochs=2, lr=0.05, snapshot_every=1), progress=False)
    run = mlflow.get_run(out.run_id)
    assert run.data.params["arch"] == "lenet_small" and run.data.params["train.epochs"] == "2"
    assert run.data.params["data.dataset"] == "digits"
    assert run.data.tags["project"] == "shared" and run.data.tags["entry_point"] == "train"
    assert len(run.data.tags["git_commit"]) >= 7
    hist = mlflow.tracking.MlflowClient().get_metric_history(out.run_id, "test_acc")
    assert [m.step for m in hist] == [1, 2]
    arts = [a.path for a in mlflow.tracking.MlflowClient().list_artifacts(out.run_id, "snapshots")]
    assert arts == ["snapshots/epoch_000.pt", "snapshots/epoch_001.pt", "snapshots/epoch_002.pt"]
    model, snap, src = load_model_from(f"runs:/{out.run_id}/snapshots/epoch_002.pt")
    assert src == out.run_id and snap["epoch"] == 2
    a = out.trainer.model.state_dict()
    assert all(torch.equal(a[k].cpu(), model.state_dict()[k]) for k in a)
