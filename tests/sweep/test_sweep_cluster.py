"""The README's cluster recipe on loopback: a real PostgreSQL with password authentication (the password only in a
pgpass file), a real `mlflow server --app-name basic-auth`, and two workers running the same `geomlab sweep ...
--n-trials 4` at once with the storage from GEOMLAB_OPTUNA_STORAGE. Together they finish exactly 4 trials, each with
its own child run under the study's one parent run. Workers without credentials or with wrong ones, a user who may
only read the experiment, an unreachable database and a wrong database password each get a one-line error and
create nothing; no password appears in anything geomlab prints or writes.

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
PG_PASSWORD = "pg-Secret-7f3a9"  # the test greps everything geomlab writes and prints for these
ADMIN_PASSWORD = "admin-Secret-51c2"
ALICE_PASSWORD = "alice-Secret-90d4"
BOB_PASSWORD = "bob-Secret-3e77"
SECRETS = (PG_PASSWORD, ADMIN_PASSWORD, ALICE_PASSWORD, BOB_PASSWORD)


def _pg_bin() -> Path | None:
    for d in [*(os.path.dirname(p) for p in filter(None, [shutil.which("pg_ctl")])),
              *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        if all((Path(d) / exe).exists() for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(d)
    return None


README = Path(__file__).resolve().parents[2] / "README.md"


def _recipe() -> str:
    text = README.read_text()
    return text[text.index("## Running on a cluster"):text.index("## Security")]


def _readme_server_command(backend: str, artifacts: Path, port: int) -> list[str]:
    """The README's `mlflow server` command, with this test's database, artifact root, address and port."""
    import shlex

    lines = _recipe().splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip().startswith("mlflow server"))
    cmd = ""
    while True:
        line = lines[i].split("#")[0].strip()
        cmd += " " + line.rstrip("\\")
        if not line.endswith("\\"):
            break
        i += 1
    argv = shlex.split(cmd)
    subst = {"postgresql+psycopg2://geomlab@db-host:5432/mlflow": backend, "/data/mlartifacts": str(artifacts),
             "10.0.0.5": "127.0.0.1", "5000": str(port)}
    assert all(any(k in a for a in argv) for k in subst), argv
    out = []
    for a in argv[2:]:
        for k, v in subst.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def _readme_auth_ini(database_uri: str) -> str:
    """The README's basic-auth ini, with this test's auth database and admin password."""
    import configparser

    block = _recipe().split("# ~/mlflow-auth.ini\n", 1)[1].split("```", 1)[0]
    ini = configparser.ConfigParser()
    ini.read_string("\n".join(line.strip() for line in block.splitlines()))
    assert ini["mlflow"]["admin_password"].startswith("<")  # a placeholder, no password in the docs
    ini["mlflow"]["admin_password"] = ADMIN_PASSWORD
    ini["mlflow"]["database_uri"] = database_uri
    import io

    out = io.StringIO()
    ini.write(out)
    return out.getvalue()


def test_the_readme_recipe_keeps_secrets_off_command_lines():
    recipe = _recipe()
    code = "\n".join(b for i, b in enumerate(recipe.split("```")) if i % 2)
    assert not re.search(r"://[^/\s:@]+:[^@\s]+@", code), "a password in a URL of the recipe"
    assert "--host 0.0.0.0" not in README.read_text() and "StrictHostKeyChecking" not in README.read_text()
    assert "--app-name basic-auth" in code and "--storage" not in code.split("geomlab sweep", 1)[1].split("```")[0]
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "GEOMLAB_OPTUNA_STORAGE",
                "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert f"{var}=" in code, var
    assert "db-host:5432:*:geomlab:<the password>" in code  # the pgpass line the test writes
    makefile = (README.parent / "Makefile").read_text()
    ui = next(line for line in makefile.splitlines() if "mlflow ui" in line)
    assert "--host 127.0.0.1" in ui


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
    pwfile = base / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if user:
        shutil.chown(pwfile, user)
    # TCP connections need the password (as on a real server); the Unix socket of this throw-away server is trusted
    cmd, _ = _as_user([str(bindir / "initdb"), "-D", str(data), "-U", "geomlab", "--auth-local=trust",
                       "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"])
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

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="geomlab", password=PG_PASSWORD, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE optuna")
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        pgpass = base / "pgpass"  # what the README tells every machine to write (mode 0600, else libpq ignores it)
        pgpass.write_text(f"127.0.0.1:{port}:*:geomlab:{PG_PASSWORD}\n")  # the README's line, this host and port
        pgpass.chmod(0o600)
        os.environ["PGPASSFILE"] = str(pgpass)  # this test process (optuna.load_study) and every child
        yield f"postgresql+psycopg2://geomlab@127.0.0.1:{port}"  # no password in any URL
        os.environ.pop("PGPASSFILE", None)
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
    """The README's tracking server: `mlflow server --app-name basic-auth` with the PostgreSQL backend (password from
    PGPASSFILE), a local artifact root, bound to 127.0.0.1 here; users alice (runs the sweep) and bob (new users may
    only read: `default_permission = READ`). Yields its http URI."""
    port = _free_port()
    auth = tmp_path / "basic_auth.ini"
    auth.write_text(_readme_auth_ini(f"sqlite:///{tmp_path / 'basic_auth.db'}"))
    auth.chmod(0o600)
    log = open(tmp_path / "mlflow-server.log", "w")
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_AUTH_CONFIG_PATH": str(auth),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key"}
    argv = _readme_server_command(f"{postgres}/mlflow", tmp_path / "artifacts", port)
    proc = subprocess.Popen([str(mlflow_exe), "server", *argv, "--workers", "1"],  # one worker: a 2-core machine
                            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "mlflow server died: " + (tmp_path / "mlflow-server.log").read_text()
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "mlflow server did not come up in 180 s"
            time.sleep(0.5)
        admin = requests.Session()
        admin.auth = ("admin", ADMIN_PASSWORD)
        for user, pw in (("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)):  # `mlflow.server.get_app_client` does
            r = admin.post(f"{uri}/api/2.0/mlflow/users/create", json={"username": user, "password": pw}, timeout=30)
            assert r.status_code == 200, r.text
        yield uri
    finally:
        _stop(proc)
        log.close()


def _worker_env(mlflow_server: str, storage: str, user: str | None, password: str | None) -> dict:
    """A worker's environment as the README sets it: tracking server, credentials, storage without password."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "OMP_NUM_THREADS": "1", "GEOMLAB_NO_PROGRESS": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true", "GEOMLAB_OPTUNA_STORAGE": storage}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):  # as on a fresh machine
        env.pop(var, None)
    if user:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    return env


def _sweep_cmd(space: Path, study: str, n: int) -> list[str]:
    return [sys.executable, "-c", "import sys; from shared.cli import main; main(sys.argv[1:])", "sweep", "shared",
            "train", "--space", str(space), "--n-trials", str(n), "--study", study, "--metric", "test_acc"]


def _refused(cmd, env, cwd) -> str:
    """A worker that must stop before anything: exit 2, one line on stderr; returns everything it printed."""
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), r.stdout + r.stderr
    return r.stdout + r.stderr


def _no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a password appears in {where}"


def test_two_workers_finish_exactly_n_trials(postgres, mlflow_server, tmp_path, monkeypatch):
    import mlflow
    import optuna
    from mlflow.tracking import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text("params:\n  lr: {type: float, low: 1.0e-2, high: 2.0e-1, log: true}\n"
                     "  width: {type: int, low: 2, high: 6}\nfixed: {arch: lenet_small, dataset: digits, epochs: 1}\n")
    storage = f"{postgres}/optuna"
    cmd = _sweep_cmd(space, STUDY, 4)
    printed: list[str] = []

    # without credentials, or with wrong ones: one line naming the server and "authentication"; nothing created
    for user, pw in ((None, None), ("alice", "not-" + ALICE_PASSWORD)):
        out = _refused(cmd, _worker_env(mlflow_server, storage, user, pw), tmp_path)
        assert mlflow_server in out and "authentication" in out, out
        printed.append(out)
    assert optuna.get_all_study_names(storage) == []

    env = _worker_env(mlflow_server, storage, "alice", ALICE_PASSWORD)
    workers = []
    for i in range(2):
        wd = tmp_path / f"worker{i}"  # as on two machines: each its own working directory
        wd.mkdir()
        workers.append(subprocess.Popen(cmd, cwd=wd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True))
    outputs = []
    try:
        for w in workers:
            out, _ = w.communicate(timeout=600)
            outputs.append(out)
            assert w.returncode == 0, out
    finally:
        for w in workers:
            _stop(w)
    printed += outputs

    # Optuna: exactly 4 finished trials, numbers 0..3, and every trial ran in exactly one worker
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    ran = [sorted(int(n) for n in re.findall(r"^trial (\d+): (?:COMPLETE|PRUNED)", out, re.M)) for out in outputs]
    assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3], outputs
    parent_ids = {re.search(r"MLflow parent run (\w+)", out).group(1) for out in outputs}
    assert len(parent_ids) == 1, outputs

    # MLflow (through the server, as alice): one parent, one child run per trial under it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ALICE_PASSWORD)
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

    # bob may read alice's experiment but not edit it: his worker cannot log to it, and creates no run
    bob = _worker_env(mlflow_server, storage, "bob", BOB_PASSWORD)
    bob["MLFLOW_EXPERIMENT_NAME"] = c.get_experiment(parent.info.experiment_id).name
    out = _refused(_sweep_cmd(space, "bobs", 1), bob, tmp_path)
    assert mlflow_server in out and "permission denied" in out, out
    printed.append(out)
    assert len(c.search_runs([parent.info.experiment_id], max_results=1000)) == 5

    # the database unreachable, and a wrong password in a URL: one-line errors that show no password
    for bad in (f"postgresql+psycopg2://geomlab:{PG_PASSWORD}@127.0.0.1:{_free_port()}/optuna",
                storage.replace("geomlab@", f"geomlab:not-{PG_PASSWORD}@")):
        out = _refused(cmd, _worker_env(mlflow_server, bad, "alice", ALICE_PASSWORD), tmp_path)
        assert "Optuna storage" in out, out
        printed.append(out)

    # no password anywhere: what the workers printed, MLflow params, tags and artifacts, the sweep's own files
    _no_secret("stdout/stderr", "\n".join(printed))
    for r in [parent, *children]:
        _no_secret(f"params/tags of run {r.info.run_id}", repr(r.data.params) + repr(r.data.tags))
        local = Path(mlflow.artifacts.download_artifacts(run_id=r.info.run_id, dst_path=str(tmp_path / "dl" /
                                                                                                  r.info.run_id)))
        for f in local.rglob("*"):
            if f.is_file():
                _no_secret(str(f), f.read_bytes().decode("latin-1"))
    for wd in (tmp_path / "worker0", tmp_path / "worker1"):
        for f in wd.rglob("*"):
            if f.is_file():
                _no_secret(str(f), f.read_bytes().decode("latin-1"))
    _no_secret("the study's attributes", repr(study.user_attrs) + repr([t.user_attrs for t in study.trials]))
