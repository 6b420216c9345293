"""Accuracy statistics shared by every project (pure functions on tensors)."""
from __future__ import annotations

from typing import Sequence

import torch


def topk_correct(logits: torch.Tensor, y: torch.Tensor, ks: Sequence[int]) -> list[int]:
    """Number of samples whose own label is among their top-k logits, for each k (k capped at the class count)."""
    kmax = min(max(ks), logits.shape[-1])
    hit = logits.topk(kmax, dim=-1).indices.eq(y.reshape(-1, 1))
    return [int(hit[:, :min(k, kmax)].any(dim=-1).sum()) for k in ks]


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Fraction of samples whose own label is among their top-k logits (the original checked the whole batch's)."""
    return topk_correct(logits, y, (k,))[0] / max(len(y), 1)
