"""Inputs of a command: local paths or MLflow artifact URIs (``runs:/<id>/...``) resolved to local files.

:func:`resolve_input` downloads an artifact into a temporary folder removed at exit; :func:`list_run_artifacts` lists
a run's artifacts (e.g. its snapshots); :func:`parse_run_ref` accepts a run id or a ``runs:/`` URI.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from shared.errors import UsageError

from .store import configure_tracking

ARTIFACT_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://", "dbfs:/", "http://",
                    "https://", "file://")


def is_artifact_uri(s: str) -> bool:
    return str(s).startswith(ARTIFACT_SCHEMES)


def _download_dir() -> str:
    """A temporary folder for downloaded artifacts, removed when the process exits."""
    import atexit
    import shutil

    d = tempfile.mkdtemp(prefix="geomlab-")
    atexit.register(shutil.rmtree, d, True)
    return d


def resolve_input(source: str, what: str = "snapshot") -> tuple[Path, str | None]:
    """Turn a local path or an MLflow artifact URI into a local file. Returns ``(path, source_run_id)``."""
    source = str(source)
    if not is_artifact_uri(source):
        p = Path(source).expanduser()
        if not p.exists():
            raise UsageError(f"{what} {p} does not exist; pass an existing file or an MLflow URI such as "
                             "runs:/<run_id>/snapshots/epoch_010.pt")
        return p, None
    import mlflow

    configure_tracking()
    run_id = None
    if source.startswith("runs:/"):
        parts = source[len("runs:/"):].split("/", 1)
        run_id = parts[0]
        try:
            mlflow.tracking.MlflowClient().get_run(run_id)
        except Exception:
            raise UsageError(f"MLflow run {run_id} not found in {mlflow.get_tracking_uri()}; check the run id "
                             "(mlflow ui lists them) or set MLFLOW_TRACKING_URI to the store that holds it") from None
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=_download_dir())
    except Exception as e:
        raise UsageError(f"{what} {source} could not be fetched ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else ''}); check the artifact path "
                         "(the run's Artifacts tab lists them)") from None
    return Path(local), run_id


def list_run_artifacts(run_id: str, path: str) -> list[str]:
    """Artifact paths directly under ``path`` of a run (e.g. all snapshots), sorted."""
    from mlflow.tracking import MlflowClient

    configure_tracking()
    try:
        files = MlflowClient().list_artifacts(run_id, path)
    except Exception:
        raise UsageError(f"MLflow run {run_id} not found or unreadable; check the run id") from None
    return sorted(f.path for f in files if not f.is_dir)


def parse_run_ref(ref: str) -> str:
    """Accept ``<run_id>`` or ``runs:/<run_id>[/...]`` and return the run id."""
    ref = str(ref)
    return ref[len("runs:/"):].split("/", 1)[0] if ref.startswith("runs:/") else ref.strip("/")


def load_json_input(source: str, what: str = "statistics file") -> tuple[Any, str | None]:
    path, run_id = resolve_input(source, what)
    try:
        return json.loads(Path(path).read_text()), run_id
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {source} is not valid JSON ({e}); pass the JSON the analysis wrote") from None
