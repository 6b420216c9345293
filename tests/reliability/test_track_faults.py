"""Tracking under real faults, with real processes (issues 11.1, 11.2, 11.5, 11.6, 12.7, 12.8).

Each test starts ``geomlab`` in a subprocess, creates the fault (concurrent starts on a fresh SQLite store, a signal
at a chosen point, a read-only folder, a server that does not answer) and checks the exit code, the one-line error
and what the store holds afterwards.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import copy_store, store_runs, store_steps

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--arch", "lenet_small", "--dataset", "digits", "--width", "4"]


@pytest.fixture(autouse=True)
def _warm(warm_cache):
    """Each test's GEOMLAB_CACHE (``tmp/cache``) holds the digits split already."""


def _env(tmp: Path, uri: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GEOMLAB_NO_PROGRESS="1", MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_TRACKING_URI=uri or f"sqlite:///{tmp / 'mlflow.db'}", GEOMLAB_CACHE=str(tmp / "cache"))
    return env


def _sigint_default() -> None:
    """preexec_fn: a pytest-xdist worker ignores SIGINT, and an ignored signal stays ignored in the processes it
    starts; the child gets the default back, as from a shell, so that Python turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _geomlab(*args) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *map(str, args)]


def _one_line(stderr: str, *needles: str) -> None:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------------------------
# 11.1 concurrent starts on a fresh SQLite store


@pytest.mark.timeout(1800)  # n processes at once: slow where the machine is shared
@pytest.mark.parametrize("n", [8])  # the issue asks for four and eight at once: eight is the harder race
def test_concurrent_starts_on_a_fresh_sqlite_store_all_succeed(tmp_path, n):
    env = _env(tmp_path)
    procs = [subprocess.Popen(_geomlab(*TRAIN, "--epochs", "1", "--seed", i), cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    runs = store_runs(tmp_path / "mlflow.db")
    assert len(runs) == n and {s for _, s, _ in runs} == {"FINISHED"}
    assert len({name for *_, name in runs}) == n  # seeds differ: so do the default names


# ------------------------------------------------------------------------------------------------------------------
# 11.6 / 12.7 SIGTERM and Ctrl-C end the run KILLED, with every finished epoch logged


def _wait_for_epoch(db: Path, proc, timeout: float = 300) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if db.exists():
            try:
                for run_id, _, _ in store_runs(db):
                    if store_steps(db, run_id):
                        return run_id
            except sqlite3.OperationalError:
                pass
        time.sleep(0.3)
    raise AssertionError("no epoch was logged in time")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_marks_the_run_killed(tmp_path, sig, code):
    db = tmp_path / "mlflow.db"
    p = subprocess.Popen(_geomlab(*TRAIN, "--epochs", "500", "--snapshot-every", "1", "--out-dir", tmp_path / "out"),
                         cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_sigint_default)
    run_id = _wait_for_epoch(db, p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == code, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err
    ((rid, status, _),) = store_runs(db)
    assert rid == run_id and status == "KILLED"
    from shared.files import load_snapshot

    newest = sorted((tmp_path / "out" / "snapshots").glob("epoch_*.pt"))[-1]
    done = [h["epoch"] for h in load_snapshot(newest)["history"]]
    assert set(done) <= set(store_steps(db, run_id))  # every epoch with a snapshot has its metrics


INTERRUPT_IN_LOG_BATCH = r"""
import os, signal, sys, time
from mlflow.tracking import MlflowClient
real = MlflowClient.log_batch
calls = {"n": 0}
def log_batch(self, run_id, metrics=(), *a, **k):
    if metrics:
        calls["n"] += 1
        if calls["n"] == 2:               # the second epoch's write: Ctrl-C arrives inside log_batch
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    return real(self, run_id, metrics, *a, **k)
MlflowClient.log_batch = log_batch
from shared.cli import main
main(sys.argv[1:])
"""


def test_interrupt_during_log_batch_loses_no_epoch(tmp_path):
    db = tmp_path / "mlflow.db"
    res = subprocess.run([sys.executable, "-c", INTERRUPT_IN_LOG_BATCH, *TRAIN, "--epochs", "50", "--snapshot-every",
                          "1", "--out-dir", str(tmp_path / "out")], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=300, preexec_fn=_sigint_default)
    assert res.returncode == 130, res.stderr[-3000:]
    ((run_id, status, _),) = store_runs(db)
    assert status == "KILLED"
    from shared.files import load_snapshot

    newest = sorted((tmp_path / "out" / "snapshots").glob("epoch_*.pt"))[-1]
    done = [h["epoch"] for h in load_snapshot(newest)["history"]]
    assert 2 in done and store_steps(db, run_id) == done  # epoch 2's metrics were being written: kept, none twice


# ------------------------------------------------------------------------------------------------------------------
# 12.8 a tracking server that does not answer


def test_unreachable_tracking_server_is_one_line_and_quick(tmp_path):
    t0 = time.time()
    res = subprocess.run(_geomlab(*TRAIN, "--epochs", "1"), cwd=tmp_path,
                         env=_env(tmp_path, "http://127.0.0.1:9/"), capture_output=True, text=True, timeout=120)
    took = time.time() - t0
    assert res.returncode == 2, res.stderr[-3000:]
    _one_line(res.stderr, "http://127.0.0.1:9", "MLFLOW_TRACKING_URI")
    assert took < 30 + 20  # the command's start-up (imports) on a busy machine, plus at most 30 s of trying


# ------------------------------------------------------------------------------------------------------------------
# 11.5 read-only folders (a read-only bind mount: root ignores permission bits)


def _readonly(path: Path, cmd: list[str]) -> list[str]:
    return ["unshare", "--mount", "sh", "-c", f'mount --bind -o ro "$0" "$0" && exec "$@"', str(path), *cmd]


@pytest.fixture
def can_mount(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    if not shutil.which("unshare"):
        pytest.skip("unshare is not installed")
    r = subprocess.run(_readonly(probe, ["touch", str(probe / "x")]), capture_output=True, text=True)
    if "Read-only file system" not in r.stderr:
        pytest.skip(f"cannot make a read-only bind mount here ({r.stderr.strip()[:100]})")


def _seeded_store(template: Path, where: Path) -> Path:
    """A migrated store in ``where`` that already holds one finished run (made in-process: no start-up to pay)."""
    from mlflow.tracking import MlflowClient

    copy_store(template, where / "m.db")
    client = MlflowClient(f"sqlite:///{where}/m.db")
    run = client.create_run(client.create_experiment("seeded"), run_name="seeded")
    client.log_metric(run.info.run_id, "test_acc", 0.5)
    client.set_terminated(run.info.run_id)
    return where / "m.db"


def test_read_only_tracking_store_folder(tmp_path, can_mount, _template_store):
    store = tmp_path / "store"
    db = _seeded_store(_template_store, store)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    res = subprocess.run(_readonly(store, _geomlab(*TRAIN, "--epochs", "1")), cwd=tmp_path,
                         env=_env(tmp_path, f"sqlite:///{db}"), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    _one_line(res.stderr, str(store), "Read-only file system")
    assert "ERROR" not in res.stderr and hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert len(store_runs(db)) == 1


def test_read_only_artifact_root(tmp_path, can_mount):
    (tmp_path / "mlruns").mkdir()
    res = subprocess.run(_readonly(tmp_path / "mlruns", _geomlab(*TRAIN, "--epochs", "1")), cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    _one_line(res.stderr, str(tmp_path / "mlruns"), "Read-only file system")
    ((_, status, _),) = store_runs(tmp_path / "mlflow.db")
    assert status == "FAILED"
