"""SGDR (Loshchilov & Hutter) exactly as the original's ``LearningRateScheduler`` applies it: once per optimizer step.

The original keeps a cycle-local epoch counter ``e`` (incremented by the training loop after every epoch) and a cycle
length ``T`` (first ``first_cycle`` epochs, then multiplied by ``mul`` at each restart). Before the ``b``-th optimizer
step of an epoch (``b`` = 1, 2, ...) it sets::

    cur = e + b / num_batches          # num_batches = floor(N_train / batch_size)
    lr  = lr_min + (lr_max - lr_min) * (1 + cos(pi * cur / T)) / 2
    if e > 0 and e % T == 0:           # the restart is noticed *after* computing this step's lr
        T, e = T * mul, 0

so the first step of a new cycle still uses the old cycle's (near-minimum) lr, and because the epoch has
``ceil(N/B)`` steps while ``cur`` advances by ``1/floor(N/B)``, ``cur`` slightly overshoots each integer at an epoch's
last step. :func:`sgdr_lr` is the closed form of that rule in terms of the global epoch; :class:`SGDR` is a small
stateful wrapper with ``state_dict`` / ``load_state_dict`` for snapshots, and :class:`StepwiseSGDR` drives it from the
shared Trainer as the registered schedule ``sgdr`` (``TrainConfig(schedule="sgdr", schedule_options=...)``).
"""
from __future__ import annotations

import math
from typing import Any

from shared.errors import UsageError
from shared.train import SCHEDULES, Schedule


def nominal_steps(num_train: int, batch_size: int) -> int:
    """floor(N / B), the original's divisor; at least 1 (the original divided by zero when N < B)."""
    if batch_size < 1 or num_train < 1:
        raise UsageError(f"need a positive dataset size and batch size, got N={num_train}, B={batch_size}")
    return max(1, num_train // batch_size)


def _check(first_cycle: int, mul: int, lr_max: float, lr_min: float) -> None:
    if int(first_cycle) != first_cycle or first_cycle < 1:
        raise UsageError(f"--lr-wr-epochs must be a positive integer number of epochs, got {first_cycle}")
    if int(mul) != mul or mul < 1:
        raise UsageError(f"--lr-wr-mul must be a positive integer, got {mul}")
    if not (lr_max > 0 and 0 <= lr_min <= lr_max):
        raise UsageError(f"need 0 <= --lr-wr-min <= --lr and a positive learning rate, got {lr_min}, {lr_max}")


def cycle_of(epoch: int, first_cycle: int = 10, mul: int = 2) -> tuple[int, int, int]:
    """(k, start, length) of the cycle that contains global epoch ``epoch`` (0-based)."""
    k, start, length = 0, 0, int(first_cycle)
    while epoch >= start + length:
        start += length
        length *= int(mul)
        k += 1
    return k, start, length


def sgdr_lr(epoch: int, step: int, num_batches: int, lr_max: float = 0.01, lr_min: float = 1e-5,
            first_cycle: int = 10, mul: int = 2) -> float:
    """The lr of the ``step``-th (1-based) optimizer step of global epoch ``epoch`` (0-based)."""
    _check(first_cycle, mul, lr_max, lr_min)
    if epoch < 0 or step < 1 or num_batches < 1:
        raise ValueError(f"need epoch >= 0, step >= 1, num_batches >= 1; got {epoch}, {step}, {num_batches}")
    k, start, length = cycle_of(epoch, first_cycle, mul)
    if k > 0 and epoch == start and step == 1:
        local, period = length // int(mul), length // int(mul)  # restart not yet noticed: old cycle, e = T_old
    else:
        local, period = epoch - start, length
    cur = local + step / num_batches
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * cur / period))


class SGDR:
    """Per-step SGDR. Call :meth:`step` before every optimizer step (it returns the lr and, if an optimizer was
    given, writes it into every param group) and :meth:`epoch_end` after every epoch."""

    def __init__(self, num_batches: int, lr_max: float = 0.01, lr_min: float = 1e-5, first_cycle: int = 10,
                 mul: int = 2, optimizer: Any = None):
        _check(first_cycle, mul, lr_max, lr_min)
        if num_batches < 1:
            raise UsageError(f"num_batches must be >= 1, got {num_batches}")
        self.num_batches = int(num_batches)
        self.lr_max, self.lr_min = float(lr_max), float(lr_min)
        self.first_cycle, self.mul = int(first_cycle), int(mul)
        self.optimizer = optimizer
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # optimizer steps taken in the current epoch
        self.last_lr = self.lr_max

    def step(self) -> float:
        self.step_in_epoch += 1
        lr = sgdr_lr(self.epoch, self.step_in_epoch, self.num_batches, self.lr_max, self.lr_min,
                     self.first_cycle, self.mul)
        if self.optimizer is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = lr
        self.last_lr = lr
        return lr

    def epoch_end(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0

    def cycle_end(self, epoch: int) -> bool:
        """True if global epoch ``epoch`` (0-based) is the last epoch of a cycle."""
        _, start, length = cycle_of(epoch, self.first_cycle, self.mul)
        return epoch == start + length - 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "num_batches": self.num_batches,
                "lr_max": self.lr_max, "lr_min": self.lr_min, "first_cycle": self.first_cycle, "mul": self.mul,
                "last_lr": self.last_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in ("epoch", "step_in_epoch", "num_batches", "first_cycle", "mul"):
            setattr(self, k, int(state[k]))
        for k in ("lr_max", "lr_min", "last_lr"):
            setattr(self, k, float(state[k]))


class StepwiseSGDR:
    """:class:`SGDR` as a per-step scheduler of the shared Trainer (registered as the schedule ``sgdr``).

    The Trainer calls :meth:`step` after every optimizer step; it writes the lr of the *next* step (the first step's
    at construction), rolling over to the next epoch after the loader's last batch (``ceil(N/B)`` steps, while the
    formula advances by ``1/floor(N/B)``, as the original). ``last_step_lr`` is the lr of the step just taken.
    """

    def __init__(self, optimizer: Any, steps_per_epoch: int, num_batches: int, lr_max: float, lr_min: float = 1e-5,
                 first_cycle: int = 10, mul: int = 2):
        self.sgdr = SGDR(num_batches, lr_max, lr_min, first_cycle, mul, optimizer)
        self.steps_per_epoch = int(steps_per_epoch)
        self.last_step_lr = float("nan")
        self.sgdr.step()

    def step(self) -> None:
        self.last_step_lr = self.sgdr.last_lr
        if self.sgdr.step_in_epoch >= self.steps_per_epoch:
            self.sgdr.epoch_end()
        self.sgdr.step()

    def state_dict(self) -> dict[str, Any]:
        return {**self.sgdr.state_dict(), "steps_per_epoch": self.steps_per_epoch, "last_step_lr": self.last_step_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sgdr.load_state_dict(state)
        self.steps_per_epoch, self.last_step_lr = int(state["steps_per_epoch"]), float(state["last_step_lr"])


def sgdr_options(lr_min: float, first_cycle: int, mul: int) -> dict[str, Any]:
    """``TrainConfig.schedule_options`` of the ``sgdr`` schedule."""
    return {"lr_min": lr_min, "first_cycle": first_cycle, "mul": mul}


@SCHEDULES.register("sgdr")
def _sgdr_schedule(optimizer, cfg, loader) -> Schedule:
    """SGDR from ``cfg.lr`` (the maximum) with ``cfg.schedule_options`` (:func:`sgdr_options`), stepped per step."""
    o = {**sgdr_options(1e-5, 10, 2), **cfg.schedule_options}
    return Schedule(StepwiseSGDR(optimizer, len(loader), nominal_steps(loader.num_samples, loader.batch_size),
                                 cfg.lr, o["lr_min"], o["first_cycle"], o["mul"]), per_step=True)
