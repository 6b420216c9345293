"""The one training loop of geomlab.

``Trainer(model, data, TrainConfig(...), tracker=..., loss_fn=..., callbacks=[...]).fit()`` trains with SGD or
Adam (or a registered optimizer), a pluggable LR schedule (stepped per epoch or per optimizer step), optional
gradient accumulation over micro-batches, per-epoch evaluation (loss, top-1, top-5), snapshots and exact resume.

Snapshots are ``<out_dir>/snapshots/epoch_NNN.pt`` where NNN is the number of *completed* epochs (epoch_000 is the
initialization), logged to MLflow under ``snapshots/``. Every snapshot holds the weights, the history and the
run's configuration (what the analyses read). The newest one also holds the *resume state* (optimizer, scheduler,
every RNG state: torch, numpy, python, the training loader's generator; callback states), so a run resumed with
``resume_from`` continues exactly as the uninterrupted run would (bit-identical on CPU). When a newer snapshot is
written, the previous one drops its resume state (it doubles a snapshot's size with SGD momentum, triples it with
Adam), unless ``keep_resume_every`` keeps it.

Ctrl-C and SIGTERM stop training between batches (:mod:`shared.interrupts`); a stop requested during an epoch's
evaluation, metrics or snapshot waits for them, and the finished epoch is snapshotted before the run ends KILLED.

Projects extend the loop without copying it:
- ``loss_fn(model, x, y) -> (loss, output)``: a different loss (distillation, p-loss);
- callbacks (:class:`Callback`): per-step metrics, early stopping rules, anything at epoch end;
- ``OPTIMIZERS`` / ``SCHEDULES`` registries: more optimizers and schedules (SGDR per step);
- ``micro_batches``: gradient accumulation (the logical batch stays fixed).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shared import interrupts
from shared.data import Data, data_params
from shared.errors import UsageError, check
from shared.files import ensure_writable_dir, load_snapshot, load_weights, save_snapshot
from shared.models import model_spec
from shared.metrics import topk_correct
from shared.progress import progress_bar
from shared.registry import Registry
from shared.tracking import Tracker

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "step"
    schedule_options: dict = field(default_factory=dict)  # options of a registered schedule (e.g. SGDR's cycles)
    lr_step: int = 0  # epochs between LR decays (schedule 'step'); 0 = constant LR
    lr_decay: float = 0.1
    seed: int = 0
    snapshot_every: int = 0  # epochs; 0 = only the final epoch (and the initialization)
    snapshot_all_until: int = 0  # also snapshot every epoch while fewer than this many are done
    snapshot_init: bool = True
    keep_resume_every: int = 0  # also keep the resume state in every snapshot at a multiple of this epoch (0: newest)
    train_acc: bool = False  # evaluate the training split (test-time transforms) every evaluation
    eval_every: int = 1
    eval_test: bool = True  # also evaluate the test split when a validation split exists
    micro_batches: int = 1  # gradient accumulation: each batch is split into this many chunks
    device: str = "auto"
    ema: float = 0.99  # smoothing of the reported running loss (as the original codes)
    precision: str = "fp32"  # fp32 | bf16-mixed (fp32 master weights, bf16 autocast compute)
    channels_last: bool = False  # NHWC memory format for 4-d weights and inputs (snapshots stay contiguous)

    def validate(self) -> None:
        check(self.epochs >= 0, f"--epochs must be >= 0, got {self.epochs}")
        check(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        check(self.keep_resume_every >= 0, f"--keep-resume-every must be >= 0, got {self.keep_resume_every}")
        check(self.micro_batches >= 1, f"--micro-batches must be >= 1, got {self.micro_batches}")
        check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
              f"unknown device {self.device!r}; use auto, cpu or cuda")
        check(self.precision in PRECISIONS, f"unknown --precision {self.precision!r}; use {' or '.join(PRECISIONS)}")


PRECISIONS = ("fp32", "bf16-mixed", "auto")
#: measured (BENCHMARKS.md, "Precision"): bf16-mixed against fp32 where the CPU emulates bfloat16
EMULATED_BF16_COST = "about 10x slower than fp32 (lenet_small 0.09x, a VGG9 epoch on digits 0.08x, measured on AVX2)"


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str | None]:
    """The precision a run computes in, and a warning where it emulates bfloat16: ``auto`` is bf16-mixed where the
    hardware computes in bfloat16 (AVX-512-BF16, AMX or a GPU) and fp32 elsewhere."""
    from shared.hardware import computes_bf16

    dev = str(device)
    native = computes_bf16(dev)
    if precision == "auto":
        return ("bf16-mixed" if native else "fp32"), None
    if precision == "bf16-mixed" and not native and not dev.startswith("cuda"):
        return precision, (f"--precision bf16-mixed on a CPU without AVX-512-BF16 or AMX-BF16 ({_isa()}): "
                           f"bfloat16 is emulated, {EMULATED_BF16_COST}; use --precision fp32 or auto")
    return precision, None


def _isa() -> str:
    from shared.hardware import cpu_isa

    return cpu_isa()


def autocast(device: torch.device | str, precision: str = "fp32"):
    """The compute context of ``--precision``: bf16 autocast for bf16-mixed (weights stay fp32), nothing for fp32."""
    dev = torch.device(device).type
    if precision == "auto":
        precision = resolve_precision(precision, dev)[0]
    return torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _contiguous(obj):
    """``obj`` with every tensor in standard (NCHW) layout: snapshots of channels_last runs look like any other."""
    if isinstance(obj, torch.Tensor):
        return obj.contiguous()
    if isinstance(obj, dict):
        out = type(obj)((k, _contiguous(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module state_dict
            out._metadata = obj._metadata
        return out
    if isinstance(obj, list):
        return [_contiguous(v) for v in obj]
    return obj


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------------------
# Registries: optimizers and schedules

OPTIMIZERS: Registry[Callable] = Registry("optimizer")
SCHEDULES: Registry[Callable] = Registry("schedule")


def _fused(cfg: TrainConfig) -> dict:
    """bf16-mixed uses PyTorch's fused optimizer kernels: one pass over weights, gradients and state instead of four
    (the step of a 100M-parameter classifier is memory-bound and was most of a bf16 step). fp32 keeps the reference
    kernels, whose numbers the fused ones differ from by an ulp, so that fp32 results never change."""
    return {"fused": True} if cfg.precision == "bf16-mixed" else {}


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg: TrainConfig):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.nesterov and cfg.momentum > 0, **_fused(cfg))


@OPTIMIZERS.register("adam")
def _adam(params, cfg: TrainConfig):
    # as the original codes: Adam ignores momentum; weight decay is applied when given
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_fused(cfg))


@OPTIMIZERS.register("adamw")
def _adamw(params, cfg: TrainConfig):
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_fused(cfg))


@dataclass
class Schedule:
    """A torch LR scheduler (or anything with step/state_dict/load_state_dict) and when it is stepped.

    A schedule factory is registered in ``SCHEDULES`` as ``factory(optimizer, cfg, loader) -> Schedule``; ``loader``
    is the training loader (``len(loader)`` steps per epoch; ``num_samples``, ``batch_size``)."""

    scheduler: object | None
    per_step: bool = False  # True: stepped after every optimizer step; False: after every epoch


@SCHEDULES.register("none")
def _none(opt, cfg: TrainConfig, loader) -> Schedule:
    return Schedule(None)


@SCHEDULES.register("step")
def _step(opt, cfg: TrainConfig, loader) -> Schedule:
    if cfg.lr_step <= 0 or cfg.lr_decay <= 0:
        return Schedule(None)
    return Schedule(torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_decay))


@SCHEDULES.register("cosine")
def _cosine(opt, cfg: TrainConfig, loader) -> Schedule:
    return Schedule(torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * len(loader))),
                    per_step=True)


# ------------------------------------------------------------------------------------------------------------------
# Evaluation


def default_loss(task: str) -> LossFn:
    if task == "regression":
        def mse(model, x, y):
            out = model(x)
            return F.mse_loss(out, y), out
        return mse

    def ce(model, x, y):
        out = model(x)
        return F.cross_entropy(out, y), out
    return ce


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu", task: str = "classification",
             loss_fn: LossFn | None = None, precision: str = "fp32", channels_last: bool = False) -> dict[str, float]:
    """Mean loss, top-1 and top-5 accuracy (fractions in [0, 1]) of ``model`` over ``loader`` (computed under
    ``precision``'s autocast; the loss is accumulated in float64)."""
    loss_fn = loss_fn or default_loss(task)
    was_training = model.training
    model.eval()
    n, loss_sum, c1, c5 = 0, 0.0, 0, 0
    for x, y in loader:
        x, y = to_memory_format(x.to(device, non_blocking=True), channels_last), y.to(device, non_blocking=True)
        with autocast(device, precision):
            loss, out = loss_fn(model, x, y)
        b = len(y)
        n += b
        loss_sum += float(loss) * b
        if task == "classification":
            a, b = topk_correct(out, y, (1, 5))
            c1, c5 = c1 + a, c5 + b
    model.train(was_training)
    res = {"loss": loss_sum / max(n, 1)}
    if task == "classification":
        res.update(acc=c1 / max(n, 1), top5=c5 / max(n, 1))
    return res


# ------------------------------------------------------------------------------------------------------------------
# Callbacks


class Callback:
    """Hooks into :class:`Trainer`. Override what you need; ``state_dict`` is saved in snapshots."""

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", loss: float, output: torch.Tensor, y: torch.Tensor) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", metrics: dict) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class KillPlateaus(Callback):
    """Stop a run that does not learn, with either original rule.

    - ``loss-ratio`` (Gamba et al. 2019): a smoothed loss restarts from 0 every epoch (avg <- 0.99 avg + 0.01
      loss); its value at batch ``at_batch`` of the first epoch trained in this process is the start loss; at batch
      ``at_batch`` of epoch ``at_epoch`` (both 1-based) training stops if the current value is 0 or NaN or start /
      current < ``ratio``. Epochs shorter than ``at_batch`` batches never trigger it, as in the original.
    - ``acc-equal`` (Gamba et al. 2020): stop when an evaluation's accuracy (validation, else test) exactly equals the
      previous one's (the first comparison is with 0); ``only_at_snapshots`` compares snapshot evaluations only,
      as the original did.
    """

    def __init__(self, rule: str = "loss-ratio", at_epoch: int = 20, at_batch: int = 100, ratio: float = 2.0,
                 only_at_snapshots: bool = False):
        check(rule in ("loss-ratio", "acc-equal"), f"unknown kill-plateaus rule {rule!r}; use loss-ratio or acc-equal")
        self.rule, self.at_epoch, self.at_batch, self.ratio = rule, at_epoch, at_batch, ratio
        self.only_at_snapshots = only_at_snapshots
        self.first_epoch: int | None = None
        self.start_loss: float | None = None
        self.avg = 0.0
        self.prev_acc = 0.0

    @staticmethod
    def stuck(start_loss: float, current: float, ratio: float = 2.0) -> bool:
        """The loss-ratio verdict: current is 0 or NaN, or start / current < ratio."""
        return current == 0 or math.isnan(current) or start_loss / current < ratio

    def on_train_start(self, trainer):
        self.first_epoch = trainer.epoch

    def on_step_end(self, trainer, loss, output, y):
        if self.rule != "loss-ratio":
            return
        if trainer.batch_in_epoch == 0:
            self.avg = 0.0
        self.avg = 0.99 * self.avg + 0.01 * float(loss)
        if trainer.batch_in_epoch != self.at_batch - 1:
            return
        if trainer.epoch == self.first_epoch:
            self.start_loss = self.avg
        if trainer.epoch == self.at_epoch - 1 and self.start_loss is not None:
            if self.stuck(self.start_loss, self.avg, self.ratio):
                trainer.request_stop(f"plateau: smoothed loss {self.avg:.4g} at epoch {self.at_epoch} is not "
                                     f"{self.ratio:g}x below {self.start_loss:.4g} (--kill-plateaus)")

    def on_epoch_end(self, trainer, metrics):
        if self.rule != "acc-equal" or (self.only_at_snapshots and not trainer.should_snapshot()):
            return
        acc = metrics.get("val_acc", metrics.get("test_acc"))
        if acc is None:
            return
        if acc == self.prev_acc:
            trainer.request_stop(f"plateau: accuracy {acc:.4f} unchanged since the previous evaluation"
                                 + (" with a snapshot" if self.only_at_snapshots else ""))
        self.prev_acc = acc

    def state_dict(self):
        return {"start_loss": self.start_loss, "avg": self.avg, "prev_acc": self.prev_acc}

    def load_state_dict(self, state):
        self.start_loss, self.avg, self.prev_acc = state["start_loss"], state.get("avg", 0.0), state["prev_acc"]


#: What a snapshot needs for an exact resume beyond the weights: only the newest snapshot keeps it (see the module
#: docstring); analyses never read it.
RESUME_STATE = ("optimizer_state_dict", "scheduler_state_dict", "rng", "callbacks")

# Callbacks added to every Trainer of this process (e.g. an Optuna trial reporter installed by a sweep).
GLOBAL_CALLBACKS: list[Callback] = []


# ------------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class FitResult:
    epochs_done: int
    converged: bool
    stop_reason: str | None
    history: list[dict] = field(default_factory=list)
    last_snapshot: Path | None = None

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


class Trainer:
    def __init__(self, model: nn.Module, data: Data, cfg: TrainConfig, *, tracker: Tracker | None = None,
                 out_dir: str | Path | None = None, loss_fn: LossFn | None = None,
                 callbacks: Iterable[Callback] = (), params: Iterable[torch.nn.Parameter] | None = None,
                 snapshot_meta: dict | None = None, progress: bool = True, eval_loss_fn: LossFn | None = None):
        cfg.validate()
        self.cfg, self.data = cfg, data
        self.device = resolve_device(cfg.device)
        if cfg.precision == "bf16-mixed" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UsageError("--precision bf16-mixed needs a GPU with bfloat16 support; use --precision fp32")
        precision, self.precision_warning = resolve_precision(cfg.precision, self.device)
        if precision != cfg.precision:
            from dataclasses import replace

            self.cfg = cfg = replace(cfg, precision=precision)
        if self.precision_warning:
            import typer

            typer.echo(f"warning: {self.precision_warning}", err=True)
        self.model = model.to(self.device, memory_format=torch.channels_last) if cfg.channels_last else \
            model.to(self.device)
        self.tracker = tracker or Tracker(enabled=False)
        self.out_dir = ensure_writable_dir(out_dir) if out_dir is not None else None
        if self.out_dir is not None:
            ensure_writable_dir(self.out_dir / "snapshots", "snapshot folder")
        self.loss_fn = loss_fn or default_loss(data.task)
        self.eval_loss_fn = eval_loss_fn  # None: cross entropy / MSE (a training loss may need a teacher, etc.)
        self.callbacks = list(callbacks) + list(GLOBAL_CALLBACKS)
        trainable = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS.get(cfg.optimizer)(trainable, cfg)
        self.schedule = SCHEDULES.get(cfg.schedule)(self.optimizer, cfg, data.train)
        self.snapshot_meta = snapshot_meta or {}
        self.progress = progress
        self.micro_batches = cfg.micro_batches
        self.epoch = 0  # completed epochs
        self.global_step = 0  # optimizer steps done
        self.batch_in_epoch = 0
        self.smoothed_loss = float("nan")
        self.history: list[dict] = []
        self._stop: str | None = None
        self.last_snapshot: Path | None = None

    # -- control -------------------------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        self._stop = reason

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- snapshots -----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        sch = self.schedule.scheduler
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model_state_dict": _contiguous(self.model.state_dict()) if self.cfg.channels_last else
            self.model.state_dict(),
            "optimizer_state_dict": _contiguous(self.optimizer.state_dict()) if self.cfg.channels_last else
            self.optimizer.state_dict(),
            "scheduler_state_dict": sch.state_dict() if sch is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "train_loader": self.data.train.state_dict()},
            "callbacks": [cb.state_dict() for cb in self.callbacks],
            "smoothed_loss": self.smoothed_loss,
            "history": self.history,
            "model_spec": model_spec(self.model),
            "train_config": asdict(self.cfg),
            "data_config": asdict(self.data.config),
            "micro_batches": self.micro_batches,
            "run_id": self.tracker.run_id,
            "stop_reason": self._stop,
            **self.snapshot_meta,
        }

    def save_snapshot(self) -> Path | None:
        """Write ``epoch_NNN.pt`` with the resume state and log it; the previous snapshot then drops its resume state
        (unless :meth:`keeps_resume_state`). One critical section: a signal never cuts it."""
        if self.out_dir is None and not self.tracker.enabled:
            return None
        name = f"epoch_{self.epoch:03d}.pt"
        if self.out_dir is not None:
            target = self.out_dir / "snapshots" / name
        else:
            import tempfile

            target = Path(tempfile.mkdtemp(prefix="geomlab-snap-")) / name
        with interrupts.critical():
            path = self._write_snapshot(target, self.state())
            self.tracker.log_artifact(path, "snapshots")
            previous, self.last_snapshot = self.last_snapshot, path
            if previous is not None and previous != path:
                self._drop_resume_state(previous)
        return path

    def keeps_resume_state(self, epoch: int) -> bool:
        """Does the snapshot of ``epoch`` keep its resume state once a newer one exists? (``keep_resume_every``)"""
        every = self.cfg.keep_resume_every
        return every > 0 and epoch > 0 and epoch % every == 0

    def _write_snapshot(self, target: Path, payload: dict) -> Path:
        try:
            return save_snapshot(target, payload)
        except OSError as e:  # a full disk, a read-only or vanished folder
            cause = e.strerror or type(e).__name__
            kept = f"; the snapshots up to {self.last_snapshot.name} are intact" if self.last_snapshot else ""
            raise UsageError(f"cannot write snapshot {target} ({cause}){kept}; free space or fix the permissions of "
                             f"{target.parent}, then re-run the same command to continue") from None

    def _drop_resume_state(self, path: Path) -> None:
        """Rewrite the snapshot at ``path`` (written by this trainer) without its resume state, and log it again."""
        try:
            snap = load_snapshot(path)
        except UsageError:  # gone or damaged: nothing to slim
            return
        if snap.get("resume_state_dropped") or self.keeps_resume_state(int(snap.get("epoch", -1))):
            return
        slim = {k: v for k, v in snap.items() if k not in RESUME_STATE and k not in ("format", "path")}
        self._write_snapshot(path, {**slim, "resume_state_dropped": True})
        self.tracker.log_artifact(path, "snapshots")
        if self.out_dir is None:  # a temporary copy of a logged snapshot: only the newest is needed here
            import shutil

            shutil.rmtree(path.parent, ignore_errors=True)

    def resume(self, source: str | dict, overrides: Iterable[str] = ()) -> None:
        """Restore everything from a snapshot (path, MLflow URI or loaded dict) written by this trainer.

        A snapshot trained with other trajectory options (:func:`shared.resume.snapshot_differences`) is refused
        unless each differing option is in ``overrides``; overridden options take effect from the resumed epoch: a
        new optimizer is started fresh, new hyper-parameters replace the snapshot's, and the schedule is rebuilt from
        the new options and advanced to the resumed step (so ``--lr`` is the schedule's base LR, as when training
        from 0).
        """
        from shared.resume import SCHEDULE_OPTIONS, TRAJECTORY_DATA_OPTIONS, refuse_changes, snapshot_differences
        from shared.tracking import resolve_input

        if isinstance(source, dict):
            snap = source
        else:
            path, _ = resolve_input(source, "snapshot to resume from")
            snap = load_snapshot(path)
        path = snap.get("path", source if isinstance(source, str) else "")
        if snap.get("resume_state_dropped"):
            raise UsageError(f"snapshot {path} holds weights only: its resume state (optimizer, RNG) was dropped when a "
                             "newer snapshot was written; resume from the run's newest snapshot, keep more with "
                             "--keep-resume-every N, or start from this one with --init-from")
        for key in ("optimizer_state_dict", "rng", "epoch"):
            if key not in snap:
                raise UsageError(f"snapshot {path} holds weights only (no {key}); resume needs a snapshot written "
                                 "during training (snapshots/epoch_NNN.pt), or start from it with --init-from")
        diffs = snapshot_differences(snap, self.cfg, self.data.config, model_spec(self.model))
        refuse_changes(diffs, set(overrides), path)
        load_weights(self.model, snap)
        new_hparams = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if "optimizer" not in diffs:
            self.optimizer.load_state_dict(snap["optimizer_state_dict"])
            for p, st in self.optimizer.state.items():  # snapshots are NCHW: state takes its parameter's layout again
                for k, v in st.items():
                    if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                        st[k] = torch.empty_like(p).copy_(v)
            for g, h in zip(self.optimizer.param_groups, new_hparams):  # overridden hyper-parameters (lr: below)
                g.update({k: v for k, v in h.items() if k not in ("lr", "initial_lr")})
        sch = self.schedule.scheduler
        if set(diffs) & SCHEDULE_OPTIONS:
            for g, h in zip(self.optimizer.param_groups, new_hparams):
                g["lr"] = h["lr"]
                if "initial_lr" in h:
                    g["initial_lr"] = h["initial_lr"]
            if sch is not None:
                import warnings

                with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
                    warnings.simplefilter("ignore")
                    for _ in range(int(snap.get("global_step", 0)) if self.schedule.per_step else int(snap["epoch"])):
                        sch.step()
        elif sch is not None and snap.get("scheduler_state_dict") is not None:
            sch.load_state_dict(snap["scheduler_state_dict"])
        rng = snap["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if not set(diffs) & set(TRAJECTORY_DATA_OPTIONS):  # other data: a fresh batch order
            self.data.train.load_state_dict(rng["train_loader"])
        for cb, st in zip(self.callbacks, snap.get("callbacks", [])):
            cb.load_state_dict(st)
        self.epoch, self.global_step = int(snap["epoch"]), int(snap.get("global_step", 0))
        self.smoothed_loss = snap.get("smoothed_loss", float("nan"))
        self.history = list(snap.get("history", []))
        self.micro_batches = snap.get("micro_batches", self.micro_batches)
        if self.out_dir is not None and path and Path(path).parent.resolve() == (self.out_dir / "snapshots").resolve():
            self.last_snapshot = Path(path)  # this run's own newest snapshot: it drops its resume state in turn
            # a kill -9 between writing the newest snapshot and slimming the one before leaves that one whole
            older = sorted(p for p in Path(path).parent.glob("epoch_*.pt") if p.name < Path(path).name)
            if older:
                with interrupts.critical():
                    self._drop_resume_state(older[-1])

    # -- the loop ------------------------------------------------------------------------------------------------
    def should_snapshot(self) -> bool:
        """Is a snapshot taken after the epochs completed so far? (every N, the first N, and the last)"""
        e, cfg = self.epoch, self.cfg
        every = cfg.snapshot_every if cfg.snapshot_every > 0 else cfg.epochs
        return e == cfg.epochs or e % every == 0 or e <= cfg.snapshot_all_until

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        k = min(self.micro_batches, max(1, len(y) // 2))  # no chunk below 2 samples (BatchNorm needs 2)
        if k == 1:
            with autocast(self.device, self.cfg.precision):
                loss, out = self.loss_fn(self.model, x, y)
            loss.backward()
            total = float(loss.detach())
            out = out.detach()
        else:
            outs, total, n = [], 0.0, len(y)
            for xc, yc in zip(torch.tensor_split(x, k), torch.tensor_split(y, k)):  # sizes differ by at most 1
                with autocast(self.device, self.cfg.precision):
                    loss, out = self.loss_fn(self.model, xc, yc)
                (loss * (len(yc) / n)).backward()
                total += float(loss.detach()) * len(yc) / n
                outs.append(out.detach())
            out = torch.cat(outs)
        if out.dtype == torch.bfloat16:  # callbacks and accuracy see float32 outputs whatever the compute precision
            out = out.float()
        if not math.isfinite(total):
            raise UsageError(f"training loss became {total} at epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1} "
                             f"(lr {self.lr:g}); lower --lr or use a smaller init scale"
                             + (f"; snapshots up to epoch {self.epoch} are kept in {self.out_dir}" if self.out_dir else ""))
        self.optimizer.step()
        self.global_step += 1
        if self.schedule.per_step and self.schedule.scheduler is not None:
            self.schedule.scheduler.step()
        return total, out

    def evaluate_all(self) -> dict:
        m: dict[str, float] = {}
        splits = {"val": self.data.val, "test": self.data.test if self.data.val is None or self.cfg.eval_test else None,
                  "train_eval": self.data.train_eval if self.cfg.train_acc else None}
        for name, loader in splits.items():
            if loader is not None:
                m.update({f"{name}_{k}": v for k, v in evaluate(self.model, loader, self.device, self.data.task,
                                                                 self.eval_loss_fn, self.cfg.precision,
                                                                 self.cfg.channels_last).items()})
        return m

    def fit(self, resume_from: str | dict | None = None, overrides: Iterable[str] = ()) -> FitResult:
        cfg = self.cfg
        if self.out_dir is not None:  # the half-written temporary files that a kill -9 left behind a snapshot write
            for tmp in (self.out_dir / "snapshots").glob(".epoch_*.pt.*.tmp"):
                tmp.unlink(missing_ok=True)
        if resume_from:
            self.resume(resume_from, overrides)
        elif cfg.snapshot_init and self.epoch == 0:
            self.save_snapshot()
        self.tracker.set_tags({"precision": cfg.precision,
                               **({"precision_warning": self.precision_warning} if self.precision_warning else {})})
        for cb in self.callbacks:
            cb.on_train_start(self)
        n_batches = len(self.data.train)
        classification = self.data.task == "classification"
        with progress_bar(self.progress) as bar:
            ep_task = bar.add_task("epoch", total=cfg.epochs, completed=self.epoch)
            b_task = bar.add_task("batches", total=n_batches, quiet=True)
            while self.epoch < cfg.epochs and self._stop is None:
                self.model.train()
                t0 = time.perf_counter()
                loss_sum, seen, correct = 0.0, 0, 0
                bar.reset(b_task, total=n_batches)
                for self.batch_in_epoch, (x, y) in enumerate(self.data.train):
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    loss, out = self._train_step(to_memory_format(x, cfg.channels_last), y)
                    b = len(y)
                    loss_sum += loss * b
                    seen += b
                    if classification:
                        correct += int((out.argmax(1) == y).sum())
                    s = self.smoothed_loss
                    self.smoothed_loss = loss if not math.isfinite(s) else cfg.ema * s + (1 - cfg.ema) * loss
                    for cb in self.callbacks:
                        cb.on_step_end(self, loss, out, y)
                    bar.advance(b_task)
                    if self._stop is not None:
                        break
                    interrupts.check()  # a safe point: between batches (the epoch in progress is redone on resume)
                lr_used = self.lr
                if not self.schedule.per_step and self.schedule.scheduler is not None:
                    self.schedule.scheduler.step()
                self.epoch += 1
                metrics = {"train_loss": loss_sum / max(seen, 1), "lr": lr_used,
                           "epoch_time_s": time.perf_counter() - t0}
                if classification:
                    metrics["train_acc"] = correct / max(seen, 1)
                if self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs:
                    metrics.update(self.evaluate_all())
                for cb in self.callbacks:
                    cb.on_epoch_end(self, metrics)
                self.history.append({"epoch": self.epoch, **metrics})
                self.tracker.log_metrics(metrics, step=self.epoch)
                self.tracker.flush()  # before the snapshot: a snapshot's epochs are always logged (kill -9 between)
                stopping = interrupts.requested() is not None
                if self.should_snapshot() or self._stop is not None or stopping:  # a stop keeps the finished epoch
                    self.save_snapshot()
                desc = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in ("train_loss", "val_acc", "test_acc"))
                bar.update(ep_task, detail=desc)
                bar.advance(ep_task)
                interrupts.check()  # a safe point: between epochs
        for cb in self.callbacks:
            cb.on_train_end(self)
        converged = self._stop is None
        self.tracker.set_tags({"converged": converged, **({"stop_reason": self._stop} if self._stop else {})})
        return FitResult(self.epoch, converged, self._stop, self.history, self.last_snapshot)


def train_params(cfg: TrainConfig) -> dict:
    return {f"train.{k}": v for k, v in asdict(cfg).items()}


def run_params(train_cfg: TrainConfig, data: Data, **extra) -> dict:
    """Everything a training run should log as MLflow params."""
    return {**train_params(train_cfg), **data_params(data.config), "data.num_classes": data.num_classes,
            "data.input_shape": "x".join(map(str, data.input_shape)), **data.info, **extra}
