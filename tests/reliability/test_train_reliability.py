"""`geomlab train` under kill -9, re-runs, resumes with other options, a read-only snapshot folder and a full disk.

Each fault is made at a chosen point of a real `python -m shared.cli train` process (the first snapshots written),
then the command is re-run as a user would.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from shared.files import load_snapshot

ROOT = Path(__file__).resolve().parents[2]
BASE = ["train", "--arch", "lenet_small", "--width", "4", "--dataset", "digits", "--snapshot-every", "1"]


def _start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GEOMLAB_NO_PROGRESS": "1"}
    return subprocess.Popen([sys.executable, "-m", "shared.cli", *BASE, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"training ended before {path.name}: {proc.communicate()}"
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def _one_line_error(res, *needles: str) -> str:
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _runs():
    exp = mlflow.get_experiment_by_name("geomlab")
    return mlflow.search_runs([exp.experiment_id], output_format="list") if exp else []


def test_kill9_rerun_continues_the_same_run_and_changed_options_are_refused(mlflow_store, cli, tmp_path):
    out = tmp_path / "out"
    snaps = out / "snapshots"
    args = ("--epochs", "6", "--out-dir", str(out), "--keep-resume-every", "2")  # epoch_002 resumes below
    proc = _start(*args)
    _wait_for(snaps / "epoch_002.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (killed,) = _runs()
    assert killed.info.status == "RUNNING"  # kill -9: nobody closed it
    first = {p.name: load_snapshot(p)["model_state_dict"] for p in snaps.glob("epoch_*.pt")}
    assert "epoch_006.pt" not in first

    # 11.3: the same command again continues the killed run, from its newest snapshot, in the same MLflow run
    res = cli(*BASE, *args)
    assert res.exit_code == 0, res.output
    assert "continuing from" in res.stderr
    (run,) = _runs()
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    steps = {m.step for m in mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train_loss")}
    assert steps == set(range(1, 7))
    for name, weights in first.items():  # no weights written before the kill changed (older ones only slimmed)
        again = load_snapshot(snaps / name)
        assert again["model_state_dict"].keys() == weights.keys(), name
        assert all(torch.equal(again["model_state_dict"][k], v) for k, v in weights.items()), name
    # the resume state (optimizer, RNG) is kept by the newest snapshot and every --keep-resume-every'th only
    kept = {e: "optimizer_state_dict" in load_snapshot(snaps / f"epoch_{e:03d}.pt") for e in range(1, 7)}
    assert kept == {1: False, 2: True, 3: False, 4: True, 5: False, 6: True}, kept
    assert load_snapshot(snaps / "epoch_006.pt")["run_id"] == run.info.run_id

    # other options in the same --out-dir: refused, naming both ways out; nothing overwritten, no run opened
    line = _one_line_error(cli(*BASE, "--epochs", "6", "--out-dir", str(out), "--lr", "0.2"),
                           "--lr 0.05 in the snapshot, 0.2 now", "--resume-from", "--fresh")
    assert str(snaps / "epoch_006.pt") in line
    assert len(_runs()) == 1

    # 11.4: an explicit resume with a trajectory option changed is refused unless overridden ...
    snap2 = str(snaps / "epoch_002.pt")
    _one_line_error(cli(*BASE, "--epochs", "4", "--out-dir", str(tmp_path / "o2"), "--resume-from", snap2, "--lr",
                        "0.2"), "--lr 0.05 in the snapshot, 0.2 now", "--resume-override lr")
    _one_line_error(cli(*BASE, "--epochs", "4", "--out-dir", str(tmp_path / "o2"), "--resume-from", snap2,
                        "--optimizer", "adam"), "--optimizer sgd in the snapshot, adam now",
                    "--resume-override optimizer")
    assert len(_runs()) == 1
    # ... and with the override it trains at the new lr, logs it, and links the run it came from
    res = cli(*BASE, "--epochs", "4", "--out-dir", str(tmp_path / "o2"), "--resume-from", snap2, "--lr", "0.2",
              "--resume-override", "lr")
    assert res.exit_code == 0, res.output
    new = next(r for r in _runs() if r.info.run_id != run.info.run_id)
    assert new.data.params["train.lr"] == "0.2"
    assert new.data.tags["resumed_from_run"] == run.info.run_id and "--lr 0.05" in new.data.tags["resume_overrides"]
    lrs = {m.step: m.value for m in mlflow.tracking.MlflowClient().get_metric_history(new.info.run_id, "lr")}
    assert set(lrs) == {3, 4} and all(v == pytest.approx(0.2) for v in lrs.values())
    assert mlflow.get_run(run.info.run_id).data.tags["resumed_in_run"] == new.info.run_id
    res = cli(*BASE, "--epochs", "3", "--out-dir", str(tmp_path / "o3"), "--resume-from", snap2,
              "--optimizer", "adam", "--resume-override", "optimizer")
    assert res.exit_code == 0, res.output

    # --fresh starts over there, in a new run
    res = cli(*BASE, "--epochs", "1", "--out-dir", str(out), "--fresh")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in snaps.glob("epoch_*.pt")) == ["epoch_000.pt", "epoch_001.pt"]
    assert len(_runs()) == 4


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_read_only_snapshot_folder_is_a_one_line_error(mlflow_store, cli, tmp_path):
    snaps = tmp_path / "out" / "snapshots"
    mounted = os.geteuid() == 0 and _mount_tmpfs(snaps, "ro,size=1m")
    if not mounted:  # without root: permissions work
        snaps.mkdir(parents=True, exist_ok=True)
        snaps.chmod(0o555)
    try:
        _one_line_error(cli(*BASE, "--epochs", "1", "--out-dir", str(tmp_path / "out")), str(snaps),
                        "Read-only file system" if mounted else "Permission denied")
        assert _runs() == []
    finally:
        if mounted:
            subprocess.run(["umount", str(snaps)], check=True)


def test_full_disk_mid_run_is_a_one_line_error_and_keeps_the_snapshots(mlflow_store, cli, tmp_path):
    out = tmp_path / "out"
    if os.geteuid() != 0 or not _mount_tmpfs(out, "size=4m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        args = ("--epochs", "40", "--out-dir", str(out))
        proc = _start(*args)
        _wait_for(out / "snapshots" / "epoch_001.pt", proc)
        with open(out / "filler", "wb") as f:  # the disk fills up while training runs
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2, stderr
        lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: cannot write snapshot "), stderr
        assert str(out / "snapshots") in lines[0] and "No space left on device" in lines[0]
        written = sorted((out / "snapshots").iterdir())
        assert written and all(p.name.startswith("epoch_") and p.suffix == ".pt" for p in written)  # no temp files
        for p in written:
            assert load_snapshot(p)["epoch"] == int(p.stem[-3:])
        (run,) = _runs()
        assert run.info.status == "FAILED"
        # space freed: training continues from the newest snapshot (one more epoch here, so in a linked new run)
        (out / "filler").unlink()
        res = cli(*BASE, "--epochs", str(int(written[-1].stem[-3:]) + 1), "--out-dir", str(out))
        assert res.exit_code == 0, res.output
        assert f"up to {written[-1].name}: continuing from it" in res.stderr
        new = next(r for r in _runs() if r.info.run_id != run.info.run_id)
        assert new.info.status == "FINISHED" and new.data.tags["resumed_from_run"] == run.info.run_id
    finally:
        subprocess.run(["umount", "-l", str(out)])
