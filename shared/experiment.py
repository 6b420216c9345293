"""Glue used by every project's ``train``-like command: data + model + MLflow run + Trainer, and snapshot inputs.

- :func:`default_out_dir`: the one rule for where a run writes its local files;
- :func:`run_ref`, :func:`run_snapshots`, :func:`resolve_snapshot`: a run id or ``runs:/<id>`` to its snapshots;
- :func:`read_snapshot`, :func:`load_model_from`, :func:`model_from_snapshot`: a snapshot (path, URI or run) to a
  model; snapshots without a ``model_spec`` (the original code bases') go through a project's ``original`` hook.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from torch import nn

from shared.data import Data, DataConfig, load_data
from shared.errors import UsageError
from shared.files import ensure_writable_dir, load_snapshot, load_weights
from shared.models import build_model, rebuild
from shared.resume import plan_resume
from shared.tracking import Tracker, example_batch, is_artifact_uri, list_run_artifacts, resolve_input
from shared.train import (OPTIMIZERS, SCHEDULES, Callback, FitResult, LossFn, TrainConfig, Trainer, resolve_device,
                          run_params, seed_everything)


def default_out_dir(project: str, run_id: str | None) -> Path:
    """``$GEOMLAB_OUTPUT_DIR/<project>/<run id>``; by default ``outputs/`` beside the SQLite tracking store (so that
    ``mlflow run projects/<name>``, which runs inside the project folder, writes where it was launched), else in the
    working directory. ``run_id`` may also be a stable key of resumable work (a landscape render's source)."""
    base = os.environ.get("GEOMLAB_OUTPUT_DIR")
    if not base:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        base = str(Path(uri[len("sqlite:///"):]).parent / "outputs") if uri.startswith("sqlite:////") else "outputs"
    return Path(base) / project / (run_id or "local")


def model_for(arch: str | None, data: Data, project: str | None = None, **options) -> nn.Module:
    """Build ``arch`` for ``data`` (classes, channels and spatial size taken from the data)."""
    shape = data.input_shape
    in_channels = shape[0]
    size = (shape[1] if shape[1] == shape[2] else tuple(shape[1:])) if len(shape) == 3 else 1
    return build_model(arch, data.num_classes, in_channels, size, project=project, **options)


@dataclass
class TrainOutcome:
    run_id: str | None
    result: FitResult
    trainer: Trainer
    data: Data
    out_dir: Path


def run_training(*, project: str, entry_point: str, arch: str | None, data_cfg: DataConfig, train_cfg: TrainConfig,
                 model_options: dict | None = None, out_dir: str | None = None, resume_from: str | None = None,
                 callbacks: Iterable[Callback] = (), loss_fn: LossFn | None = None, params: dict | None = None,
                 tags: dict | None = None, run_name: str | None = None, parent_run_id: str | None = None,
                 tracker: Tracker | None = None, model: nn.Module | None = None, data: Data | None = None,
                 trainable: Iterable[nn.Parameter] | None = None, progress: bool = True,
                 snapshot_meta: dict | None = None, eval_loss_fn: LossFn | None = None, fresh: bool = False,
                 resume_override: str | None = None, system_metrics: bool | None = None) -> TrainOutcome:
    """Train ``arch`` on ``data_cfg`` inside one MLflow run; returns the run id and the fit result.

    ``model`` / ``data`` may be given pre-built (distillation, depth-limit models); otherwise they are built from
    the registry. The run logs all params, tags (project, entry point, arch, dataset, git commit), the dataset
    (``mlflow.log_input``, one input per split), per-epoch metrics, snapshots and the final network as an MLflow
    model (``runs:/<id>/model``). Every option is checked before the run is created. Where it starts
    (``resume_from``, the snapshots already in ``out_dir``, ``fresh``, ``resume_override``) and in which run is
    decided by :func:`shared.resume.plan_resume`.
    """
    if out_dir is not None:
        ensure_writable_dir(out_dir)
    check_train_options(train_cfg)
    data_cfg.validate()
    data = data or load_data(data_cfg, seed=train_cfg.seed)
    seed_everything(train_cfg.seed)
    model = model if model is not None else model_for(arch, data, project, **(model_options or {}))
    plan = plan_resume(out_dir=out_dir, resume_from=resume_from, fresh=fresh, resume_override=resume_override,
                       train_cfg=train_cfg, data_cfg=data.config, model=model)
    tracker = tracker or Tracker()
    if plan.reopen and tracker.reopen is None:
        tracker.reopen = plan.reopen
    all_params = run_params(train_cfg, data, arch=arch, **{f"model.{k}": v for k, v in (model_options or {}).items()},
                            **(params or {}))
    all_tags = {"arch": arch, "dataset": data_cfg.dataset, **(tags or {})}
    all_tags.update(plan.tags())
    with tracker.start(project, entry_point, run_name=run_name, params=all_params, tags=all_tags,
                       parent_run_id=parent_run_id, system_metrics=system_metrics) as t:
        plan.link(t.run_id)
        t.log_data(data)
        out = Path(out_dir) if out_dir else default_out_dir(project, t.run_id)
        trainer = Trainer(model, data, train_cfg, tracker=t, out_dir=out, loss_fn=loss_fn, callbacks=callbacks,
                          params=trainable, progress=progress, eval_loss_fn=eval_loss_fn,
                          snapshot_meta={"project": project, "dataset": data_cfg.dataset, **(snapshot_meta or {})})
        if plan.message:
            print(plan.message, file=sys.stderr)
        if plan.stopped:
            trainer.request_stop(plan.stopped)
        result = trainer.fit(resume_from=plan.snapshot, overrides=plan.overrides)
        t.log_model(trainer.model, example_batch(data))
    return TrainOutcome(t.run_id, result, trainer, data, out)


def check_train_options(cfg: TrainConfig) -> None:
    """Everything about the training options that can be wrong, checked before a run exists."""
    cfg.validate()
    if cfg.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {cfg.epochs}; a run trains at least one epoch")
    OPTIMIZERS.get(cfg.optimizer)
    SCHEDULES.get(cfg.schedule)
    resolve_device(cfg.device)


# ------------------------------------------------------------------------------------------------------------------
# Snapshot inputs: runs, URIs and paths

RUN_ID = re.compile(r"[0-9a-f]{32}")
SNAPSHOT_NAME = re.compile(r"epoch_(\d+)\.pt")


def is_run_id(text: str) -> bool:
    """Whether ``text`` has the form of an MLflow run id (32 hex digits)."""
    return RUN_ID.fullmatch(str(text)) is not None


def run_ref(source: str) -> str | None:
    """The run id when ``source`` names a whole MLflow run (``<run id>`` or ``runs:/<run id>``), else None.

    A local path that exists is never a run."""
    s = str(source)
    if s.startswith("runs:/"):
        rest = s[len("runs:/"):].strip("/")
        return rest if rest and "/" not in rest else None
    return s if is_run_id(s) and not Path(s).exists() else None


def snapshot_epoch(name: str) -> int | None:
    """Completed epochs of a geomlab snapshot file name (``epoch_NNN.pt``), None for other names."""
    m = SNAPSHOT_NAME.fullmatch(Path(name).name)
    return int(m.group(1)) if m else None


def run_snapshots(run_id: str) -> list[tuple[int | None, str]]:
    """``(epoch, URI)`` of every snapshot a run logged under ``snapshots/``, by epoch (names that are not
    ``epoch_NNN.pt`` last)."""
    arts = [a for a in list_run_artifacts(run_id, "snapshots") if a.endswith((".pt", ".tar"))]
    found = [(snapshot_epoch(a), f"runs:/{run_id}/{a}") for a in arts]
    return sorted(found, key=lambda t: (t[0] if t[0] is not None else 10 ** 9, t[1]))


def resolve_snapshot(source: str, what: str = "snapshot") -> str:
    """A run (``<run id>`` or ``runs:/<run id>``) becomes its last snapshot's URI; paths and artifact URIs pass."""
    rid = run_ref(source)
    if rid is None:
        return str(source)
    snaps = run_snapshots(rid)
    if not snaps:
        raise UsageError(f"MLflow run {rid} has no snapshots (snapshots/epoch_NNN.pt); pass a {what} file or URI, or "
                         "the id of a training run")
    return snaps[-1][1]


def read_snapshot(source: str, what: str = "snapshot") -> tuple[dict, str | None]:
    """Load a snapshot (path, artifact URI or run); returns ``(snapshot, source_run_id)``. The temporary copy of a
    downloaded artifact is deleted once read (a run's snapshots can be large and many)."""
    source = resolve_snapshot(source, what)
    path, run_id = resolve_input(source, what)
    try:
        return load_snapshot(path), run_id
    finally:
        if is_artifact_uri(source):
            tmp = Path(tempfile.gettempdir()).resolve()
            top = Path(path).resolve()
            while top.parent != tmp and top.parent != top:
                top = top.parent
            if top.parent == tmp and top.name.startswith("geomlab-"):
                shutil.rmtree(top, ignore_errors=True)


# builds the model of a snapshot without a model_spec and loads its weights: original(snapshot, arch, data)
OriginalLoader = Callable[[dict, str, "Data | None"], nn.Module]


def model_from_snapshot(snap: dict, arch: str | None = None, data: Data | None = None, project: str | None = None,
                        *, original: OriginalLoader | None = None, source: str = "", **options) -> nn.Module:
    """The network a snapshot holds, with its weights.

    geomlab snapshots rebuild themselves (``arch``, when given, must agree). Others (the original code bases') need
    ``arch``: the project's ``original`` hook builds them (and converts their weights); without a hook ``arch`` is
    built for ``data``.
    """
    source = source or snap.get("path", "")
    spec = snap.get("model_spec") or {}
    if spec:
        if arch and arch != spec.get("arch"):
            raise UsageError(f"snapshot {source} was written for architecture {spec.get('arch')!r}, not {arch!r}; drop "
                             "--arch (geomlab snapshots know their architecture) or pass the right snapshot")
        model = rebuild(spec)
    elif not arch:
        raise UsageError(f"snapshot {source} does not say which architecture it holds (a checkpoint of the original "
                         "code?); pass --arch and --dataset")
    elif original is not None:
        return original(snap, arch, data)
    elif data is not None:
        model = model_for(arch, data, project, **options)
    else:
        raise UsageError(f"snapshot {source} does not say which architecture it holds; pass --arch and --dataset")
    load_weights(model, snap)
    return model


def load_model_from(source: str, arch: str | None = None, data: Data | None = None, project: str | None = None,
                    *, original: OriginalLoader | None = None, **options) -> tuple[nn.Module, dict, str | None]:
    """Load a snapshot (path, MLflow URI, or a run: its last snapshot) into a model.
    Returns ``(model, snapshot, source_run_id)``; see :func:`model_from_snapshot`."""
    snap, run_id = read_snapshot(source)
    return model_from_snapshot(snap, arch, data, project, original=original, source=str(source), **options), snap, run_id
