"""MLflow tracking at the edges: one Tracker per process, artifact URIs resolved to local files.

- The default store is MLflow's own default, ``mlflow.db`` (SQLite) in the working directory, made absolute so that
  ``mlflow run projects/<name>`` (which changes directory) logs to the same store; ``MLFLOW_TRACKING_URI`` points
  elsewhere (a server).
- Inside ``mlflow run`` the run already exists (``MLFLOW_RUN_ID``) and :meth:`Tracker.start` attaches to it.
- Metrics are buffered and written in batches (one database transaction per flush, not per value).
- ``Tracker(enabled=False)`` does nothing: MPI ranks other than 0, benchmarks of the bare loop.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from shared.errors import UsageError

ARTIFACT_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://", "dbfs:/", "http://",
                    "https://", "file://")


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
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # keep stderr for our own one-line messages
    mlflow.set_tracking_uri(uri)
    return uri


@functools.lru_cache(maxsize=None)
def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out


class Tracker:
    """The one object that talks to MLflow. Safe to use when disabled (every call is a no-op)."""

    # Tags added to every run this process opens (a sweep sets the trial number here).
    default_tags: dict = {}

    def __init__(self, enabled: bool = True, flush_every: int = 2000, reopen: str | None = None):
        self.enabled = enabled
        self.reopen = reopen  # continue this existing run (e.g. a resumed sweep variant) instead of opening a new one
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._buffer: list = []
        self._flush_every = flush_every
        self._owns_run = False

    # -- runs --------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def start(self, project: str, entry_point: str, *, run_name: str | None = None, params: dict | None = None,
              tags: dict | None = None, parent_run_id: str | None = None) -> Iterator["Tracker"]:
        """Open (or attach to) a run; closes it FAILED on an exception and FINISHED otherwise."""
        if not self.enabled:
            yield self
            return
        import mlflow

        configure_tracking()
        exp = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "geomlab"
        attach = self.reopen or (os.environ.get("MLFLOW_RUN_ID") if parent_run_id is None
                                           and not mlflow.active_run() else None)
        # `mlflow run` hands its run over in MLFLOW_RUN_ID: the first run opened here takes it; later runs of the same
        # process (and its children) must not re-open it, so the variable is consumed.
        os.environ.pop("MLFLOW_RUN_ID", None)
        try:
            if attach:  # nested when another run is active (a sweep's parent)
                run = mlflow.start_run(run_id=attach, nested=mlflow.active_run() is not None)
            else:
                if not os.environ.get("MLFLOW_EXPERIMENT_ID"):
                    mlflow.set_experiment(exp)
                nested = mlflow.active_run() is not None and parent_run_id is None
                run = mlflow.start_run(run_name=run_name, parent_run_id=parent_run_id, nested=nested)
        except UsageError:
            raise
        except Exception as e:  # unreachable server, unwritable store, ...
            raise UsageError(f"cannot open an MLflow run at {mlflow.get_tracking_uri()} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''}); check MLFLOW_TRACKING_URI") from None
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        base_tags = {"project": project, "entry_point": entry_point, "git_commit": git_commit()}
        self.set_tags({**base_tags, **Tracker.default_tags, **(tags or {})})
        if params:
            self.log_params(params)
        status = "FINISHED"
        try:
            yield self
        except BaseException:
            status = "FAILED"
            raise
        finally:
            try:
                self.flush()
            finally:
                mlflow.end_run(status=status)

    # -- logging -----------------------------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        if not self.enabled or not params:
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        flat = {k: ("" if v is None else str(v))[:6000] for k, v in _flat(params).items()}
        client = MlflowClient()
        existing = client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for s in range(0, len(new), 100):
            client.log_batch(self.run_id, params=new[s:s + 100], synchronous=True)

    def set_tags(self, tags: dict) -> None:
        if self.enabled and tags:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Buffer metrics (non-finite values are skipped); written at ``flush`` or when the buffer is full."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            v = float(v)
            if math.isfinite(v):
                self._buffer.append(Metric(k.replace("@", "_"), v, ts, int(step or 0)))
        if len(self._buffer) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._buffer:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        buf, self._buffer = self._buffer, []
        for s in range(0, len(buf), 1000):
            client.log_batch(self.run_id, metrics=buf[s:s + 1000], synchronous=True)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_dict(obj, artifact_file)

    def log_figure(self, fig, artifact_file: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_figure(fig, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_text(text, artifact_file)


# ------------------------------------------------------------------------------------------------------------------
# Inputs: local paths or MLflow URIs


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
