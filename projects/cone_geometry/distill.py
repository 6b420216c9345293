"""Knowledge distillation loss and the original's kill-plateaus rule (pure pieces; the runs are in runner.py)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import UsageError
from shared.train import Callback

KL_REDUCTIONS = ("mean", "batchmean")


def check_kd(temperature: float, alpha: float, kl_reduction: str) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {alpha}")
    if not temperature > 0:
        raise UsageError(f"--temperature must be > 0, got {temperature}")
    if kl_reduction not in KL_REDUCTIONS:
        raise UsageError(f"unknown --kl-reduction {kl_reduction!r}; use mean (the original's) or batchmean")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 22.0, alpha: float = 0.7, kl_reduction: str = "mean") -> torch.Tensor:
    """KL(log_softmax(s / T), softmax(t / T)) * alpha * T^2 + CE(s, y) * (1 - alpha).

    ``kl_reduction="mean"`` divides the KL sum by B * K (``nn.KLDivLoss()``'s default, what the original used);
    ``"batchmean"`` divides by B (the usual Hinton loss; K times larger).
    """
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    total = F.kl_div(log_p, q, reduction="sum")  # sum of q (log q - log p), 0 log 0 = 0
    kl = total / (student_logits.numel() if kl_reduction == "mean" else student_logits.shape[0])
    return kl * (alpha * temperature * temperature) + F.cross_entropy(student_logits, labels) * (1.0 - alpha)


class DistillLoss:
    """``loss_fn(model, x, y) -> (loss, output)`` for the shared Trainer: the teacher runs in eval mode, no grad."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float, kl_reduction: str = "mean"):
        check_kd(temperature, alpha, kl_reduction)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha, self.kl_reduction = temperature, alpha, kl_reduction

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = next(self.teacher.parameters()).device
        if x.device != dev:
            self.teacher.to(x.device)
        with torch.no_grad():
            t = self.teacher(x)
        out = model(x)
        return kd_loss(out, t, y, self.temperature, self.alpha, self.kl_reduction), out


class OriginalKillPlateaus(Callback):
    """The original ``--kill-plateaus``: stop when the loss has not halved by epoch 20.

    The smoothed loss restarts from 0 every epoch (avg <- 0.99 avg + 0.01 loss).  Its value at batch index 99 of the
    first epoch trained in this process is the start loss; at batch index 99 of epoch index 19, training stops
    (not converged) if the current value is 0 or NaN or start / current < 2.  Epochs shorter than 100 batches never
    trigger the rule, as in the original.
    """

    def __init__(self, at_epoch: int = 19, at_batch: int = 99, ratio: float = 2.0):
        self.at_epoch, self.at_batch, self.ratio = at_epoch, at_batch, ratio
        self.first_epoch: int | None = None
        self.start_loss: float | None = None
        self.avg = 0.0

    def on_train_start(self, trainer) -> None:
        self.first_epoch = trainer.epoch

    def on_step_end(self, trainer, loss: float, output, y) -> None:
        if trainer.batch_in_epoch == 0:
            self.avg = 0.0
        self.avg = self.avg * 0.99 + float(loss) * 0.01
        if trainer.batch_in_epoch != self.at_batch:
            return
        if trainer.epoch == self.first_epoch:
            self.start_loss = self.avg
        if trainer.epoch == self.at_epoch and self.start_loss is not None:
            if plateaus(self.start_loss, self.avg, self.ratio):
                trainer.request_stop(f"plateau: smoothed loss {self.avg:.4g} at epoch {self.at_epoch + 1} is not "
                                     f"{self.ratio:g}x below {self.start_loss:.4g} (--kill-plateaus)")

    def state_dict(self) -> dict:
        return {"start_loss": self.start_loss, "avg": self.avg}

    def load_state_dict(self, state: dict) -> None:
        self.start_loss, self.avg = state.get("start_loss"), state.get("avg", 0.0)


def plateaus(start_loss: float, current: float, ratio: float = 2.0) -> bool:
    """True when training is deemed stuck: current is 0 or NaN, or start / current < ratio."""
    if current == 0 or math.isnan(current):
        return True
    return start_loss / current < ratio
