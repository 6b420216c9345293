"""Knowledge distillation loss (pure pieces; the runs are in runner.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.errors import UsageError

KL_REDUCTIONS = ("mean", "batchmean")


def check_kd(temperature: float, alpha: float, kl_reduction: str) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"--kl-weight (alpha) must be in [0, 1], got {alpha}")
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
