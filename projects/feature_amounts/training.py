"""One feature_amounts network in its own MLflow run (with the out-of-memory retry), and earlier work found in MLflow.

Runs and tags (all under the MLflow experiment ``feature_amounts`` unless MLFLOW_EXPERIMENT_NAME says otherwise):

* a variant's training run: tags ``fa.role=variant``, ``fa.variant_id``, ``fa.train_key`` (hash of every setting
  that changes the result), ``fa.complete=1`` once its summary is logged; params Filters, Mean, Variance, Skew;
  metrics per epoch (the shared Trainer's ``train_acc``, ``test_acc``/``val_acc``, ...) and, at the end, once,
  ``best_val_acc``, ``best_val_train_acc`` (fractions), ``best_epoch``, ``parameters``, ``true_parameters``;
  artifact ``feature_amounts/result.json`` (the CSV row, in the original's percent); tags ``split.*`` (the micro-batch split used);
* a sweep's parent run: ``fa.role=sweep``, ``fa.sweep_key``; artifact ``feature_amounts/sweep.csv``;
* a study's parent run: ``fa.role=study``, ``fa.study``; each trial a variant run with ``fa.trial``.
"""
from __future__ import annotations

import gc
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from shared.data import Data, DataConfig
from shared.errors import UsageError
from shared.experiment import default_out_dir, run_snapshots, run_training
from shared.progress import say
from shared.tracking import Tracker
from shared.train import Callback, TrainConfig, resolve_device

from . import models as _models  # noqa: F401  (registers feature_vgg / vgg_reference)
from .callbacks import (AbortCallback, BackfillCallback, RecordCallback, SGDRCallback, SnapshotPruner, SplitCallback,
                        trainer_loss)
from .config import DEFAULT_SPLIT_CACHE, PROJECT, RESULT_JSON, FAOptions, Target, default_split_cache
from .sgdr import sgdr_options
from .splitting import AutoSplitter, MemoryFailure, SplitCache, device_name, is_oom, parse_memory


# ------------------------------------------------------------------------------------------------------------------
# One variant


@dataclass
class VariantOutcome:
    run_id: str | None
    record: dict[str, Any] | None
    error: str | None = None


def make_splitter(opts: FAOptions, batch_size: int) -> AutoSplitter:
    path = default_split_cache() if opts.split_cache == DEFAULT_SPLIT_CACHE else opts.split_cache
    cache = SplitCache(path) if path else SplitCache(None)
    return AutoSplitter(batch_size, memory_limit=parse_memory(opts.memory_limit), chunks=opts.micro_batches or None,
                        probe_steps=opts.probe_steps, cache=cache, min_micro=2 if opts.batch_norm > 0 else 1)


def train_target(target: Target, data: Data, data_cfg: DataConfig, train_cfg: TrainConfig, opts: FAOptions, *,
                 entry_point: str = "train", tags: dict | None = None, out_dir: str | Path | None = None,
                 resume_run: str | None = None, resume_from: str | None = None,
                 extra_callbacks: Sequence[Callback] = (), progress: bool = True,
                 catch_training_errors: bool = False, run_name: str | None = None, fresh: bool = False,
                 resume_override: str | None = None) -> VariantOutcome:
    """Train one network in its own MLflow run (nested under the active run, if any); returns its CSV row.

    With ``resume_run`` the existing run is continued (from ``resume_from``, a snapshot) instead of a new one opened.
    If training runs out of memory after the split was chosen (fragmentation, a cached split from another load),
    the cached split is halved and the run continued from its newest snapshot (the epoch in progress is redone).
    With ``catch_training_errors`` a UsageError raised *during* training (a diverging loss) is returned as
    ``error`` (the run is marked complete and failed) instead of raised, so that a sweep goes on.
    """
    opts.validate()
    train_cfg = replace(train_cfg, schedule="sgdr",
                        schedule_options=sgdr_options(opts.lr_wr_min, opts.lr_wr_epochs, opts.lr_wr_mul))
    splitter = make_splitter(opts, data_cfg.batch_size)
    params = {"Filters": list(target.widths), "Mean": target.mean, "Variance": target.scale, "Skew": target.skew,
              "variant_index": target.index, "variant_id": target.vid, **{f"fa.{k}": v for k, v in asdict(opts).items()}}
    all_tags = {"fa.role": "variant", "fa.variant_id": target.vid, **(tags or {})}
    model_options = {"widths": list(target.widths), "bn_eps": opts.batch_norm, "dropout": opts.dropout,
                     "init": opts.weight_init}
    while True:
        split_cb = SplitCallback(splitter)
        abort_cb = AbortCallback(opts.lr_wr_epochs, data.num_classes) if opts.abort_rule else None
        record_cb = RecordCallback(target, data.num_classes, split_cb, [c for c in (abort_cb, *extra_callbacks) if c])
        callbacks: list[Callback] = [record_cb, split_cb,
                                     SGDRCallback(opts.lr_wr_epochs, opts.lr_wr_mul)]
        if abort_cb:
            callbacks.append(abort_cb)
        callbacks += [SnapshotPruner(opts.keep_snapshots), *extra_callbacks]
        if resume_run:
            callbacks.insert(0, BackfillCallback())
        oom = None
        try:
            out = run_training(project=PROJECT, entry_point=entry_point, arch="feature_vgg", data_cfg=data_cfg,
                               train_cfg=train_cfg, model_options=model_options,
                               out_dir=str(out_dir) if out_dir else None, resume_from=resume_from,
                               fresh=fresh and resume_from is None, resume_override=resume_override,
                               callbacks=callbacks, params=params, tags=all_tags, run_name=run_name or target.vid,
                               loss_fn=trainer_loss, tracker=Tracker(reopen=resume_run) if resume_run else None,
                               data=data, progress=progress)
            return VariantOutcome(out.run_id, record_cb.record)
        except UsageError as e:
            if not (catch_training_errors and record_cb.run_id):
                raise
            _mark_failed(record_cb.run_id, str(e), memory_setting(opts, train_cfg)
                         if isinstance(e, MemoryFailure) else None)
            return VariantOutcome(record_cb.run_id, None, str(e))
        except RuntimeError as e:
            d = split_cb.decision
            if not is_oom(e) or record_cb.run_id is None:
                raise
            oom = " ".join(str(e).split())[:200]
        finally:
            if torch.cuda.is_available():  # give the next variant (or the retry) the whole GPU
                gc.collect()
                torch.cuda.empty_cache()
        # out of memory during training (outside the except block, so the failed step's tensors are released)
        gc.collect()
        if d is None or d.source == "forced" or d.micro_batch <= splitter.min_micro:
            how = "the forced split" if d is not None and d.source == "forced" else \
                f"micro-batches of {d.micro_batch}" if d is not None else "its first step"
            msg = (f"out of memory in training even with {how} ({oom}); raise --memory-limit, "
                   f"use another --device or narrower variants (--width-multiplier)")
            if not catch_training_errors:
                raise MemoryFailure(msg)
            _mark_failed(record_cb.run_id, msg, memory_setting(opts, train_cfg))
            return VariantOutcome(record_cb.run_id, None, msg)
        new = max(splitter.min_micro, math.ceil(d.micro_batch / 2))
        splitter.cache.put(d.key, {"micro_batch": new, "batch_size": d.batch_size,
                                   "chunks": math.ceil(d.batch_size / new), "peak_bytes": None})
        resume_run = record_cb.run_id
        resume_from = last_snapshot(resume_run, Path(out_dir) if out_dir else None)
        say(f"{target.vid}: out of memory while training with micro-batches of {d.micro_batch} ({oom}); "
              f"continuing run {resume_run} from {resume_from or 'the start'} with micro-batches of {new}")


def memory_setting(opts: FAOptions, train_cfg: TrainConfig) -> str:
    """What a memory failure depends on: the limit, the device (GPU model and size) and a forced split."""
    return (f"limit={parse_memory(opts.memory_limit) or 0}|device={device_name(resolve_device(train_cfg.device))}"
            f"|micro_batches={opts.micro_batches}")


def _mark_failed(run_id: str, message: str, memory: str | None = None) -> None:
    """Mark a variant run finished and failed; ``memory``: the :func:`memory_setting` it ran out of memory with
    (tag ``fa.memory_failure``), so that a sweep tries it again under another setting."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient()
    if memory is not None:
        c.set_tag(run_id, "fa.memory_failure", memory)
    c.set_tag(run_id, "fa.complete", "1")
    c.set_tag(run_id, "fa.failed", message[:4000])


# ------------------------------------------------------------------------------------------------------------------
# Finding earlier work in MLflow


def _experiment_ids() -> list[str]:
    from mlflow.tracking import MlflowClient

    return [e.experiment_id for e in MlflowClient().search_experiments()]


def _search(filter_string: str, order_latest: bool = True) -> list:
    from mlflow.tracking import MlflowClient

    ids = _experiment_ids()
    if not ids:
        return []
    return MlflowClient().search_runs(ids, filter_string=filter_string, max_results=5000,
                                      order_by=["attributes.start_time DESC"] if order_latest else None)


def load_record(run) -> dict[str, Any] | None:
    """The CSV row a finished variant run logged (None for runs that failed)."""
    import mlflow

    if run.data.tags.get("fa.failed"):
        return None
    try:
        rec = mlflow.artifacts.load_dict(f"{run.info.artifact_uri.rstrip('/')}/{RESULT_JSON}")
    except Exception:  # noqa: BLE001
        return None
    rec["RunId"] = run.info.run_id
    return rec


def last_snapshot(run_id: str, out_dir: Path | None) -> str | None:
    """The newest snapshot of a run: local folder first, then the run's MLflow artifacts."""
    local = (out_dir if out_dir is not None else default_out_dir(PROJECT, run_id)) / "snapshots"
    files = sorted(local.glob("epoch_*.pt")) if local.is_dir() else []
    if files:
        return str(files[-1])
    try:
        snaps = [uri for epoch, uri in run_snapshots(run_id) if epoch is not None]
    except UsageError:
        snaps = []
    return snaps[-1] if snaps else None
