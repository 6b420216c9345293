"""SGDR: the closed form and the stateful scheduler vs a literal transcription of the original class."""
import math

import pytest
import torch

from projects.feature_amounts.sgdr import SGDR, cycle_of, nominal_steps, sgdr_lr
from shared.errors import UsageError


class OriginalLRS:
    """Literal transcription of lib/Training/learning_rate_scheduling.LearningRateScheduler (per-step use)."""

    def __init__(self, lr_wr_epochs, num_batches, lr_wr_min, lr_wr_max, lr_wr_mul):
        self.lr_wr_epochs = lr_wr_epochs
        self.num_batches = num_batches
        self.lr_wr_min = lr_wr_min
        self.lr_wr_max = lr_wr_max
        self.lr_wr_mul = lr_wr_mul
        self.scheduler_epoch = 0

    def adjust_learning_rate(self, b):
        cur = self.scheduler_epoch + float(b) / self.num_batches
        lr = self.lr_wr_min + 0.5 * (self.lr_wr_max - self.lr_wr_min) * (1 + math.cos(math.pi * cur / self.lr_wr_epochs))
        if self.scheduler_epoch > 0 and self.scheduler_epoch % self.lr_wr_epochs == 0:
            self.lr_wr_epochs *= self.lr_wr_mul
            self.scheduler_epoch = 0
        return lr


def original_trace(epochs, steps_per_epoch, num_batches, first=10, mul=2, lr_max=0.01, lr_min=1e-5):
    s = OriginalLRS(first, num_batches, lr_min, lr_max, mul)
    out = []
    for _ in range(epochs):
        for b in range(1, steps_per_epoch + 1):
            out.append(s.adjust_learning_rate(b))
        s.scheduler_epoch += 1  # main.py increments after every epoch
    return out


@pytest.mark.parametrize("steps,nb,first,mul", [(4, 3, 10, 2), (1, 1, 10, 2), (391, 390, 10, 2), (5, 5, 3, 3), (2, 2, 4, 1)])
def test_closed_form_matches_original(steps, nb, first, mul):
    epochs = 150 if steps < 100 else 12
    ref = original_trace(epochs, steps, nb, first, mul)
    got = [sgdr_lr(e, b, nb, 0.01, 1e-5, first, mul) for e in range(epochs) for b in range(1, steps + 1)]
    assert got == pytest.approx(ref, rel=0, abs=1e-15)
    sched = SGDR(nb, 0.01, 1e-5, first, mul)
    got2 = []
    for _ in range(epochs):
        for _ in range(steps):
            got2.append(sched.step())
        sched.epoch_end()
    assert got2 == pytest.approx(ref, rel=0, abs=1e-15)


def test_restart_noticed_at_first_step_of_new_cycle():
    nb = 390
    # last step of epoch 9 overshoots the cycle end slightly (391 steps, 390 nominal)
    assert sgdr_lr(9, 391, nb) > 1e-5 and sgdr_lr(9, 390, nb) == pytest.approx(1e-5)
    # first step of epoch 10 still uses the old cycle (near minimum), the second is back near the maximum
    assert sgdr_lr(10, 1, nb) < 1e-4
    assert sgdr_lr(10, 2, nb) > 0.0099
    assert [cycle_of(e)[1:] for e in (0, 9, 10, 29, 30, 69, 70, 149)] == [(0, 10), (0, 10), (10, 20), (10, 20), (30, 40), (30, 40), (70, 80), (70, 80)]


def test_scheduler_sets_optimizer_lr_and_resumes():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=123.0)
    s = SGDR(3, optimizer=opt)
    for _ in range(7):
        for _ in range(3):
            s.step()
        s.epoch_end()
    s.step()
    assert opt.param_groups[0]["lr"] == s.last_lr == sgdr_lr(7, 1, 3)
    state = s.state_dict()
    s2 = SGDR(99, lr_max=1.0)
    s2.load_state_dict(state)
    assert [s2.step() for _ in range(5)] == [s.step() for _ in range(5)]


def test_cycle_end_and_errors():
    s = SGDR(10)
    assert [e for e in range(150) if s.cycle_end(e)] == [9, 29, 69, 149]
    assert nominal_steps(50000, 128) == 390 and nominal_steps(50, 128) == 1
    with pytest.raises(UsageError):
        SGDR(10, mul=1.5)
    with pytest.raises(UsageError):
        SGDR(10, lr_min=1.0, lr_max=0.1)
    with pytest.raises(UsageError):
        SGDR(10, first_cycle=0)
