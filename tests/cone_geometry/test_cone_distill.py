"""Distillation loss against its literal formula, and the original kill-plateaus rule."""
from __future__ import annotations

import math

import pytest
import torch

from projects.cone_geometry.distill import DistillLoss, kd_loss
from shared.train import KillPlateaus

plateaus = KillPlateaus.stuck
from shared.errors import UsageError


def _literal(s, t, y, T, alpha, reduction):
    B, K = s.shape
    kl = 0.0
    for b in range(B):
        ps = [math.exp(v / T) for v in s[b].tolist()]
        pt = [math.exp(v / T) for v in t[b].tolist()]
        zs, zt = sum(ps), sum(pt)
        for k in range(K):
            q = pt[k] / zt
            kl += q * (math.log(q) - math.log(ps[k] / zs))
    kl /= (B * K) if reduction == "mean" else B
    ce = 0.0
    for b in range(B):
        z = sum(math.exp(v) for v in s[b].tolist())
        ce -= math.log(math.exp(s[b, y[b]].item()) / z)
    ce /= B
    return kl * alpha * T * T + ce * (1 - alpha)


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
@pytest.mark.parametrize("T,alpha", [(22.0, 0.7), (1.0, 0.0), (4.0, 1.0)])
def test_kd_loss_matches_the_formula(reduction, T, alpha):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 10, generator=g, dtype=torch.float64) * 3, torch.randn(5, 10, generator=g, dtype=torch.float64) * 3
    y = torch.tensor([0, 3, 9, 2, 2])
    got = kd_loss(s, t, y, T, alpha, reduction).item()
    assert got == pytest.approx(_literal(s, t, y, T, alpha, reduction), rel=1e-10)


def test_mean_reduction_is_k_times_smaller_than_batchmean():
    s, t, y = torch.randn(4, 10), torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    a = kd_loss(s, t, y, 5.0, 1.0, "mean")
    b = kd_loss(s, t, y, 5.0, 1.0, "batchmean")
    assert b.item() == pytest.approx(10 * a.item(), rel=1e-5)


def test_distill_loss_uses_a_frozen_teacher_in_eval_mode():
    teacher = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.9))
    student = torch.nn.Linear(3, 4)
    loss_fn = DistillLoss(teacher, 2.0, 0.5)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    loss1, out = loss_fn(student, x, y)
    loss2, _ = loss_fn(student, x, y)
    assert not teacher.training and loss1.item() == loss2.item()  # dropout off: deterministic teacher
    loss1.backward()
    assert student.weight.grad is not None and teacher[0].weight.grad is None
    assert torch.equal(out, student(x))


@pytest.mark.parametrize("kw,msg", [({"alpha": 1.5}, "--kl-weight"), ({"temperature": 0.0}, "--temperature"),
                                    ({"kl_reduction": "sum"}, "--kl-reduction")])
def test_bad_kd_options(kw, msg):
    args = {"temperature": 22.0, "alpha": 0.7, "kl_reduction": "mean", **kw}
    with pytest.raises(UsageError, match=msg):
        DistillLoss(torch.nn.Linear(2, 2), **args)


class FakeTrainer:
    def __init__(self):
        self.epoch = 0
        self.batch_in_epoch = 0
        self.stopped = None

    def request_stop(self, reason):
        self.stopped = reason


def _run(losses_per_epoch, batches=100, start_epoch=0):
    cb = KillPlateaus("loss-ratio")  # the original's rule: epoch 20, batch 100, ratio 2
    tr = FakeTrainer()
    tr.epoch = start_epoch
    cb.on_train_start(tr)
    for e, loss in enumerate(losses_per_epoch, start=start_epoch):
        tr.epoch = e
        for b in range(batches):
            tr.batch_in_epoch = b
            cb.on_step_end(tr, loss, None, None)
            if tr.stopped:
                return tr, cb, e, b
    return tr, cb, None, None


def test_kill_plateaus_stops_at_epoch_20_batch_100_when_loss_did_not_halve():
    tr, cb, e, b = _run([2.0] * 10 + [1.2] * 15)
    assert tr.stopped and (e, b) == (19, 99)
    # the smoothed loss restarts from 0 each epoch: at batch 99 it is loss * (1 - 0.99^100)
    assert cb.start_loss == pytest.approx(2.0 * (1 - 0.99 ** 100))


def test_kill_plateaus_keeps_a_learning_run_and_ignores_short_epochs():
    tr, _, _, _ = _run([2.0] * 10 + [0.9] * 15)
    assert tr.stopped is None
    tr, _, _, _ = _run([2.0] * 25, batches=99)  # fewer than 100 batches: never triggers
    assert tr.stopped is None


def test_plateau_rule():
    assert plateaus(1.0, 0.0) and plateaus(1.0, float("nan")) and plateaus(1.0, 0.6)
    assert not plateaus(1.0, 0.5)
