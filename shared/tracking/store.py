"""The tracking store: its URI, its preparation before the first run, and writes that wait their turn.

- The default store is MLflow's own default, ``mlflow.db`` (SQLite) in the working directory, made absolute by
  :func:`configure_tracking`; ``MLFLOW_TRACKING_URI`` points elsewhere (a server).
- :func:`prepare_store` creates a new SQLite store (Alembic migrations) under a file lock beside the database, one
  process at a time, with retries; a server that does not answer is a one-line error within seconds.
- :func:`retry_busy` retries a write while SQLite reports the database locked (concurrent workers take turns).
- :func:`experiment_for` names a project's experiment; new experiments get the geomlab runs view
  (:func:`runs_view_tags`).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

from shared.errors import UsageError

from .errors import _cause, store_error

# The experiment of each project's runs (projects not listed log to an experiment named after the project).
EXPERIMENTS = {"shared": "geomlab", "geomlab": "geomlab"}
DEMO_EXPERIMENT = "demo"

# Bounded HTTP retries (MLflow's defaults retry for minutes): the user's own MLFLOW_HTTP_* settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
# ... and tighter ones for the first contact, so that a server that is down is reported within seconds.
HTTP_PREFLIGHT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "8"}


def configure_tracking() -> str:
    """Make the tracking URI explicit and absolute; returns it."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")  # no pip run when a model is logged
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    quiet_mlflow_logs()
    mlflow.set_tracking_uri(uri)
    return uri


def quiet_mlflow_logs() -> None:
    """MLflow's (and Alembic's) log lines stay off the user's stderr: geomlab reports failures itself, on one line."""
    for name in ("mlflow", "alembic"):
        log = logging.getLogger(name)
        log.setLevel(logging.CRITICAL + 1)
        log.propagate = False


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"

@contextlib.contextmanager
def _env(values: dict) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_READY: dict[tuple[str, str | None], str | None] = {}


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside a SQLite database (no lock for other stores)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    lock = db.with_name(db.name + ".lock")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise UsageError(f"cannot write the MLflow tracking store {db} ({e.strerror or e}: {lock}); make its folder "
                         f"{db.parent} writable or set MLFLOW_TRACKING_URI to another store") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def prepare_store(experiment: str | None = None, *, uri: str | None = None, attempts: int = 6) -> str | None:
    """Make the tracking store ready for runs; returns the id of ``experiment`` (created if missing), or None.

    For SQLite, creating the database (Alembic migrations) and creating experiments happen under a file lock beside
    the database, with retries and back-off, so that any number of processes can start together on a fresh store
    (``geomlab`` commands, sweep workers). A server is asked once with short timeouts: when it does not answer the
    error is one line within seconds. Every failure is a :class:`UsageError` naming the store and the cause.
    """
    uri = uri or configure_tracking()
    key = (uri, experiment)
    if key in _READY:
        return _READY[key]
    from mlflow.tracking import MlflowClient

    remote = uri.startswith(("http://", "https://"))
    last: BaseException | None = None
    with _store_lock(uri), _env(HTTP_PREFLIGHT if remote else {}):
        for attempt in range(attempts):
            try:
                client = MlflowClient(tracking_uri=uri)
                client.search_experiments(max_results=1)  # creates and migrates a new SQLite store
                eid = None
                if experiment:
                    exp = client.get_experiment_by_name(experiment)
                    if exp is None:
                        eid = client.create_experiment(experiment, tags=runs_view_tags())
                    elif exp.lifecycle_stage == "deleted":
                        raise UsageError(f"MLflow experiment {experiment!r} is deleted in {uri}; restore it "
                                         f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set "
                                         "MLFLOW_EXPERIMENT_NAME to another")
                    else:
                        eid = exp.experiment_id
                _READY[key] = eid
                return eid
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001 - every store failure becomes one line
                last = e
                if remote or _permanent(e):
                    break
                time.sleep(min(0.1 * 2 ** attempt, 2.0) * (1 + (os.getpid() % 7) / 7))  # back-off, de-synchronized
    assert last is not None
    if remote:
        raise UsageError(f"cannot reach the MLflow tracking server {uri} ({_cause(last)}); check that it is running "
                         "(curl <server>/health) and MLFLOW_TRACKING_URI") from None
    raise store_error(last, "opening it", uri) from None


# The runs table of a geomlab experiment, as an MLflow UI shared view: open
# ``#/experiments/<id>/runs?viewStateShareKey=geomlab`` to see the dataset, model and the shared metric columns.
RUNS_VIEW_KEY = "geomlab"
RUNS_VIEW_COLUMNS = ("attributes.`Dataset`", "attributes.`Models`", "attributes.`Source`", "metrics.`test_acc`",
                     "metrics.`val_acc`", "metrics.`train_loss`", "metrics.`train_acc`")


def runs_view_tags() -> dict:
    view = {"selectedColumns": list(RUNS_VIEW_COLUMNS), "orderByKey": "attributes.start_time", "orderByAsc": False}
    return {f"mlflow.sharedViewState.{RUNS_VIEW_KEY}": json.dumps(view)}


def _permanent(e: BaseException) -> bool:
    low = _cause(e).lower()
    return any(s in low for s in ("readonly", "read-only", "permission denied", "unable to open", "no space",
                                  "disk is full", "not a database"))


def retry_busy(write, attempts: int = 8):
    """Call ``write()``, retried with back-off while SQLite reports a busy (locked) database: concurrent workers on one
    store take turns instead of failing."""
    for attempt in range(attempts):
        try:
            return write()
        except Exception as e:  # noqa: BLE001
            if attempt == attempts - 1 or "locked" not in _cause(e).lower():
                raise
            time.sleep(min(0.2 * 2 ** attempt, 5.0))


def experiment_for(project: str) -> str:
    return EXPERIMENTS.get(project, project)
