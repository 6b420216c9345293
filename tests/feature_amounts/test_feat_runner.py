"""Pure pieces of config / callbacks / training: data options as the original, keys, targets, the single-sample BN fallback."""
import math

import pytest
import torch

from projects.feature_amounts import callbacks as Cb
from projects.feature_amounts import config as Rn
from projects.feature_amounts import training as Tr
from projects.feature_amounts.models import feature_vgg
from shared.errors import UsageError


def test_data_config_follows_the_original():
    c = Rn.make_data_config("cifar10")
    assert c.augmentation and c.crop_padding == 4 and c.resize == 32 and c.normalize == "none" and c.batch_size == 128
    m = Rn.make_data_config("mnist", normalize="gcn", channels=3)
    assert not m.augmentation and m.normalize == "gcn" and m.channels == 3 and m.resize == 32
    assert Rn.make_data_config("imagenet", patch_size=224).crop_padding == math.ceil(22.4)
    assert Rn.make_data_config("mnist", augmentation=True).augmentation


def test_train_config_and_options():
    t = Rn.make_train_config()
    assert (t.epochs, t.lr, t.momentum, t.weight_decay, t.nesterov, t.schedule) == (150, 0.01, 0.9, 5e-4, False, "none")
    with pytest.raises(UsageError, match="keep-snapshots"):
        Rn.FAOptions(keep_snapshots="some").validate()
    with pytest.raises(UsageError, match="vgg-depth"):
        Rn.FAOptions(vgg_depth=15).validate()


def test_train_key_ignores_execution_details_only():
    d, t, o = Rn.make_data_config("digits"), Rn.make_train_config(), Rn.FAOptions()
    k = Rn.train_key(d, t, o)
    assert Rn.train_key(Rn.make_data_config("digits", data_path="/elsewhere"), Rn.make_train_config(device="cpu"),
                        Rn.FAOptions(memory_limit="1GB", micro_batches=4, keep_snapshots="all")) == k
    assert Rn.train_key(d, Rn.make_train_config(epochs=149), o) != k
    assert Rn.train_key(d, t, Rn.FAOptions(width_multiplier=0.5)) != k
    assert Rn.train_key(Rn.make_data_config("digits", normalize="gcn"), t, o) != k


def test_targets():
    o = Rn.FAOptions(width_multiplier=0.1)
    ref = Rn.reference_target(o)
    assert ref.vid == "vgg16_reference" and ref.widths[:4] == (7, 7, 13, 13) and ref.mean is None
    assert Rn.reference_target(Rn.FAOptions()).widths[-1] == 512
    w = Rn.parse_widths("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15", o)
    assert w.widths == tuple(range(1, 16)) and w.vid.startswith("custom_")
    with pytest.raises(UsageError, match="15 entries"):
        Rn.parse_widths("1,2,3", o)
    v = Rn.variant_list(o)
    assert len(v) == 193 and Rn.Target.of(v[0]).vid == "v000_m0_s4.0_a8"


def test_single_sample_chunk_uses_running_bn_statistics():
    torch.manual_seed(0)
    m = feature_vgg(3, 1, 8, [6] * 15, dropout=0.0).train()
    x, y = torch.randn(1, 1, 8, 8), torch.tensor([1])
    with pytest.raises(ValueError):
        m(x)  # PyTorch refuses BatchNorm1d training on one sample
    loss, out = Cb.trainer_loss(m, x, y)
    loss.backward()
    assert m.training and all(b.training for b in m.modules() if isinstance(b, torch.nn.BatchNorm1d))
    expected = m.eval()(x)
    assert torch.allclose(out, expected) and out.abs().sum() > 0


def test_out_of_memory_during_training_halves_split_and_continues(mlflow_store, monkeypatch):
    """A real allocator failure in the middle of training: the split is halved and the run continues from its
    newest snapshot, in the same MLflow run, without logging any epoch twice."""
    from mlflow.tracking import MlflowClient

    from projects.feature_amounts import models as M
    from shared.data import load_data

    torch.set_num_threads(1)
    calls = {"n": 0}
    original = M.FeatureVGG.forward

    def forward(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] > 5 and x.shape[0] > 32:  # armed in the second epoch (probe: 1, epoch 1: 3 batches)
                torch.empty(2**50, dtype=torch.uint8)
        return original(self, x)

    monkeypatch.setattr(M.FeatureVGG, "forward", forward)
    opts = Rn.FAOptions(patch_size=16, width_multiplier=0.05, split_cache=None, abort_rule=False)
    dcfg = Rn.make_data_config("digits", patch_size=16, train_fraction=0.25)
    tcfg = Rn.make_train_config(epochs=3)
    data = load_data(dcfg)
    res = Tr.train_target(Rn.Target.of(Rn.variant_list(opts)[0]), data, dcfg, tcfg, opts, progress=False)
    rec = res.record
    assert rec["EpochsDone"] == 3 and rec["MicroBatch"] == 32 and rec["Chunks"] == 4 and len(rec["AllVal"]) == 3
    c = MlflowClient()
    run = c.get_run(res.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["split.source"] == "cache"
    assert sorted(m.step for m in c.get_metric_history(res.run_id, "train_loss")) == [1, 2, 3]
    exps = [e.experiment_id for e in c.search_experiments()]
    assert len(c.search_runs(exps, "tags.`fa.role` = 'variant'")) == 1
