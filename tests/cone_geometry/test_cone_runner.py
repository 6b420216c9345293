"""Configuration helpers and snapshot discovery of projects/cone_geometry/runner.py (no training)."""
from __future__ import annotations

import pytest

from projects.cone_geometry import runner
from shared.errors import UsageError


def test_original_data_pipeline():
    c = runner.make_data_config("cifar10")
    assert c.augmentation and c.mean == pytest.approx((125.3 / 255, 123.0 / 255, 113.9 / 255))
    assert c.std == pytest.approx((63.0 / 255, 62.1 / 255, 66.7 / 255)) and c.batch_size == 100
    m = runner.make_data_config("mnist", noisy=0.2)
    assert not m.augmentation and m.mean == (0.5,) and m.std == (1.0,) and m.noise == 0.2 and m.noise_seed == 12345
    d = runner.make_data_config("digits", augmentation=True)
    assert d.augmentation and d.mean is None
    with pytest.raises(UsageError, match="fraction"):
        runner.make_data_config("mnist", noisy=20)


def test_optimizers_as_the_original():
    sgd = runner.make_train_config(optimizer="sgd", lr_step=20)
    assert (sgd.schedule, sgd.lr_step, sgd.weight_decay, sgd.momentum) == ("step", 20, 5e-4, 0.9)
    adam = runner.make_train_config(optimizer="adam", lr=1e-3)
    assert (adam.schedule, adam.weight_decay, adam.lr) == ("none", 0.0, 1e-3)
    with pytest.raises(UsageError, match="--optimizer"):
        runner.make_train_config(optimizer="adamw")


def test_teacher_snapshots_of_a_folder(tmp_path):
    for name in ("epoch_000.pt", "epoch_010.pt", "epoch_002.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = runner.teacher_snapshots(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in found] == ["epoch_000.pt", "epoch_002.pt", "epoch_010.pt"]
    assert [p.rsplit("/", 1)[1] for p in runner.teacher_snapshots(str(tmp_path), [10, 2])] == \
        ["epoch_002.pt", "epoch_010.pt"]
    with pytest.raises(UsageError, match="no teacher snapshots"):
        runner.teacher_snapshots(str(tmp_path), [7])


def test_epochs_of_original_file_names():
    # <arch>_<e>_<init>.tar is written after epoch e (0-based): e + 1 epochs done; .pt files are named by epochs done
    assert runner._epoch_of_name("LeNet9_9_x_gaussian.tar") == 10
    assert runner._epoch_of_name("LeNet9_75_x_gaussian.pt") == 75
    assert runner._epoch_of_name("epoch_030.pt") == 30
    assert runner._epoch_of_name("weights.pt") is None
