"""The MLflow tracking store of a sweep: checked before any trial (reachable, authenticated, writable), and its
faults turned into one-line errors that name the store and the cause."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

from shared.errors import UsageError, check

from .command import first_line

_AUTH_HINT = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account of "
              "that server")


def describe_fault(uri: str, e: BaseException) -> str:
    """One line: what went wrong with the tracking store ``uri``, and what to do."""
    code = str(getattr(e, "error_code", "") or "")
    text = first_line(e)
    if code == "UNAUTHENTICATED":
        return f"the MLflow tracking server {uri} refused the request: authentication failed; {_AUTH_HINT}"
    if code == "PERMISSION_DENIED":
        return (f"the MLflow tracking server {uri} refused the request: permission denied (this account may read "
                "but not edit the experiment); ask its admin for EDIT permission, or set MLFLOW_EXPERIMENT_NAME to "
                "an experiment of yours")
    low = text.lower()
    if "readonly" in low or "read-only" in low or "permission denied" in low:
        return (f"cannot write to the MLflow tracking store {uri} ({text}); make the store (and its folder) writable "
                "or set MLFLOW_TRACKING_URI to another store")
    return f"cannot use the MLflow tracking store {uri} ({type(e).__name__}: {text}); fix MLFLOW_TRACKING_URI"


@contextlib.contextmanager
def tracking_faults(uri: str) -> Iterator[None]:
    """Any failure of the tracking store inside becomes :class:`UsageError` (one line, exit 2); MLflow's own ERROR
    log of it (a traceback) does not reach stderr."""
    log = logging.getLogger("mlflow")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(describe_fault(uri, e)) from None
    finally:
        log.setLevel(level)


def check_tracking() -> str:
    """The tracking URI, after checking that the tracking store answers and accepts our credentials."""
    from mlflow.tracking import MlflowClient

    from shared.tracking import configure_tracking

    uri = configure_tracking()
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            r = requests.get(uri.rstrip("/") + "/health", timeout=10)
            ok = r.status_code in (200, 401, 403)  # a server with authentication may guard /health too
            reason = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            ok, reason = False, type(e).__name__
        check(ok, f"the MLflow tracking server {uri} does not answer ({reason}); start it (mlflow server ...) or "
                  "fix MLFLOW_TRACKING_URI")
    with tracking_faults(uri):
        MlflowClient(uri).search_experiments(max_results=1)
    return uri


def create_run_retrying(client, exp_id: str | None, name: str, run_name: str, attempts: int = 8):
    """Create a run in experiment ``exp_id`` (or the experiment ``name``, created if missing).

    Workers that start at the same moment against a fresh tracking server race to create the experiment: one gets
    "already exists", and a server can briefly answer "no experiment with id=..." for an experiment another worker
    has just created. Both are retried (a short, bounded back-off)."""
    from mlflow.exceptions import MlflowException

    for i in range(attempts):
        try:
            eid = exp_id
            if eid:
                try:
                    client.get_experiment(eid)
                except MlflowException as e:
                    if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                        raise
                    eid = None  # a stale MLFLOW_EXPERIMENT_ID of another store: use the experiment by name
            if not eid:
                exp = client.get_experiment_by_name(name)
                eid = exp.experiment_id if exp else client.create_experiment(name)
            return client.create_run(eid, run_name=run_name)
        except MlflowException as e:
            code = getattr(e, "error_code", "")
            if i == attempts - 1 or code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
            time.sleep(0.25 * (i + 1))
