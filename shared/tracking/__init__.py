"""MLflow tracking at the edges: one Tracker per process, artifact URIs resolved to local files.

- The default store is MLflow's own default, ``mlflow.db`` (SQLite) in the working directory, made absolute so that
  ``mlflow run projects/<name>`` (which changes directory) logs to the same store; ``MLFLOW_TRACKING_URI`` points
  elsewhere (a server). :func:`prepare_store` readies a store before the first run: a new SQLite store is created
  (Alembic migrations) by one process at a time, under a file lock beside the database, so concurrent workers never
  race; a tracking server that does not answer is a one-line error within seconds.
- Experiments: one per project (``cone_geometry``, ``hyperplane_bias``, ``depth_limit``, ``feature_amounts``; the
  root commands log to ``geomlab``, the demo to ``demo``). ``MLFLOW_EXPERIMENT_NAME`` / ``MLFLOW_EXPERIMENT_ID`` set
  by the user override it for every run of the process.
- Inside ``mlflow run`` the run already exists (``MLFLOW_RUN_ID``) and :meth:`Tracker.start` attaches to it (and gives
  it geomlab's default name unless ``mlflow run --run-name`` named it).
- Run names: ``<command>-<arch>-<dataset>[-<variant>][-s<seed>][-e<checkpoint>]-<digest>``, where the digest hashes the
  run's params and tags: two runs share a default name only when they have the same configuration.
- Metrics are buffered and written in batches (one database transaction per flush, not per value); the buffer is
  emptied only after a successful write, and flushed again when the run ends, interrupted or not.
- Ctrl-C and SIGTERM (stop requests honoured at safe points, :mod:`shared.interrupts`) end the run KILLED
  (exit 130 / 143), an error FAILED; MLflow's own log lines never reach stderr:
  every failure of the store becomes a one-line :class:`~shared.errors.UsageError` that names the path or server.
- ``Tracker(enabled=False)`` does nothing: MPI ranks other than 0, benchmarks of the bare loop.

Modules: ``store`` (tracking URI, git commit, store preparation under a lock, ``retry_busy``, experiments and the
runs view), ``errors`` (store failures as one line), ``naming`` (default run names),
``inputs`` (datasets as MLflow entities, a model's input example), ``artifacts`` (local artifact folders, hard
links), ``sources`` (local paths or MLflow URIs as inputs of a command), ``tracker`` (the Tracker). Everything is
re-exported here: import from ``shared.tracking``. None of them imports MLflow at import time.
"""
from __future__ import annotations

from .artifacts import _local_artifact_dir
from .errors import artifact_error, store_error
from .inputs import DATA_OPTIONS, EMBEDDED, _split_digest, data_inputs, example_batch
from .naming import _generated_name, default_run_name
from .sources import (ARTIFACT_SCHEMES, is_artifact_uri, list_run_artifacts, load_json_input, parse_run_ref,
                      resolve_input)
from .store import (DEMO_EXPERIMENT, EXPERIMENTS, HTTP_DEFAULTS, HTTP_PREFLIGHT, RUNS_VIEW_COLUMNS, RUNS_VIEW_KEY,
                    configure_tracking, experiment_for, git_commit, prepare_store, quiet_mlflow_logs, retry_busy,
                    runs_view_tags)
from .tracker import Tracker

__all__ = [
    "ARTIFACT_SCHEMES", "DATA_OPTIONS", "DEMO_EXPERIMENT", "EMBEDDED", "EXPERIMENTS", "HTTP_DEFAULTS", "HTTP_PREFLIGHT",
    "RUNS_VIEW_COLUMNS", "RUNS_VIEW_KEY", "Tracker", "artifact_error", "configure_tracking",
    "data_inputs", "default_run_name", "example_batch", "experiment_for", "git_commit",
    "is_artifact_uri", "list_run_artifacts", "load_json_input", "parse_run_ref", "prepare_store", "quiet_mlflow_logs",
    "resolve_input", "retry_busy", "runs_view_tags", "store_error",
    # private helpers that tests import from here
    "_generated_name", "_local_artifact_dir", "_split_digest",
]
