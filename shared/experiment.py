"""Glue used by every project's ``train``-like command: data + model + MLflow run + Trainer, and snapshot inputs."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from shared.data import Data, DataConfig, load_data
from shared.errors import UsageError
from shared.files import ensure_writable_dir, load_snapshot, load_weights
from shared.models import build_model, rebuild
from shared.resume import plan_resume
from shared.tracking import Tracker, resolve_input
from shared.train import Callback, FitResult, LossFn, TrainConfig, Trainer, run_params, seed_everything


def default_out_dir(project: str, run_id: str | None) -> Path:
    """``$GEOMLAB_OUTPUT_DIR/<project>/<run id>``; by default ``outputs/`` beside the SQLite tracking store (so that
    ``mlflow run projects/<name>``, which runs inside the project folder, writes where it was launched), else in the
    working directory."""
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
                 resume_override: str | None = None) -> TrainOutcome:
    """Train ``arch`` on ``data_cfg`` inside one MLflow run; returns the run id and the fit result.

    ``model`` / ``data`` may be given pre-built (distillation, depth-limit models); otherwise they are built from
    the registry. The run logs all params, tags (project, entry point, arch, dataset, git commit), per-epoch metrics
    and snapshots; the final metrics are also logged as ``final_*``. Where it starts (``resume_from``, the snapshots
    already in ``out_dir``, ``fresh``, ``resume_override``) and in which run is decided by
    :func:`shared.resume.plan_resume`.
    """
    if out_dir is not None:
        ensure_writable_dir(out_dir)
    train_cfg.validate()
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
                       parent_run_id=parent_run_id) as t:
        plan.link(t.run_id)
        out = Path(out_dir) if out_dir else default_out_dir(project, t.run_id)
        trainer = Trainer(model, data, train_cfg, tracker=t, out_dir=out, loss_fn=loss_fn, callbacks=callbacks,
                          params=trainable, progress=progress, eval_loss_fn=eval_loss_fn,
                          snapshot_meta={"project": project, "dataset": data_cfg.dataset, **(snapshot_meta or {})})
        if plan.message:
            print(plan.message, file=sys.stderr)
        if plan.stopped:
            trainer.request_stop(plan.stopped)
        result = trainer.fit(resume_from=plan.snapshot, overrides=plan.overrides)
        if result.history:
            t.log_metrics({f"final_{k}": v for k, v in result.final.items() if k != "epoch"}, step=result.epochs_done)
    return TrainOutcome(t.run_id, result, trainer, data, out)


def load_model_from(source: str, arch: str | None = None, data: Data | None = None, project: str | None = None,
                    **options) -> tuple[nn.Module, dict, str | None]:
    """Load a snapshot (path or MLflow URI) into a model. Returns ``(model, snapshot, source_run_id)``.

    The architecture comes from the snapshot itself when it was written by geomlab; ``arch`` (plus ``data`` for the
    input shape) is needed for snapshots of the original code bases, and must agree with the snapshot otherwise.
    """
    path, run_id = resolve_input(source, "snapshot")
    snap = load_snapshot(path)
    spec = snap.get("model_spec") or {}
    if spec and (arch is None or arch == spec.get("arch")):
        model = rebuild(spec)
    elif arch is not None and data is not None:
        model = model_for(arch, data, project, **options)
    elif arch is not None and spec:
        model = build_model(arch, spec["num_classes"], spec["in_channels"], spec["input_size"], project=project,
                            **options)
    else:
        raise UsageError(f"snapshot {source} does not say which architecture it holds; pass --arch (and --dataset)")
    load_weights(model, snap)
    return model, snap, run_id
