"""The Tracker: the one object that talks to MLflow during a command (runs, params, tags, metrics, artifacts).

- Inside ``mlflow run`` the run already exists (``MLFLOW_RUN_ID``) and :meth:`Tracker.start` attaches to it (and gives
  it geomlab's default name unless ``mlflow run --run-name`` named it).
- Metrics are buffered and written in batches (one database transaction per flush, not per value); the buffer is
  emptied only after a successful write, and flushed again when the run ends, interrupted or not.
- Ctrl-C and SIGTERM end the run KILLED, an error FAILED; opening a run, every MLflow batch and closing the run are
  critical sections (:func:`shared.interrupts.critical`): a signal never cuts them; every failure of the store is a
  one-line UsageError.
- ``Tracker(enabled=False)`` does nothing: MPI ranks other than 0, benchmarks of the bare loop.
"""
from __future__ import annotations

import contextlib
import errno
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

from shared import interrupts
from shared.errors import UsageError

from .artifacts import _link_into, _local_artifact_dir
from .errors import _cause, artifact_error, store_error
from .inputs import data_inputs
from .naming import _flat, _generated_name, default_run_name
from .store import configure_tracking, experiment_for, git_commit, prepare_store, retry_busy


class Tracker:
    """The one object that talks to MLflow. Safe to use when disabled (every call is a no-op)."""

    # Tags added to every run this process opens (a sweep sets the trial number here).
    default_tags: dict = {}
    # Open every run of the process in this experiment (a study's children stay in their parent's, also where
    # `mlflow run` put the parent in an experiment of its own); None: the usual choice (see ``start``).
    child_experiment_id: str | None = None
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
        interrupts.install()
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
        opened = False
        status = "FINISHED"
        try:
            with interrupts.critical():  # a run, once opened, is always closed (the try's finally)
                try:
                    run = self._open(mlflow, uri, attach, name, experiment, project, parent_run_id=parent_run_id,
                                     sysm=sysm, run_name=run_name)
                except UsageError:
                    raise
                except Exception as e:  # unreachable server, unwritable store, ...
                    raise store_error(e, "opening a run", uri) from None
                opened = True
                self.run_id, self.experiment_id = run.info.run_id, run.info.experiment_id
                self.artifact_uri = run.info.artifact_uri
            self._check_artifact_root()
            self.set_tags(all_tags)
            if params:
                self.log_params(params)
            yield self
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM (shared.interrupts.Interrupted)
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if opened:
                with interrupts.critical():
                    self._close(status)

    def _open(self, mlflow, uri: str, attach: str | None, name: str, experiment: str | None, project: str, *,
              parent_run_id: str | None, sysm: bool | None, run_name: str | None):
        """Start (or attach to) the MLflow run: inside a critical section of :meth:`start`."""
        if attach:  # nested when another run is active (a sweep's parent)
            prepare_store(uri=uri)
            run = mlflow.start_run(run_id=attach, nested=mlflow.active_run() is not None,
                                   log_system_metrics=sysm)
            if run_name or (not self.reopen and _generated_name(run.info.run_name)):
                mlflow.MlflowClient().update_run(run.info.run_id, name=name)
        else:
            env_name, env_id = os.environ.get("MLFLOW_EXPERIMENT_NAME"), os.environ.get("MLFLOW_EXPERIMENT_ID")
            if Tracker.child_experiment_id and not experiment:
                prepare_store(uri=uri)
                eid = Tracker.child_experiment_id
            elif experiment or env_name or not env_id:
                eid = prepare_store(experiment or env_name or experiment_for(project), uri=uri)
            else:
                prepare_store(uri=uri)
                eid = env_id
            nested = mlflow.active_run() is not None and parent_run_id is None
            run = retry_busy(lambda: mlflow.start_run(
                experiment_id=eid, run_name=name, parent_run_id=parent_run_id, nested=nested,
                log_system_metrics=sysm))
        return run

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
            with interrupts.critical():
                for s in range(0, len(new), 100):
                    retry_busy(lambda: client.log_batch(self.run_id, params=new[s:s + 100], synchronous=True))
        except Exception as e:  # noqa: BLE001
            raise store_error(e, "logging params") from None

    def set_tags(self, tags: dict) -> None:
        if self.enabled and tags:
            from mlflow.entities import RunTag
            from mlflow.tracking import MlflowClient

            try:
                with interrupts.critical():
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
                with interrupts.critical():  # the batch is written and leaves the buffer, or neither
                    retry_busy(lambda: client.log_batch(self.run_id, metrics=batch, synchronous=True))
                    del self._buffer[:len(batch)]
            except Exception as e:  # noqa: BLE001
                raise store_error(e, "logging metrics") from None

    def _artifact(self, what: str, fn) -> None:
        try:
            with interrupts.critical():
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
