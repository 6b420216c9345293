"""End-to-end: `geomlab hyperplane-bias ...` against a temporary MLflow store (digits data, LeNet, 2 epochs)."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
import torch

from projects.hyperplane_bias.models import build_model
from shared.train import KillPlateaus
from shared.train import TrainConfig

HB = "hyperplane-bias"


def _run_id(stdout: str, what: str) -> str:
    m = re.search(rf"{what}: run ([0-9a-f]{{32}})", stdout)
    assert m, stdout
    return m.group(1)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


@pytest.fixture
def trained(mlflow_store, cli):
    r = cli(HB, "train", "--arch", "lenet", "--dataset", "digits", "--epochs", "2", "--lr", "0.01",
            "--snapshot-every", "1", "--batch-size", "64")
    assert r.exit_code == 0, r.output
    return _run_id(r.stdout, "train")


def test_train_projections_reinit_correlate_pipeline(trained, cli, tmp_path, monkeypatch):
    client = _client()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where downloaded artifacts land
    run = client.get_run(trained)
    assert run.data.tags["project"] == "hyperplane_bias" and run.data.params["train.lr"] == "0.01"
    assert run.data.params["train.weight_decay"] == "0.0001"  # the original's default
    snaps = [a.path for a in client.list_artifacts(trained, "snapshots")]
    assert snaps == ["snapshots/epoch_000.pt", "snapshots/epoch_001.pt", "snapshots/epoch_002.pt"]

    # projections over training: one metric per layer and statistic, step = epoch
    r = cli(HB, "projections", "--run", trained, "--normalize")
    assert r.exit_code == 0, r.output
    pid = _run_id(r.stdout, "projections")
    prun = client.get_run(pid)
    assert prun.data.tags["source_run_id"] == trained
    hist = client.get_metric_history(pid, "proj/s0b0/mass")
    assert sorted(m.step for m in hist) == [0, 1, 2]
    l2 = {m.step: m.value for m in client.get_metric_history(pid, "proj/s2b1/l2_dist")}
    assert l2[0] == 0.0 and l2[2] > 0  # distance from the run's own initialization
    arts = {a.path for a in client.list_artifacts(pid, "projections")}
    assert "projections/epoch_002.json" in arts
    doc = json.loads(Path(client.download_artifacts(pid, "projections/epoch_002.json", str(tmp_path))).read_text())
    assert doc["epoch"] == "2" and doc["arch"] == "lenet" and doc["dataset"] == "digits"
    assert set(doc) >= {"0", "1", "2", "net"} and len(doc["0"]["0"]["projections"]) == 6
    assert {"figures/projections_mass.png", "figures/projections_mean.png"} <= \
        {a.path for a in client.list_artifacts(pid, "figures")}
    assert not list(scratch.rglob("*.pt"))  # downloaded snapshots are deleted after reading

    # re-initialization from the run's snapshots plus a fresh draw
    r = cli(HB, "reinit", "--run", trained, "--rand", "--max-test", "200")
    assert r.exit_code == 0, r.output
    rid = _run_id(r.stdout, "reinit")
    assert "warning" not in r.stderr  # the rand draw is not the run's own init
    rdoc = json.loads(Path(client.download_artifacts(rid, "reinit/reinit_epoch_002.json", str(tmp_path))).read_text())
    assert list(rdoc["init_from_epoch"]) == ["0", "1", "rand"]
    assert all(len(v) == 6 for v in rdoc["init_from_epoch"].values())
    assert rdoc["epoch"] == "2" and rdoc["num_test"] == 200 and 0 <= rdoc["top1_test"] <= 100
    assert rdoc["init_from_epoch"]["0"] != rdoc["init_from_epoch"]["rand"]
    assert "figures/reinit_epoch_002.png" in {a.path for a in client.list_artifacts(rid, "figures")}
    assert client.get_run(rid).data.metrics["reinit/top1_test"] == pytest.approx(rdoc["top1_test"])

    # correlate, from the reinit run id alone
    r = cli(HB, "correlate", "--reinit", rid)
    assert r.exit_code == 0, r.output
    assert "Spearman rho(bias, drop@0)" in r.stdout
    cid = _run_id(r.stdout, "correlate")
    cres = json.loads(Path(client.download_artifacts(cid, "correlate/correlate.json", str(tmp_path))).read_text())
    assert len(cres["rows"]) == 6 and cres["checkpoint"] == "0"
    assert "figures/correlation.png" in {a.path for a in client.list_artifacts(cid, "figures")}


def test_single_snapshot_random_init_and_original_files(mlflow_store, cli, tmp_path):
    # random initialization: no data needed, seeded
    r1 = cli(HB, "projections", "--arch", "lenet", "--dataset", "mnist", "--seed", "3", "--results", "a")
    r2 = cli(HB, "projections", "--arch", "lenet", "--dataset", "mnist", "--seed", "3", "--results", "b")
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    a, b = (json.loads(Path(d, "projections", "init_lenet.json").read_text()) for d in ("a", "b"))
    assert a == b and a["epoch"] == "0" and a["seed"] == "3" and a["dataset"] == "mnist"
    # a file of the original code (<arch>_<e>.tar, 0-based e) needs --arch/--dataset; epoch = e + 1
    model = build_model("lenet", 10, 1, 28, seed=1)
    init = build_model("lenet", 10, 1, 28, seed=2)
    torch.save({"epoch": 4, "model_state_dict": model.state_dict()}, tmp_path / "lenet_4.tar")
    torch.save(init.state_dict(), tmp_path / "lenet_init_0.pt")
    r = cli(HB, "projections", "--load-from", str(tmp_path / "lenet_4.tar"))
    assert r.exit_code == 2 and "--arch" in r.stderr
    r = cli(HB, "projections", "--load-from", str(tmp_path / "lenet_4.tar"), "--arch", "lenet", "--dataset",
            "mnist", "--init-from", str(tmp_path / "lenet_init_0.pt"), "--with-linear", "--results", "c")
    assert r.exit_code == 0, r.output
    doc = json.loads(Path("c", "projections", "lenet_4.json").read_text())
    assert doc["epoch"] == "5" and "3" in doc and doc["0"]["0"]["l2_dist"] > 0  # linear layers: stage 3


def test_reinit_from_an_inits_list_file(trained, cli, tmp_path):
    client = _client()
    files = []
    for e in (0, 1):
        files.append(client.download_artifacts(trained, f"snapshots/epoch_00{e}.pt", str(tmp_path)))
    last = client.download_artifacts(trained, "snapshots/epoch_002.pt", str(tmp_path))
    lst = tmp_path / "inits.txt"
    lst.write_text("\n".join(files + [str(tmp_path / "missing.pt")]) + "\n\n")
    r = cli(HB, "reinit", "--load-from", last, "--inits-from", str(lst), "--max-test", "100", "--walk", "modules",
            "--with-linear", "--results", "out")
    assert r.exit_code == 0, r.output
    assert "missing.pt" in r.stderr and "skipped" in r.stderr
    doc = json.loads(Path("out", "reinit", "reinit_epoch_002.json").read_text())
    assert list(doc["init_from_epoch"]) == ["0", "1"] and len(doc["init_from_epoch"]["0"]) == 9
    assert [l["kind"] for l in doc["layers"]].count("linear") == 3


@pytest.mark.parametrize("args, needle", [
    (("train", "--dataset", "digits"), "--arch"),
    (("train", "--arch", "lenet"), "--dataset"),
    (("train", "--arch", "resnet", "--dataset", "digits"), "choose one of"),
    (("train", "--arch", "lenet", "--dataset", "digits", "--noise", "1.5"), "--noise"),
    (("reinit",), "--load-from"),
    (("projections", "--arch", "lenet", "--dataset", "digits", "--walk", "up"), "--walk"),
    (("projections", "--arch", "vgg11", "--dataset", "cifar10", "--pretrained"), "not found"),
    (("correlate", "--reinit", "nothing.json"), "does not exist"),
])
def test_usage_errors_exit_2_with_one_line(mlflow_store, cli, monkeypatch, tmp_path, args, needle):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = cli(HB, *args)
    assert r.exit_code == 2, r.output
    assert needle in r.stderr and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_train_options_reach_the_configs(mlflow_store, cli):
    r = cli(HB, "train", "--arch", "lenet", "--dataset", "digits", "--epochs", "1", "--noise", "-1",
            "--split", "0.2", "--stratified", "--unnormalize", "--optimizer", "adam", "--subsample-classes", "4",
            "--snapshot-all-until", "1", "--train-acc")
    assert r.exit_code == 0, r.output
    p = _client().get_run(_run_id(r.stdout, "train")).data.params
    assert p["data.pixel_shuffle"] == "True" and p["data.noise"] == "0.0" and p["data.normalize"] == "none"
    assert p["data.stratified"] == "True" and p["data.subsample_classes"] == "4"
    assert p["train.weight_decay"] == "0.0"  # Adam without weight decay, as the original
    assert "val_acc" in r.stdout and "train_eval_acc" in r.stdout
    r = cli(HB, "train", "--arch", "lenet", "--dataset", "digits", "--evaluate")
    assert r.exit_code == 0 and "test: loss=" in r.stdout, r.output


def test_kill_plateaus_rule_checks_snapshot_evaluations_only():
    cfg = TrainConfig(epochs=10, snapshot_every=3)

    class T:  # the parts of the Trainer the rule reads
        epoch = 0
        stopped = None

        def should_snapshot(self):
            e = self.epoch
            return e == cfg.epochs or e % cfg.snapshot_every == 0 or e <= cfg.snapshot_all_until

        def request_stop(self, reason):
            self.stopped = reason

    probe = T()
    snapshots = []
    for e in range(1, 11):
        probe.epoch = e
        snapshots += [e] if probe.should_snapshot() else []
    assert snapshots == [3, 6, 9, 10]
    cb, t = KillPlateaus("acc-equal", only_at_snapshots=True), T()
    for epoch, acc in [(1, 0.5), (2, 0.5), (3, 0.5), (4, 0.7), (5, 0.7), (6, 0.6)]:
        t.epoch = epoch
        cb.on_epoch_end(t, {"test_acc": acc})
    assert t.stopped is None  # equal values at non-snapshot epochs do not count
    t.epoch = 9
    cb.on_epoch_end(t, {"test_acc": 0.6})
    assert t.stopped and "0.6" in t.stopped
    zero = KillPlateaus("acc-equal", only_at_snapshots=True)
    t2 = T()
    t2.epoch = 3
    zero.on_epoch_end(t2, {"val_acc": 0.0, "test_acc": 0.4})  # validation first; the first comparison is with 0
    assert t2.stopped is not None
