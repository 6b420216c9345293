"""The edges of feature_amounts: training variants on the shared Trainer, resumable sweeps, Optuna studies, plots.

Everything that talks to MLflow, Optuna or the file system lives here; the science is in ``variants``, ``models``,
``sgdr``, ``splitting``, ``results`` and ``plots``.

Runs and tags (all under the MLflow experiment ``geomlab`` unless MLFLOW_EXPERIMENT_NAME says otherwise):

* a variant's training run: tags ``fa.role=variant``, ``fa.variant_id``, ``fa.train_key`` (hash of every setting
  that changes the result), ``fa.complete=1`` once its summary is logged; params Filters, Mean, Variance, Skew;
  metrics per epoch (the shared Trainer's ``train_acc``, ``test_acc``/``val_acc``, ...) and, at the end, Parameters,
  BestVal, BestValsTrain, BestEpoch, LastValPrec, LastTrainPrec; artifact ``feature_amounts/result.json`` (the CSV
  row); tags ``split.*`` (the micro-batch split used);
* a sweep's parent run: ``fa.role=sweep``, ``fa.sweep_key``; artifact ``feature_amounts/sweep.csv``;
* a study's parent run: ``fa.role=study``, ``fa.study``; each trial a variant run with ``fa.trial``.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from shared.data import Data, DataConfig, load_data
from shared.errors import UsageError, check
from shared.experiment import default_out_dir, run_training
from shared.files import atomic_write, ensure_writable_dir
from shared.plotting import save_figure
from shared.tracking import Tracker, configure_tracking, list_run_artifacts, parse_run_ref, resolve_input
from shared.train import Callback, TrainConfig

from . import models as _models  # noqa: F401  (registers feature_vgg / vgg_reference)
from .models import INITS, count_parameters
from .results import from_csv, record_from_history, to_csv
from .sgdr import cycle_of, sgdr_options
from .splitting import AutoSplitter, SplitCache, is_oom, parse_memory
from .variants import (Variant, base_widths, capacity, check_depth, generate_variants, invalid_reason, make_variant,
                       widths_from_bins)

PROJECT = "feature_amounts"
RESULT_JSON = "feature_amounts/result.json"
SWEEP_CSV = "feature_amounts/sweep.csv"
def default_split_cache() -> str:
    """``$GEOMLAB_CACHE/feature_amounts_splits.json`` (default ``~/.cache/geomlab/``): independent of the working
    folder, which ``mlflow run`` changes."""
    return str(Path(os.environ.get("GEOMLAB_CACHE", Path.home() / ".cache" / "geomlab")) / "feature_amounts_splits.json")


DEFAULT_SPLIT_CACHE = "default"
IMAGE_AUGMENTED = ("cifar10", "cifar100", "imagenet")


# ------------------------------------------------------------------------------------------------------------------
# Options


@dataclass
class FAOptions:
    """The project's own options (the original's defaults)."""

    vgg_depth: int = 16
    patch_size: int = 32
    width_multiplier: float = 1.0
    batch_norm: float = 1e-4  # BN epsilon; 0 removes BatchNorm
    dropout: float = 0.5
    weight_init: str = "kaiming-normal"
    lr_wr_epochs: int = 10
    lr_wr_mul: int = 2
    lr_wr_min: float = 1e-5
    abort_rule: bool = True
    memory_limit: str | None = None
    micro_batches: int = 0  # 0: automatic; k: force k micro-batches
    split_cache: str | None = DEFAULT_SPLIT_CACHE
    probe_steps: int = 1
    keep_snapshots: str = "last"  # last | all | none

    def validate(self) -> None:
        check_depth(self.vgg_depth)
        check(self.patch_size >= 1, f"--patch-size must be a positive number of pixels, got {self.patch_size}")
        check(self.width_multiplier > 0, f"--width-multiplier must be > 0 (e.g. 0.05 for quick runs), got "
              f"{self.width_multiplier}")
        check(self.batch_norm >= 0, f"--batch-norm is the BatchNorm epsilon (>= 0; 0 disables it), got {self.batch_norm}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(self.weight_init in INITS, f"unknown --init {self.weight_init!r}; use one of: {', '.join(INITS)}")
        check(self.lr_wr_epochs >= 1 and self.lr_wr_mul >= 1,
              f"--lr-wr-epochs and --lr-wr-mul must be >= 1, got {self.lr_wr_epochs}, {self.lr_wr_mul}")
        check(self.lr_wr_min >= 0, f"--lr-wr-min must be >= 0, got {self.lr_wr_min}")
        check(self.micro_batches >= 0, f"--micro-batches must be 0 (automatic) or a number of micro-batches, got "
              f"{self.micro_batches}")
        check(self.probe_steps >= 1, f"--probe-steps must be >= 1, got {self.probe_steps}")
        check(self.keep_snapshots in ("last", "all", "none"),
              f"unknown --keep-snapshots {self.keep_snapshots!r}; use last, all or none")
        parse_memory(self.memory_limit)

    def result_settings(self) -> dict[str, Any]:
        """The options that change what is trained (execution details such as memory and caches excluded)."""
        d = asdict(self)
        for k in ("memory_limit", "micro_batches", "split_cache", "probe_steps", "keep_snapshots"):
            d.pop(k)
        return d


def make_data_config(dataset: str, *, data_path: str = "./data", patch_size: int = 32, normalize: str = "none",
                     augmentation: bool | None = None, channels: int = 0, batch_size: int = 128, split: float = 0.0,
                     split_seed: int = 0, train_fraction: float = 1.0, subsample_classes: int = 0,
                     verify_checksums: bool = True, download: bool = False, num_workers: int = 0) -> DataConfig:
    """The original's data handling on the shared loaders: resize to the patch size, crop padding ceil(0.1 patch),
    crop + flip augmentation for CIFAR / ImageNet by default, no normalization by default; evaluation batches of
    the training batch size (as the original's loaders; wide variants would not fit 1000 images at once)."""
    check(patch_size >= 1, f"--patch-size must be positive, got {patch_size}")
    aug = dataset in IMAGE_AUGMENTED if augmentation is None else augmentation
    return DataConfig(dataset=dataset, data_path=data_path, batch_size=batch_size, eval_batch_size=batch_size,
                      normalize=normalize,
                      augmentation=aug, crop_padding=math.ceil(0.1 * patch_size), resize=patch_size,
                      channels=channels, split=split, split_seed=split_seed, train_fraction=train_fraction,
                      subsample_classes=subsample_classes, verify_checksums=verify_checksums, download=download,
                      num_workers=num_workers)


def make_train_config(*, epochs: int = 150, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                      nesterov: bool = False, seed: int = 0, device: str = "auto",
                      snapshot_every: int = 1) -> TrainConfig:
    """SGD (its SGDR schedule, the ``sgdr`` of ``SCHEDULES``, is set from the FAOptions by :func:`train_target`); a
    snapshot every epoch so that an interrupted run resumes where it stopped."""
    return TrainConfig(epochs=epochs, optimizer="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay,
                       nesterov=nesterov, schedule="none", seed=seed, device=device, snapshot_every=snapshot_every,
                       snapshot_init=True)


# ------------------------------------------------------------------------------------------------------------------
# What gets trained


@dataclass(frozen=True)
class Target:
    """One network to train: a skew-normal variant, the reference VGG, or custom widths."""

    vid: str
    widths: tuple[int, ...]
    index: int | None = None
    mean: float | None = None
    scale: float | None = None
    skew: float | None = None

    @classmethod
    def of(cls, v: Variant) -> "Target":
        return cls(v.id, tuple(v.widths), v.index, v.mean, v.scale, v.skew)


def reference_target(opts: FAOptions) -> Target:
    """The unmodified VGG-D (VGG-``depth``), scaled by the width multiplier like the variants."""
    base = base_widths(opts.vgg_depth, opts.patch_size)
    widths = tuple(max(2, math.ceil(w * opts.width_multiplier)) for w in base) if opts.width_multiplier != 1 \
        else tuple(base)
    return Target(f"vgg{opts.vgg_depth}_reference", widths)


def variant_list(opts: FAOptions) -> list[Variant]:
    return list(_variants_cached(opts.vgg_depth, opts.patch_size, opts.width_multiplier))


@functools.lru_cache(maxsize=8)
def _variants_cached(depth: int, patch_size: int, multiplier: float) -> tuple[Variant, ...]:
    return tuple(generate_variants(depth, patch_size, multiplier))


def parse_widths(text: str, opts: FAOptions) -> Target:
    try:
        widths = tuple(int(w) for w in re.split(r"[,\s]+", text.strip()) if w)
    except ValueError:
        raise UsageError(f"--widths must be comma-separated integers, got {text!r}") from None
    need = opts.vgg_depth - 1
    check(len(widths) == need, f"--widths needs {need} entries for --vgg-depth {opts.vgg_depth} "
          f"({need - 2} convs + 2 hidden linear layers), got {len(widths)}")
    check(min(widths) >= 1, "every width must be >= 1")
    return Target("custom_" + hashlib.sha1(",".join(map(str, widths)).encode()).hexdigest()[:8], widths)


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_key(data_cfg: DataConfig, train_cfg: TrainConfig, opts: FAOptions) -> str:
    """Hash of everything that determines a variant's result (not paths, devices, memory or snapshot settings)."""
    d = asdict(data_cfg)
    for k in ("data_path", "verify_checksums", "download", "num_workers", "eval_batch_size"):
        d.pop(k, None)
    t = asdict(train_cfg)
    for k in ("device", "snapshot_every", "snapshot_all_until", "snapshot_init", "eval_every", "eval_test",
              "channels_last"):
        t.pop(k, None)
    if t.get("precision") == "fp32":  # keys of sweeps started before --precision existed stay valid
        t.pop("precision")
    return _hash({"data": d, "train": t, "fa": opts.result_settings()})


# ------------------------------------------------------------------------------------------------------------------
# Loss and callbacks


@contextlib.contextmanager
def _bn_eval(model: torch.nn.Module):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()


def chunk_loss(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output, y)


def trainer_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Cross entropy; a training chunk of a single sample (only the last, partial batch of an epoch can produce
    one) goes through BatchNorm with its running statistics, where PyTorch (and the original) would fail."""
    if model.training and x.shape[0] == 1:
        with _bn_eval(model):
            out = model(x)
    else:
        out = model(x)
    return F.cross_entropy(out, y), out



class SGDRCallback(Callback):
    """Logs what the ``sgdr`` schedule (:mod:`.sgdr`, registered in ``SCHEDULES``) did: ``lr_last_step``, the lr of
    the epoch's last step (the Trainer's ``lr`` shows the next epoch's first one), and ``sgdr_cycle``."""

    def __init__(self, first_cycle: int, mul: int):
        self.first_cycle, self.mul = first_cycle, mul

    def on_epoch_end(self, tr, metrics) -> None:
        metrics["lr_last_step"] = tr.schedule.scheduler.last_step_lr
        metrics["sgdr_cycle"] = cycle_of(tr.epoch - 1, self.first_cycle, self.mul)[0]


class AbortCallback(Callback):
    """The original's early abort: after the first SGDR cycle, stop if train top-1 < 2 x chance (still logged)."""

    def __init__(self, first_cycle: int, num_classes: int):
        self.first_cycle, self.num_classes = first_cycle, num_classes
        self.reason: str | None = None

    def on_epoch_end(self, tr, metrics) -> None:
        acc = metrics.get("train_acc")
        if tr.epoch == self.first_cycle and acc is not None and acc < 2.0 / self.num_classes:
            self.reason = (f"aborted: train top-1 {100 * acc:.2f}% after the first SGDR cycle ({self.first_cycle} "
                           f"epochs) is below twice chance ({200 / self.num_classes:.2f}%)")
            metrics["aborted"] = 1.0
            tr.request_stop(self.reason)


class SplitCallback(Callback):
    """Chooses the micro-batch split before training (probe with real steps, or cache) and applies it."""

    def __init__(self, splitter: AutoSplitter):
        self.splitter = splitter
        self.decision = None

    def on_train_start(self, tr) -> None:
        loader = tr.data.train
        state = loader.state_dict()
        x, y = next(iter(loader))  # the first batch, without consuming the loader's randomness
        loader.load_state_dict(state)
        x, y = x.to(tr.device), y.to(tr.device)
        sp = self.splitter
        if len(y) < sp.batch_size:  # a training set smaller than one batch
            sp = AutoSplitter(len(y), sp.memory_limit, None, sp.probe_steps, sp.cache, sp.arch, sp.min_micro)
            if self.splitter.forced is not None:
                sp.forced = min(self.splitter.forced, len(y))
        self.decision = d = sp.choose(tr.model, tr.optimizer, chunk_loss, x, y)
        tr.micro_batches = d.chunks
        info = {"split.micro_batch": d.micro_batch, "split.chunks": d.chunks, "split.source": d.source,
                "split.memory_limit": self.splitter.memory_limit or 0}
        tr.tracker.log_params(info)  # the first decision (params are immutable) ...
        tr.tracker.set_tags(info)  # ... and the one used by the latest (resumed) session
        tr.tracker.log_dict(d.as_dict(), "feature_amounts/split.json")


class BackfillCallback(Callback):
    """After a resume: log the per-epoch metrics that the snapshot holds but MLflow missed (killed before flush)."""

    def on_train_start(self, tr) -> None:
        if not tr.tracker.enabled or not tr.history:
            return
        from mlflow.tracking import MlflowClient

        logged = {m.step for m in MlflowClient().get_metric_history(tr.tracker.run_id, "train_loss")}
        for h in tr.history:
            if h["epoch"] not in logged:
                tr.tracker.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
        tr.tracker.flush()


class SnapshotPruner(Callback):
    """Keeps disk use bounded: during training only the two newest snapshots are kept (resume needs one), and at the
    end the final one (``last``) or none (``none``); ``all`` keeps every snapshot. Applies to the local folder
    and to the copies logged to MLflow (when the artifact store can delete)."""

    def __init__(self, keep: str):
        self.keep = keep

    def _files(self, tr) -> list[Path]:
        if tr.out_dir is None:
            return []
        return sorted((tr.out_dir / "snapshots").glob("epoch_*.pt"))

    def _delete(self, tr, paths: Iterable[Path]) -> None:
        paths = list(paths)
        for p in paths:
            with contextlib.suppress(OSError):
                p.unlink()
        if paths and tr.tracker.enabled and tr.tracker.run_id:
            delete_run_artifacts(tr.tracker.run_id, [f"snapshots/{p.name}" for p in paths])

    def on_epoch_end(self, tr, metrics) -> None:
        if self.keep != "all":
            self._delete(tr, self._files(tr)[:-1])  # the newest stays until the next one is written

    def on_train_end(self, tr) -> None:
        files = self._files(tr)
        if self.keep == "last":
            self._delete(tr, files[:-1])
        elif self.keep == "none":
            self._delete(tr, files)


def delete_run_artifacts(run_id: str, paths: Sequence[str]) -> None:
    """Delete artifacts of a run where the store supports it (local and proxied stores); silently keep otherwise."""
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.tracking import MlflowClient

        repo = get_artifact_repository(MlflowClient().get_run(run_id).info.artifact_uri)
        for p in paths:
            repo.delete_artifacts(p)
    except Exception:  # noqa: BLE001 - deleting old snapshots is an optimisation, never an error
        pass


class RecordCallback(Callback):
    """Builds the CSV row at the end and logs it (metrics, result.json); marks the run complete last.

    ``stoppers``: callbacks with a ``reason`` attribute (set when they stopped the run), reported as StopReason.
    """

    def __init__(self, target: Target, num_classes: int, split: SplitCallback, stoppers: Sequence[Callback] = ()):
        self.target, self.num_classes, self.split = target, num_classes, split
        self.stoppers = list(stoppers)
        self.record: dict[str, Any] | None = None
        self.run_id: str | None = None

    def on_train_start(self, tr) -> None:
        self.run_id = tr.tracker.run_id

    def on_train_end(self, tr) -> None:
        t = self.target
        d = self.split.decision
        stop = next((c.reason for c in self.stoppers if getattr(c, "reason", None)), None)
        rec = record_from_history(
            tr.history, widths=t.widths, parameters=capacity(t.widths, self.num_classes), mean=t.mean, scale=t.scale,
            skew=t.skew, VariantIndex=t.index, VariantId=t.vid, TrueParameters=count_parameters(tr.model),
            EpochsDone=tr.epoch, StopReason=stop, MicroBatch=d.micro_batch if d else None,
            Chunks=d.chunks if d else None, RunId=tr.tracker.run_id)
        self.record = rec
        tr.tracker.log_metrics({k: rec[k] for k in ("Parameters", "BestVal", "BestValsTrain", "BestEpoch",
                                                    "LastValPrec", "LastTrainPrec", "TrueParameters")},
                               step=tr.epoch)
        tr.tracker.log_dict(rec, RESULT_JSON)
        tr.tracker.flush()
        tr.tracker.set_tags({"fa.complete": "1", **({"fa.stop_reason": stop} if stop else {})})


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
            _mark_failed(record_cb.run_id, str(e))
            return VariantOutcome(record_cb.run_id, None, str(e))
        except RuntimeError as e:
            d = split_cb.decision
            if not is_oom(e) or record_cb.run_id is None or d is None or d.source == "forced" \
                    or d.micro_batch <= splitter.min_micro:
                raise
            oom = " ".join(str(e).split())[:200]
        finally:
            if torch.cuda.is_available():  # give the next variant (or the retry) the whole GPU
                gc.collect()
                torch.cuda.empty_cache()
        # out of memory during training (outside the except block, so the failed step's tensors are released)
        gc.collect()
        new = max(splitter.min_micro, math.ceil(d.micro_batch / 2))
        splitter.cache.put(d.key, {"micro_batch": new, "batch_size": d.batch_size,
                                   "chunks": math.ceil(d.batch_size / new), "peak_bytes": None})
        resume_run = record_cb.run_id
        resume_from = last_snapshot(resume_run, Path(out_dir) if out_dir else None)
        print(f"{target.vid}: out of memory while training with micro-batches of {d.micro_batch} ({oom}); "
              f"continuing run {resume_run} from {resume_from or 'the start'} with micro-batches of {new}")


def _mark_failed(run_id: str, message: str) -> None:
    from mlflow.tracking import MlflowClient

    c = MlflowClient()
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
        arts = [a for a in list_run_artifacts(run_id, "snapshots") if a.endswith(".pt")]
    except UsageError:
        arts = []
    return f"runs:/{run_id}/{arts[-1]}" if arts else None


# ------------------------------------------------------------------------------------------------------------------
# Sweep


@dataclass
class SweepOutcome:
    parent_run_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    csv_path: Path | None = None


def sweep(targets: Sequence[Target], data_cfg: DataConfig, train_cfg: TrainConfig, opts: FAOptions, *,
          out_dir: str | Path | None = None, run_name: str | None = None, fresh: bool = False,
          progress: bool = True, echo=print) -> SweepOutcome:
    """Train every target as a child run of one parent run; re-running the same command continues.

    Finished variants (``fa.complete`` with the same ``fa.train_key``) are skipped and their rows reused; an
    interrupted one is continued in its own run from its newest snapshot; the parent run is re-opened.
    """
    check(len(targets) > 0, "the selection is empty; widen --start/--stop or the --mean/--scale/--skew filters")
    opts.validate()
    configure_tracking()
    tkey = train_key(data_cfg, train_cfg, opts)
    skey = _hash({"train": tkey, "targets": [t.vid for t in targets]})
    data = load_data(data_cfg, seed=train_cfg.seed)
    loader_start = data.train.state_dict()
    base_out = ensure_writable_dir(out_dir) if out_dir else None
    parent = None if fresh or os.environ.get("MLFLOW_RUN_ID") else \
        next(iter(_search(f"tags.`fa.sweep_key` = '{skey}' and tags.`fa.role` = 'sweep'")), None)
    tracker = Tracker(reopen=parent.info.run_id) if parent is not None else Tracker()
    params = {"sweep.variants": len(targets), "sweep.first": targets[0].vid, "sweep.last": targets[-1].vid,
              "dataset": data_cfg.dataset, "epochs": train_cfg.epochs, **{f"fa.{k}": v for k, v in asdict(opts).items()}}
    with tracker.start(PROJECT, "sweep", run_name=run_name or f"sweep-{data_cfg.dataset}-vgg{opts.vgg_depth}",
                       params=params, tags={"fa.role": "sweep", "fa.sweep_key": skey, "fa.train_key": tkey}) as t:
        outcome = SweepOutcome(t.run_id)
        if parent is not None:
            echo(f"continuing sweep run {t.run_id}")
        csv_dir = base_out or ensure_writable_dir(default_out_dir(PROJECT, t.run_id))
        outcome.csv_path = csv_dir / "sweep.csv"
        done_runs: dict[str, Any] = {}
        partial_runs: dict[str, Any] = {}
        if not fresh:
            for r in _search(f"tags.`fa.train_key` = '{tkey}' and tags.`fa.role` = 'variant'"):
                vid = r.data.tags.get("fa.variant_id")
                if r.data.tags.get("fa.complete") == "1":
                    done_runs.setdefault(vid, r)
                elif r.data.tags.get("mlflow.parentRunId") == t.run_id:
                    partial_runs.setdefault(vid, r)
        for i, target in enumerate(targets):
            prefix = f"[{i + 1}/{len(targets)}] {target.vid}"
            if target.vid in done_runs:
                rec = load_record(done_runs[target.vid])
                outcome.skipped.append(target.vid)
                if rec is not None:
                    outcome.records.append(rec)
                else:
                    outcome.failed.append(target.vid)
                echo(f"{prefix}: already finished in run {done_runs[target.vid].info.run_id}, skipped")
                continue
            resume_run = resume_from = None
            if target.vid in partial_runs:
                resume_run = partial_runs[target.vid].info.run_id
                resume_from = last_snapshot(resume_run, base_out / target.vid if base_out else None)
                outcome.resumed.append(target.vid)
                echo(f"{prefix}: resuming run {resume_run} from {resume_from or 'the start'}")
            data.train.load_state_dict(loader_start)  # every variant sees the same batch order
            res = train_target(target, data, data_cfg, train_cfg, opts, entry_point="sweep",
                               tags={"fa.train_key": tkey, "fa.sweep_key": skey},
                               out_dir=base_out / target.vid if base_out else None, resume_run=resume_run,
                               resume_from=resume_from, progress=progress, catch_training_errors=True,
                               fresh=resume_run is None)  # the sweep's records decide; leftover snapshots do not
            if res.error:
                outcome.failed.append(target.vid)
                echo(f"{prefix}: failed ({res.error})")
            else:
                outcome.trained.append(target.vid)
                outcome.records.append(res.record)
                r = res.record
                echo(f"{prefix}: BestVal {r['BestVal']:.2f}% at epoch {r['BestEpoch']}, {r['EpochsDone']} epochs"
                     + (f" ({r['StopReason']})" if r.get("StopReason") else "") + f", run {res.run_id}")
            _write_csv(t, outcome)
        _write_csv(t, outcome)
        if outcome.records:
            best = max(outcome.records, key=lambda r: r["BestVal"])
            t.log_metrics({"sweep_best_val": best["BestVal"], "sweep_done": len(outcome.records),
                           "sweep_failed": len(outcome.failed)})
            t.set_tags({"sweep.best_variant": best.get("VariantId")})
    return outcome


def _write_csv(t: Tracker, outcome: SweepOutcome) -> None:
    order = {r.get("VariantId"): r for r in outcome.records}
    text = to_csv(order.values())
    atomic_write(outcome.csv_path, lambda tmp: Path(tmp).write_text(text))
    t.log_artifact(outcome.csv_path, "feature_amounts")


# ------------------------------------------------------------------------------------------------------------------
# Optuna


class OptunaReporter(Callback):
    """Reports the per-epoch validation top-1 (percent) to an Optuna trial and stops a run the pruner rejects."""

    def __init__(self, trial):
        self.trial = trial
        self.pruned = False
        self.reason: str | None = None

    def on_epoch_end(self, tr, metrics) -> None:
        key = "val_acc" if "val_acc" in metrics else "test_acc"
        if key not in metrics:
            return
        self.trial.report(100.0 * metrics[key], tr.epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.reason = f"pruned by Optuna at epoch {tr.epoch}"
            tr.request_stop(self.reason)


def make_pruner(name: str, warmup: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"unknown --pruner {name!r}; use median, hyperband or none")


def suggest_target(trial, space: str, opts: FAOptions, grid: bool) -> Target:
    """A network from the trial's parameters: (mean, scale, skew) of the skew-normal, or per-layer shares."""
    base = base_widths(opts.vgg_depth, opts.patch_size)
    n = len(base)
    if space == "skewnormal":
        if grid:
            mean = float(trial.suggest_int("mean", 0, n))
            scale = trial.suggest_float("scale", 0.5, 5.5, step=0.5)
            skew = float(trial.suggest_int("skew", -40, 40, step=4))
        else:
            mean = trial.suggest_float("mean", 0.0, float(n))
            scale = trial.suggest_float("scale", 0.5, 5.5)
            skew = trial.suggest_float("skew", -40.0, 40.0)
        v = make_variant(mean, scale, skew, opts.vgg_depth, opts.patch_size, opts.width_multiplier)
        reason = invalid_reason(v)
        if reason:
            import optuna

            trial.set_user_attr("invalid", reason)
            raise optuna.TrialPruned(f"invalid variant: {reason}")
        return Target(f"trial{trial.number:04d}", tuple(v.widths), None, v.mean, v.scale, v.skew)
    if space == "widths":
        shares = [trial.suggest_float(f"share{i}", 0.01, 1.0, log=True) for i in range(n)]
        total = sum(shares)
        widths = widths_from_bins([s / total for s in shares], sum(base), opts.width_multiplier)
        return Target(f"trial{trial.number:04d}", widths)
    raise UsageError(f"unknown --space {space!r}; use skewnormal or widths")


@dataclass
class StudyOutcome:
    parent_run_id: str
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict
    n_complete: int
    n_pruned: int


def optimize(space: str, n_trials: int, data_cfg: DataConfig, train_cfg: TrainConfig, opts: FAOptions, *,
             storage: str | None, study_name: str, sampler_seed: int = 0, pruner: str = "median",
             pruner_warmup: int = 1, grid: bool = False, reset_running: bool = True, run_name: str | None = None,
             progress: bool = True, echo=print) -> StudyOutcome:
    """An Optuna study (TPE) over (mean, scale, skew) or per-layer widths; each trial one child run.

    ``storage`` (an Optuna URL, sqlite by default) keeps the study: running the command again continues it until
    ``n_trials`` trials are complete or pruned. Trials left RUNNING by a killed process are marked FAIL and their
    parameters queued again (``reset_running``; turn it off when several workers share the study).
    Samples that the original's rules reject (invalid variants) are recorded as pruned with the user attribute
    ``invalid`` and do not count towards ``n_trials``.
    """
    import optuna
    from optuna.trial import TrialState

    check(n_trials >= 1, f"--n-trials must be >= 1, got {n_trials}")
    check(space in ("skewnormal", "widths"), f"unknown --space {space!r}; use skewnormal or widths")
    opts.validate()
    configure_tracking()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = storage if storage else "sqlite:///optuna-feature-amounts.db"
    try:
        study = optuna.create_study(study_name=study_name, storage=storage_url, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=sampler_seed),
                                    pruner=make_pruner(pruner, pruner_warmup), load_if_exists=True)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"cannot open the Optuna study {study_name!r} in {storage_url} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''}); check --storage") from None
    data = load_data(data_cfg, seed=train_cfg.seed)
    loader_start = data.train.state_dict()
    tkey = train_key(data_cfg, train_cfg, opts)
    skey = _hash({"study": study_name, "storage": storage_url, "space": space, "train": tkey})
    parent = None if os.environ.get("MLFLOW_RUN_ID") else \
        next(iter(_search(f"tags.`fa.study_key` = '{skey}' and tags.`fa.role` = 'study'")), None)
    tracker = Tracker(reopen=parent.info.run_id) if parent is not None else Tracker()
    if reset_running:
        for tr in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_state_values(tr._trial_id, TrialState.FAIL)
            study.enqueue_trial(tr.params, skip_if_exists=False)
            echo(f"trial {tr.number} was left running by a stopped process: marked failed, its parameters queued")
    with tracker.start(PROJECT, "optimize", run_name=run_name or f"study-{study_name}",
                       params={"study": study_name, "storage": storage_url, "space": space, "pruner": pruner,
                               "grid": grid, "dataset": data_cfg.dataset, "epochs": train_cfg.epochs},
                       tags={"fa.role": "study", "fa.study": study_name, "fa.study_key": skey}) as t:

        def objective(trial):
            target = suggest_target(trial, space, opts, grid)
            rep = OptunaReporter(trial)
            data.train.load_state_dict(loader_start)
            res = train_target(target, data, data_cfg, train_cfg, opts, entry_point="optimize",
                               tags={"fa.trial": trial.number, "fa.study": study_name, "fa.train_key": tkey},
                               extra_callbacks=[rep], progress=progress, catch_training_errors=True)
            trial.set_user_attr("run_id", res.run_id)
            trial.set_user_attr("widths", list(target.widths))
            if res.error:
                trial.set_user_attr("failed", res.error)
                echo(f"trial {trial.number}: {target.vid} failed ({res.error}); counted as pruned")
                raise optuna.TrialPruned(res.error)
            rec = res.record
            echo(f"trial {trial.number}: {target.vid} widths={list(target.widths)} BestVal={rec['BestVal']:.2f}%"
                 + (" (pruned)" if rep.pruned else ""))
            if rep.pruned:
                raise optuna.TrialPruned()
            return rec["BestVal"]

        def trained() -> int:  # invalid samples (rejected before training) do not count
            return sum(1 for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                       if "invalid" not in tr.user_attrs)

        attempts = 0
        while trained() < n_trials:
            check(attempts < 50 * n_trials, f"{attempts} samples in a row were invalid variants; widen the search "
                  "(--space widths) or use a smaller --vgg-depth")
            before = len(study.trials)
            study.optimize(objective, n_trials=n_trials - trained(), catch=())
            attempts += len(study.trials) - before
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        pruned = [tr for tr in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
                  if "invalid" not in tr.user_attrs]
        best_value = study.best_value if complete else None
        best_params = dict(study.best_params) if complete else {}
        if complete:
            t.log_metrics({"best_value": best_value, "n_complete": len(complete), "n_pruned": len(pruned)})
            t.log_dict({"best_value": best_value, "best_params": best_params,
                        "best_widths": study.best_trial.user_attrs.get("widths"),
                        "best_run_id": study.best_trial.user_attrs.get("run_id")}, "feature_amounts/best.json")
    return StudyOutcome(t.run_id, study_name, storage_url, best_value, best_params, len(complete), len(pruned))


# ------------------------------------------------------------------------------------------------------------------
# Plot


def read_results(source: str) -> tuple[list[dict[str, Any]], str | None]:
    """Records from a CSV file, an MLflow artifact URI, or a sweep's parent run id (its feature_amounts/sweep.csv)."""
    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir():
            p = p / "sweep.csv"
            check(p.exists(), f"{source} is a folder without sweep.csv; pass the sweep's CSV or its run id")
        return from_csv(p.read_text()), None
    if source.endswith(".csv"):
        path, run_id = resolve_input(source, "results CSV")
        return from_csv(Path(path).read_text()), run_id
    run_id = parse_run_ref(source)
    check(re.fullmatch(r"[0-9a-f]{32}", run_id) is not None,
          f"{source} is neither a CSV file nor an MLflow run id; pass the sweep's CSV or its parent run id")
    path, _ = resolve_input(f"runs:/{run_id}/{SWEEP_CSV}", "sweep results")
    return from_csv(Path(path).read_text()), run_id


def plot(source: str, out_dir: str | Path | None = None, run_name: str | None = None,
         tracker: Tracker | None = None) -> tuple[str | None, list[Path]]:
    """Accuracy against mean and skew, and against parameter count, logged to a ``plot`` run."""
    from .plots import figure_mean_skew, figure_parameters

    configure_tracking()
    records, source_run = read_results(source)
    tracker = tracker or Tracker()
    tags = {"fa.role": "plot", **({"source_run_id": source_run} if source_run else {})}
    with tracker.start(PROJECT, "plot", run_name=run_name or "plot", params={"source": source, "rows": len(records)},
                       tags=tags) as t:
        out = ensure_writable_dir(out_dir or default_out_dir(PROJECT, t.run_id))
        title = f"{len(records)} networks" + (f" (sweep {source_run[:8]})" if source_run else "")
        paths = []
        if any(r.get("Mean") is not None for r in records):
            paths.append(save_figure(figure_mean_skew(records, title), out / "accuracy_vs_mean_skew.png", t))
        paths.append(save_figure(figure_parameters(records, title), out / "accuracy_vs_parameters.png", t))
    return t.run_id, paths
