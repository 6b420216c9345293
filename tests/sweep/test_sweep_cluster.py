"""Scale-out on loopback: a real PostgreSQL (Optuna storage and MLflow backend), a real `mlflow server` with an
artifact root, and two worker processes running the same `geomlab sweep ... --n-trials 4` at once. Together they
must finish exactly 4 trials, each with its own child run under the study's one parent run, no trial run twice.

PostgreSQL runs as an unprivileged user when the tests run as root (CI). Skipped only when its binaries are absent.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

STUDY = "cluster"


def _pg_bin() -> Path | None:
    for d in [*(os.path.dirname(p) for p in filter(None, [shutil.which("pg_ctl")])),
              *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if all((Path(d) / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_user(cmd: list[str]) -> tuple[list[str], str | None]:
    """Run PostgreSQL's programs as an unprivileged user when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd, None
    user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
    if user is None:
        pytest.skip("running as root and there is no unprivileged user (postgres, nobody) to run PostgreSQL as")
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *cmd], user
    if shutil.which("su"):
        import shlex

        return ["su", user, "-s", "/bin/sh", "-c", shlex.join(cmd)], user
    pytest.skip("running as root without runuser or su to start PostgreSQL as another user")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on 127.0.0.1:<free port> with databases `optuna` and `mlflow`."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl, postgres) not found; apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="geomlab-pg-"))
    _, user = _as_user(["true"])
    if user:
        shutil.chown(base, user)
    port = _free_port()
    data = base / "data"
    cmd, _ = _as_user([str(bindir / "initdb"), "-D", str(data), "-U", "geomlab", "--auth=trust", "-E", "UTF8",
                       "--no-sync"])
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off " \
           "-c full_page_writes=off -c max_connections=100"
    cmd, _ = _as_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-w", "-t", "60",
                       "-o", opts, "start"])
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    try:
        log = base / "postgres.log"
        assert started.returncode == 0, started.stdout + started.stderr + \
            (log.read_text(errors="replace") if log.exists() else "")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="geomlab", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE optuna")
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql+psycopg2://geomlab@127.0.0.1:{port}"
    finally:
        cmd, _ = _as_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        subprocess.run(cmd, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # uvicorn may take long to drain; nothing of it is needed any more
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    """`mlflow server` with the PostgreSQL backend and a local artifact root; yields its http URI."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow_exe), "server", "--backend-store-uri", f"{postgres}/mlflow",
                             "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    uri = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, "mlflow server died: " + (tmp_path / "mlflow-server.log").read_text()
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "mlflow server did not come up in 90 s"
            time.sleep(0.5)
        yield uri
    finally:
        _stop(proc)
        log.close()


def test_two_workers_finish_exactly_n_trials(postgres, mlflow_server, tmp_path, monkeypatch):
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text("params:\n  lr: {type: float, low: 1.0e-2, high: 2.0e-1, log: true}\n"
                     "  width: {type: int, low: 2, high: 6}\nfixed: {arch: lenet_small, dataset: digits, epochs: 1}\n")
    storage = f"{postgres}/optuna"
    cmd = [sys.executable, "-c", "import sys; from shared.cli import main; main(sys.argv[1:])", "sweep", "shared",
           "train", "--space", str(space), "--n-trials", "4", "--study", STUDY, "--storage", storage,
           "--metric", "test_acc", "--heartbeat", "5"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1", "GEOMLAB_NO_PROGRESS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # as on a fresh machine
        env.pop(var, None)
    workers = []
    for i in range(2):
        wd = tmp_path / f"worker{i}"  # as on two machines: each its own working directory
        wd.mkdir()
        workers.append(subprocess.Popen(cmd, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True))
    outputs = []
    try:
        for w in workers:
            out, _ = w.communicate(timeout=240)
            outputs.append(out)
            assert w.returncode == 0, out
    finally:
        for w in workers:
            _stop(w)

    # Optuna: exactly 4 finished trials, numbers 0..3, and every trial ran in exactly one worker
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    ran = [sorted(int(n) for n in re.findall(r"^trial (\d+): (?:COMPLETE|PRUNED)", out, re.M)) for out in outputs]
    assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3], outputs
    parent_ids = {re.search(r"MLflow parent run (\w+)", out).group(1) for out in outputs}
    assert len(parent_ids) == 1, outputs

    # MLflow (through the server): one parent, one child run per trial under it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    c = MlflowClient(mlflow_server)
    (parent_id,) = parent_ids
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id
    parent = c.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["n_complete"] == str(sum(t.state.name == "COMPLETE" for t in study.trials))
    runs = c.search_runs([parent.info.experiment_id], filter_string=f"tags.optuna_study = '{STUDY}'")
    children = [r for r in runs if r.info.run_id != parent_id]
    assert len(children) == 4
    assert sorted(int(r.data.tags["optuna_trial"]) for r in children) == [0, 1, 2, 3]
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parent_id
        assert r.info.status == "FINISHED"
        trial = study.trials[int(r.data.tags["optuna_trial"])]
        assert trial.user_attrs["mlflow_run_ids"] == [r.info.run_id]
        assert r.data.tags["state"] == trial.state.name
        assert [a.path for a in c.list_artifacts(r.info.run_id, "snapshots")]  # artifacts went through the server
    assert "figures/optimization_history.png" in {a.path for a in c.list_artifacts(parent_id, "figures")}
    assert (tmp_path / "artifacts").is_dir()
