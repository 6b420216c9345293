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
- Ctrl-C and SIGTERM end the run KILLED (exit 130 / 143), an error FAILED; MLflow's own log lines never reach stderr:
  every failure of the store becomes a one-line :class:`~shared.errors.UsageError` that names the path or server.
- ``Tracker(enabled=False)`` does nothing: MPI ranks other than 0, benchmarks of the bare loop.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from shared.errors import UsageError

ARTIFACT_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "s3://", "gs://", "wasbs://", "dbfs:/", "http://",
                    "https://", "file://")

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


# ------------------------------------------------------------------------------------------------------------------
# Errors of the store, as one line


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


# ------------------------------------------------------------------------------------------------------------------
# The store: created once, under a lock; experiments by name

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


# ------------------------------------------------------------------------------------------------------------------
# Run names

def _generated_name(name: str | None) -> bool:
    """Is ``name`` one of MLflow's random run names (``sedate-loon-804``)?"""
    from mlflow.utils import name_utils

    m = re.fullmatch(r"([a-z]+)-([a-z]+)-(\d+)", name or "")
    return bool(m) and m.group(1) in {w.lower() for w in name_utils._GENERATOR_PREDICATES} and \
        m.group(2) in {w.lower() for w in name_utils._GENERATOR_NOUNS}


def default_run_name(entry_point: str, params: dict | None = None, tags: dict | None = None) -> str:
    """``<command>-<arch>-<dataset>[-<variant>][-s<seed>][-e<checkpoint>]-<digest>``.

    The parts come from the run's params and tags (``arch``, ``dataset``/``data.dataset``, ``variant``,
    ``train.seed``/``seed``, a checkpoint ``epoch_NNN`` in a source path or ``checkpoint``); the digest is a hash of
    all params and tags, so that two runs share a default name only when their configuration is the same.
    """
    p = {**_flat(params or {}), **{k: v for k, v in (tags or {}).items()}}

    def first(*keys):
        for k in keys:
            v = p.get(k)
            if v not in (None, ""):
                return str(v)
        return None

    parts = [entry_point.replace("_", "-"), first("arch", "model.arch", "source_arch"),
             first("dataset", "data.dataset", "source_dataset"), first("variant", "fa.variant", "VariantId")]
    seed = first("train.seed", "seed")
    if seed is not None:
        parts.append(f"s{seed}")
    ckpt = first("checkpoint")
    if ckpt is None:
        for v in p.values():
            m = re.search(r"epoch_(\d+)", str(v))
            if m:
                ckpt = m.group(1)
                break
    if ckpt is not None:
        parts.append(f"e{ckpt}")
    config = json.dumps({k: str(v) for k, v in sorted(p.items()) if k not in ("git_commit",)}, sort_keys=True)
    parts.append(hashlib.sha1(config.encode()).hexdigest()[:6])
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", x) for x in parts if x)


# ------------------------------------------------------------------------------------------------------------------
# Signals: SIGTERM (schedulers, preemption) is handled like Ctrl-C


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; ends runs KILLED like Ctrl-C, exit code 143."""

    exit_code = 143


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def install_sigterm_handler() -> None:
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread; installed once, and only where
    nobody installed another handler."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)


# ------------------------------------------------------------------------------------------------------------------
# Datasets and models as MLflow entities

DATA_OPTIONS = ("noise", "noise_seed", "pixel_shuffle", "subsample_classes", "class_sample_seed", "split",
                "stratified", "split_seed", "train_fraction", "resize", "channels", "normalize", "augmentation")
EMBEDDED = ("digits", "sin", "constant")


def _split_digest(loader) -> str:
    """sha256 of a split's actual arrays (images, labels, pixel permutations), or of its file list when streamed."""
    h = hashlib.sha256()
    x, y = getattr(loader, "x", None), getattr(loader, "y", None)
    if x is not None and y is not None:
        for t in (x, y, getattr(loader, "perms", None)):
            if t is not None:
                h.update(str((tuple(t.shape), str(t.dtype))).encode())
                h.update(t.contiguous().cpu().numpy().tobytes())
    else:  # streamed (ImageFolder subset): the files and labels it reads
        ds = getattr(loader, "dataset", None)
        base = getattr(ds, "dataset", ds)
        idx = getattr(ds, "indices", range(len(getattr(base, "samples", []))))
        samples = getattr(base, "samples", [])
        for i in idx:
            path, _ = samples[i]
            with contextlib.suppress(OSError):
                h.update(f"{path}:{os.path.getsize(path)}".encode())
        if getattr(loader, "labels", None) is not None:
            h.update(loader.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def data_inputs(data) -> list[tuple[Any, str, dict]]:
    """The MLflow datasets (one per split: training, validation, test) of a :class:`shared.data.Data`, with their
    context and input tags; digests are cached on the object (a sweep reuses it)."""
    cached = getattr(data, "_mlflow_inputs", None)
    if cached is not None:
        return cached
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset import Dataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    cfg = data.config
    if cfg.dataset in EMBEDDED:
        source = CodeDatasetSource({"mlflow.source.name": f"shared.data:{cfg.dataset}", "embedded": "true"})
    else:
        source = resolve_dataset_source(str(Path(cfg.data_path).expanduser().resolve()))

    class SplitDataset(Dataset):
        """One split of a geomlab dataset: the digest is computed from the arrays it holds."""

        def __init__(self, name, digest, profile):
            self._profile = profile
            super().__init__(source=source, name=name, digest=digest)

        def _compute_digest(self) -> str:  # always given
            return self._digest

        @property
        def profile(self):
            return self._profile

        @property
        def schema(self):
            return None

        def to_dict(self) -> dict:
            d = super().to_dict()
            d["profile"] = json.dumps(self._profile)
            return d

    options = {f"data.{k}": str(getattr(cfg, k)) for k in DATA_OPTIONS if hasattr(cfg, k)}
    out = []
    for context, loader in (("training", data.train), ("validation", data.val), ("test", data.test)):
        if loader is None:
            continue
        n = int(getattr(loader, "num_samples", 0))
        profile = {"num_rows": n, "input_shape": "x".join(map(str, data.input_shape)),
                   "num_classes": data.num_classes, **{k: v for k, v in data.info.items() if k.endswith("_size")}}
        ds = SplitDataset(cfg.dataset, _split_digest(loader), profile)
        out.append((ds, context, {"split_size": str(n), **options}))
    data._mlflow_inputs = out
    return out


def example_batch(data, n: int = 2):
    """``n`` inputs of the test split (test-time transforms): the input example of a logged model."""
    x, _ = next(iter(data.test))
    return x[:n]


# ------------------------------------------------------------------------------------------------------------------


class Tracker:
    """The one object that talks to MLflow. Safe to use when disabled (every call is a no-op)."""

    # Tags added to every run this process opens (a sweep sets the trial number here).
    default_tags: dict = {}
    # Sample system metrics (MLflow's own sampler: CPU, memory, disk, network, GPU when present) in every run of the
    # process (``--system-metrics``); None: MLflow's MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING decides.
    system_metrics: bool | None = None

    def __init__(self, enabled: bool = True, flush_every: int = 2000, reopen: str | None = None):
        self.enabled = enabled
        self.reopen = reopen  # continue this existing run (e.g. a resumed sweep variant) instead of opening a new one
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.artifact_uri: str | None = None
        self._buffer: list = []
        self._flush_every = flush_every
        self._owns_run = False

    # -- runs --------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def start(self, project: str, entry_point: str, *, run_name: str | None = None, params: dict | None = None,
              tags: dict | None = None, parent_run_id: str | None = None, experiment: str | None = None,
              system_metrics: bool | None = None) -> Iterator["Tracker"]:
        """Open (or attach to) a run; closes it KILLED on Ctrl-C / SIGTERM, FAILED on an exception, else FINISHED.

        The run goes to ``experiment``, else the user's MLFLOW_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_ID, else the
        project's experiment; without ``run_name`` it gets :func:`default_run_name`.
        """
        install_sigterm_handler()
        if not self.enabled:
            yield self
            return
        import mlflow

        uri = configure_tracking()
        from_mlflow_run = "MLFLOW_RUN_ID" in os.environ
        attach = self.reopen or (os.environ.get("MLFLOW_RUN_ID") if parent_run_id is None
                                           and not mlflow.active_run() else None)
        # `mlflow run` hands its run over in MLFLOW_RUN_ID (with its experiment in MLFLOW_EXPERIMENT_ID): the first
        # run opened here takes it; later runs of the same process (and its children) must not re-open it, and go to
        # their own project's experiment, so both variables are consumed.
        os.environ.pop("MLFLOW_RUN_ID", None)
        if from_mlflow_run:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        all_tags = {"project": project, "entry_point": entry_point, "git_commit": git_commit(),
                    **Tracker.default_tags, **(tags or {})}
        name = run_name or self._name_for(entry_point, params, all_tags)
        sysm = system_metrics if system_metrics is not None else Tracker.system_metrics
        try:
            if attach:  # nested when another run is active (a sweep's parent)
                prepare_store(uri=uri)
                run = mlflow.start_run(run_id=attach, nested=mlflow.active_run() is not None,
                                       log_system_metrics=sysm)
                if run_name or (not self.reopen and _generated_name(run.info.run_name)):
                    mlflow.MlflowClient().update_run(run.info.run_id, name=name)
            else:
                env_name, env_id = os.environ.get("MLFLOW_EXPERIMENT_NAME"), os.environ.get("MLFLOW_EXPERIMENT_ID")
                if experiment or env_name or not env_id:
                    eid = prepare_store(experiment or env_name or experiment_for(project), uri=uri)
                else:
                    prepare_store(uri=uri)
                    eid = env_id
                nested = mlflow.active_run() is not None and parent_run_id is None
                run = retry_busy(lambda: mlflow.start_run(
                    experiment_id=eid, run_name=name, parent_run_id=parent_run_id, nested=nested,
                    log_system_metrics=sysm))
        except UsageError:
            raise
        except Exception as e:  # unreachable server, unwritable store, ...
            raise store_error(e, "opening a run", uri) from None
        self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
        self.artifact_uri = run.info.artifact_uri
        status = "FINISHED"
        try:
            self._check_artifact_root()
            self.set_tags(all_tags)
            if params:
                self.log_params(params)
            yield self
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM (Terminated)
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            self._close(status)

    def _name_for(self, entry_point: str, params: dict | None, tags: dict) -> str:
        extra = {}
        src = tags.get("source_run_id")
        if src and not (tags.get("arch") and tags.get("dataset")):
            # an analysis of a training run: name it after the run's architecture and dataset
            with contextlib.suppress(Exception):
                from mlflow.tracking import MlflowClient

                st = MlflowClient().get_run(str(src)).data.tags
                extra = {"source_arch": st.get("arch"), "source_dataset": st.get("dataset")}
        return default_run_name(entry_point, params, {**tags, **{k: v for k, v in extra.items() if v}})

    def _close(self, status: str) -> None:
        """Flush, then end the run with ``status``; a second Ctrl-C or a store failure here still ends the run."""
        import mlflow

        raising = status != "FINISHED"  # an exception is on its way out: it is the one the user sees
        err: BaseException | None = None
        for attempt in range(3):
            try:
                self.flush()
                break
            except KeyboardInterrupt:
                status = "KILLED"
                continue  # try once more: nothing logged may be lost
            except UsageError as e:
                err = e
                status = "FAILED"
                break
        try:
            retry_busy(lambda: mlflow.end_run(status=status))
        except Exception as e:  # noqa: BLE001
            err = err or store_error(e, "ending the run")
            with contextlib.suppress(Exception):
                mlflow.tracking.fluent._active_run_stack.get().clear()
        if err is not None and not raising:
            raise err

    def _check_artifact_root(self) -> None:
        """A local artifact root must be writable before the work starts (not at the first snapshot)."""
        local = _local_artifact_dir(self.artifact_uri)
        if local is None:
            return
        try:
            local.mkdir(parents=True, exist_ok=True)
            if not os.access(local, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(local))
        except OSError as e:
            raise artifact_error(e, "opening the run", str(local)) from None

    # -- logging -----------------------------------------------------------------------------------------------
    def log_params(self, params: dict) -> None:
        if not self.enabled or not params:
            return
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        flat = {k: ("" if v is None else str(v))[:6000] for k, v in _flat(params).items()}
        try:
            client = MlflowClient()
            existing = client.get_run(self.run_id).data.params
            new = [Param(k, v) for k, v in flat.items() if k not in existing]
            for s in range(0, len(new), 100):
                retry_busy(lambda: client.log_batch(self.run_id, params=new[s:s + 100], synchronous=True))
        except Exception as e:  # noqa: BLE001
            raise store_error(e, "logging params") from None

    def set_tags(self, tags: dict) -> None:
        if self.enabled and tags:
            from mlflow.entities import RunTag
            from mlflow.tracking import MlflowClient

            try:
                retry_busy(lambda: MlflowClient().log_batch(
                    self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True))
            except Exception as e:  # noqa: BLE001
                raise store_error(e, "setting tags") from None

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
        """Write the buffered metrics; a batch leaves the buffer only once it is written (an interrupt or a failure
        during the write keeps it for the next flush)."""
        if not self.enabled or not self._buffer:
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        while self._buffer:
            batch = self._buffer[:1000]
            try:
                retry_busy(lambda: client.log_batch(self.run_id, metrics=batch, synchronous=True))
            except Exception as e:  # noqa: BLE001
                raise store_error(e, "logging metrics") from None
            del self._buffer[:len(batch)]

    def _artifact(self, what: str, fn) -> None:
        try:
            fn()
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001
            if isinstance(e, OSError) or _local_artifact_dir(self.artifact_uri) is not None:
                raise artifact_error(e, what, _local_artifact_dir(self.artifact_uri) or self.artifact_uri) from None
            raise store_error(e, what) from None

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file. A local artifact store gets a hard link to it when it is on the same file system (snapshots
        are then stored once on disk, in ``--out-dir`` and under the run's artifacts), else a copy."""
        if not self.enabled:
            return
        import mlflow

        def put():
            local = _local_artifact_dir(self.artifact_uri)
            if local is not None and _link_into(Path(path), local / (artifact_path or "")):
                return
            mlflow.log_artifact(str(path), artifact_path=artifact_path)
        self._artifact(f"logging {Path(path).name}", put)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        if self.enabled:
            import mlflow

            self._artifact(f"logging {artifact_file}", lambda: mlflow.log_dict(obj, artifact_file))

    def log_figure(self, fig, artifact_file: str) -> None:
        if self.enabled:
            import mlflow

            self._artifact(f"logging {artifact_file}", lambda: mlflow.log_figure(fig, artifact_file))

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            import mlflow

            self._artifact(f"logging {artifact_file}", lambda: mlflow.log_text(text, artifact_file))

    def log_data(self, data) -> None:
        """Log the dataset a run reads as MLflow inputs (``mlflow.log_inputs``): one per split, with its digest,
        source, size and the options that change the data as input tags."""
        if not self.enabled:
            return
        import mlflow

        import warnings

        try:
            with warnings.catch_warnings():  # MLflow warns that a local source "can be interpreted in multiple ways"
                warnings.simplefilter("ignore", UserWarning)
                items = data_inputs(data)
            retry_busy(lambda: mlflow.log_inputs(datasets=[d for d, _, _ in items], contexts=[c for _, c, _ in items],
                              tags_list=[t for _, _, t in items]))
        except Exception as e:  # noqa: BLE001
            raise store_error(e, "logging the dataset") from None

    def log_model(self, model, example) -> str | None:
        """Log ``model`` with ``mlflow.pytorch.log_model`` as ``model`` (``runs:/<id>/model``), with a signature
        inferred from ``example`` (a batch of inputs) and that example; returns the model URI."""
        if not self.enabled:
            return None
        import copy

        import mlflow
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        import pickle
        import sys

        try:
            m = copy.deepcopy(model).cpu().eval()
            x = example.detach().cpu()
            with torch.inference_mode():
                y = m(x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            sig = infer_signature(x.numpy(), y.detach().numpy())
        except Exception as e:  # noqa: BLE001 - a model that cannot run on its example is reported, not fatal
            print(f"warning: the final network is not logged as an MLflow model ({type(e).__name__}: "
                  f"{_cause(e)[:120]}); its snapshots are logged as usual", file=sys.stderr)
            return None
        try:
            info = mlflow.pytorch.log_model(m, name="model", signature=sig, input_example=x.numpy(),
                                            serialization_format="pickle",
                                            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
        except (pickle.PicklingError, TypeError, AttributeError) as e:  # an unpicklable module: reported, not fatal
            print(f"warning: the final network is not logged as an MLflow model ({type(e).__name__}: "
                  f"{_cause(e)[:120]}); its snapshots are logged as usual", file=sys.stderr)
            return None
        except Exception as e:  # noqa: BLE001
            if isinstance(e, OSError):
                raise artifact_error(e, "logging the model", str(_local_artifact_dir(self.artifact_uri))) from None
            raise store_error(e, "logging the model") from None
        return info.model_uri


def _local_artifact_dir(uri: str | None) -> Path | None:
    """The folder of a local artifact URI (``file://...`` or a plain path), None for remote stores."""
    if not uri:
        return None
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(uri).path))
    if "://" in uri or uri.startswith(("mlflow-artifacts:", "dbfs:", "runs:", "models:")):
        return None
    return Path(uri)


def _link_into(src: Path, dest_dir: Path) -> bool:
    """Hard-link ``src`` as ``dest_dir/<name>`` (atomically replacing it); False where links are impossible."""
    dest = dest_dir / src.name
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".{src.name}.{os.getpid()}.link"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.link(src, tmp)
    except OSError as e:
        if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            return False  # another file system: MLflow copies it
        raise
    os.replace(tmp, dest)
    return True


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
