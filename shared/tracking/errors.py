"""Failures of the tracking store and the artifact store, as one-line :class:`~shared.errors.UsageError` errors.

:func:`_cause` digs the real cause out of the exceptions SQLAlchemy and MLflow wrap it in; :func:`store_error` names
the SQLite file or the server (and the fix), :func:`artifact_error` the artifact root.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from shared.errors import UsageError


def _cause(e: BaseException) -> str:
    """The innermost useful one-line description of an exception (SQLAlchemy and MLflow wrap the real cause)."""
    seen = e
    while not (isinstance(seen, OSError) and seen.strerror) and (seen.__cause__ is not None
                                                                 or seen.__context__ is not None):
        nxt = seen.__cause__ or seen.__context__
        if isinstance(nxt, OSError) or "sqlite3" in type(nxt).__module__:
            seen = nxt
            break
        seen = nxt
    if isinstance(seen, OSError) and seen.strerror:
        return f"{seen.strerror}: {seen.filename}" if seen.filename else seen.strerror
    text = str(seen).strip() or str(e).strip() or type(e).__name__
    text = text.splitlines()[0]
    m = re.search(r"\(sqlite3\.\w+\) ([^\[\n]+)", text)
    if m:
        text = m.group(1).strip()
    return text[:200]


def store_error(e: BaseException, what: str, uri: str | None = None) -> UsageError:
    """A one-line UsageError for a failure of the tracking store or artifact store while ``what``."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    cause = _cause(e)
    low = cause.lower()
    if isinstance(e, UsageError):
        return e
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if any(s in low for s in ("readonly", "read-only", "permission", "unable to open", "disk i/o")):
            return UsageError(f"cannot write the MLflow tracking store {db} while {what} ({cause}); make its folder "
                              f"{db.parent} writable or set MLFLOW_TRACKING_URI to another store")
        if "no space" in low or "disk is full" in low or "database or disk is full" in low:
            return UsageError(f"the disk holding the MLflow tracking store {db} is full while {what} ({cause}); free "
                              "space or set MLFLOW_TRACKING_URI to another store")
        return UsageError(f"the MLflow tracking store {db} failed while {what} ({cause}); check the file or set "
                          "MLFLOW_TRACKING_URI to another store")
    if uri.startswith(("http://", "https://")):
        return UsageError(f"the MLflow tracking server {uri} failed while {what} ({cause}); check that it is running "
                          "(curl <server>/health) and MLFLOW_TRACKING_URI")
    return UsageError(f"MLflow ({uri}) failed while {what} ({cause}); check MLFLOW_TRACKING_URI")


def artifact_error(e: BaseException, what: str, root: str | None) -> UsageError:
    cause = _cause(e)
    return UsageError(f"cannot write MLflow artifacts under {root or 'the artifact root'} while {what} ({cause}); "
                      "make the artifact root writable (or start the server with a writable --artifacts-destination)")
