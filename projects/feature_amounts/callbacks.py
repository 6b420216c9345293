"""feature_amounts' loss and Trainer callbacks: SGDR, the early abort, the micro-batch split, metric backfill after a
resume, snapshot pruning, and the CSV row of a finished run."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F

from shared.train import Callback

from .models import count_parameters
from .results import record_from_history
from .sgdr import cycle_of
from .splitting import AutoSplitter
from .variants import capacity
from .config import RESULT_JSON, Target


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


def summary_metrics(rec: dict) -> dict:
    """The CSV row's summary values as MLflow metrics, in the units and names of every project: accuracies as
    fractions, ``best_epoch`` counted like the metrics' steps (epochs completed). The last epoch's accuracies are the
    per-epoch ``val_acc`` / ``train_acc`` curves already (the percent columns stay in the CSV and result.json)."""
    pct = lambda v: None if v is None else float(v) / 100.0  # noqa: E731
    out = {"best_val_acc": pct(rec.get("BestVal")), "best_val_train_acc": pct(rec.get("BestValsTrain")),
           "best_epoch": None if rec.get("BestEpoch") is None else int(rec["BestEpoch"]) + 1,
           "parameters": rec.get("Parameters"), "true_parameters": rec.get("TrueParameters")}
    return {k: v for k, v in out.items() if v is not None}


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
        tr.tracker.log_metrics(summary_metrics(rec), step=tr.epoch)
        tr.tracker.log_dict(rec, RESULT_JSON)
        tr.tracker.flush()
        tr.tracker.set_tags({"fa.complete": "1", **({"fa.stop_reason": stop} if stop else {})})
