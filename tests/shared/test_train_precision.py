"""--precision bf16-mixed and --channels-last in the shared loop: fp32 master weights, bf16 compute, snapshots in the
usual format, exact resume; resume overrides take effect as documented."""
from __future__ import annotations

import pytest
import torch

from shared.data import DataConfig, load_data
from shared.errors import UsageError
from shared.experiment import model_for
from shared.files import load_snapshot
from shared.train import Callback, TrainConfig, Trainer, seed_everything


def _fresh(seed=3):
    seed_everything(seed)
    d = load_data(DataConfig(dataset="digits", batch_size=64, augmentation=True, train_fraction=0.3), seed=seed)
    return model_for("lenet_small", d, width=4), d


class _Stop(Callback):
    def __init__(self, at_epoch: int, at_batch: int):
        self.at = (at_epoch, at_batch)

    def on_step_end(self, tr, loss, output, y):
        if (tr.epoch, tr.batch_in_epoch) == self.at:
            raise KeyboardInterrupt


class _Dtypes(Callback):
    """Records the dtypes the convolutions compute in and the output dtype callbacks receive."""

    def __init__(self):
        self.seen: set = set()

    def on_train_start(self, tr):
        for m in tr.model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(lambda mod, i, o: self.seen.add(o.dtype))

    def on_step_end(self, tr, loss, output, y):
        self.out_dtype = output.dtype


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_mixed_resumes_bit_identically_and_snapshots_keep_their_format(tmp_path, channels_last):
    cfg = TrainConfig(epochs=3, lr=0.05, lr_step=2, lr_decay=0.5, snapshot_every=1, seed=3, precision="bf16-mixed",
                      channels_last=channels_last)
    m, d = _fresh()
    probe = _Dtypes()
    full = Trainer(m, d, cfg, out_dir=tmp_path / "full", callbacks=[probe], progress=False)
    full.fit()
    assert torch.bfloat16 in probe.seen and probe.out_dtype == torch.float32  # bf16 compute, fp32 to callbacks
    assert all(p.dtype == torch.float32 for p in full.model.parameters())  # fp32 master weights

    m, d = _fresh()
    with pytest.raises(KeyboardInterrupt):
        Trainer(m, d, cfg, out_dir=tmp_path / "cut", callbacks=[_Stop(2, 3)], progress=False).fit()
    snap = load_snapshot(tmp_path / "cut/snapshots/epoch_002.pt")
    tensors = list(snap["model_state_dict"].values()) + [v for st in snap["optimizer_state_dict"]["state"].values()
                                                          for v in st.values() if isinstance(v, torch.Tensor)]
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors if t.is_floating_point())

    m2, d2 = _fresh()
    torch.manual_seed(999)
    resumed = Trainer(m2, d2, cfg, out_dir=tmp_path / "cut", progress=False)
    resumed.fit(resume_from=str(tmp_path / "cut/snapshots/epoch_002.pt"))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]


def test_bf16_mixed_changes_the_arithmetic_and_fp32_stays_the_default(tmp_path):
    assert TrainConfig().precision == "fp32" and not TrainConfig().channels_last
    losses = {}
    for prec in ("fp32", "bf16-mixed"):
        m, d = _fresh()
        t = Trainer(m, d, TrainConfig(epochs=1, lr=0.05, precision=prec, snapshot_init=False), progress=False)
        losses[prec] = t.fit().final["train_loss"]
    assert losses["fp32"] != losses["bf16-mixed"]
    assert losses["bf16-mixed"] == pytest.approx(losses["fp32"], rel=0.05)
    with pytest.raises(UsageError, match="unknown --precision 'fp16'"):
        TrainConfig(precision="fp16").validate()


def test_resume_overrides_take_effect(tmp_path):
    cfg = TrainConfig(epochs=2, lr=0.05, lr_step=1, lr_decay=0.5, snapshot_every=1, seed=3, keep_resume_every=1)
    m, d = _fresh()
    Trainer(m, d, cfg, out_dir=tmp_path / "a", progress=False).fit()
    snap = str(tmp_path / "a/snapshots/epoch_001.pt")
    new = TrainConfig(epochs=3, lr=0.2, lr_step=1, lr_decay=0.5, snapshot_every=1, seed=3, momentum=0.5)
    m, d = _fresh()
    with pytest.raises(UsageError, match=r"--resume-override lr,momentum"):
        Trainer(m, d, new, out_dir=tmp_path / "b", progress=False).fit(resume_from=snap)
    m, d = _fresh()
    t = Trainer(m, d, new, out_dir=tmp_path / "b", progress=False)
    t.fit(resume_from=snap, overrides={"lr", "momentum"})
    # the schedule is rebuilt from the new base lr and advanced to epoch 1: 0.2 * 0.5, then 0.2 * 0.25
    assert [h["lr"] for h in t.history] == pytest.approx([0.05, 0.1, 0.05])
    assert t.optimizer.param_groups[0]["momentum"] == 0.5


@pytest.mark.parametrize("flags,auto,warns", [({"avx2"}, "fp32", True), ({"avx2", "avx512f", "avx512_bf16"},
                                                                         "bf16-mixed", False),
                                              ({"avx2", "amx_bf16"}, "bf16-mixed", False)])
def test_auto_precision_follows_the_cpu_and_emulated_bf16_warns(monkeypatch, flags, auto, warns):
    import shared.hardware as hw
    from shared.train import resolve_precision

    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset(flags))
    assert resolve_precision("auto", "cpu") == (auto, None)
    assert resolve_precision("fp32", "cpu") == ("fp32", None)
    precision, warning = resolve_precision("bf16-mixed", "cpu")
    assert precision == "bf16-mixed" and (warning is not None) == warns
    if warns:
        assert "AVX-512-BF16" in warning and "emulated" in warning and "0.09x" in warning


def test_the_train_command_warns_once_tags_the_run_and_resolves_auto(monkeypatch, mlflow_store, cli):
    import shared.hardware as hw
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(hw, "cpu_flags", lambda: frozenset({"avx2"}))
    base = ["train", "--arch", "mlp", "--width", "8", "--dataset", "digits", "--device", "cpu", "--epochs", "1",
            "--train-fraction", "0.05"]
    r = cli(*base, "--precision", "bf16-mixed", "--run-name", "emulated")
    assert r.exit_code == 0, r.output
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")] == [
        next(ln for ln in r.stderr.splitlines() if "--precision bf16-mixed on a CPU without" in ln)]
    r = cli(*base, "--precision", "auto", "--run-name", "auto")
    assert r.exit_code == 0 and "warning:" not in r.stderr, r.output
    client = MlflowClient()
    runs = {x.info.run_name: x for x in client.search_runs([e.experiment_id for e in client.search_experiments()])}
    assert "emulated" in runs["emulated"].data.tags["precision_warning"]
    assert runs["emulated"].data.tags["precision"] == "bf16-mixed"
    assert runs["auto"].data.tags["precision"] == "fp32" and "precision_warning" not in runs["auto"].data.tags
