"""One trial while it runs: the per-epoch reporter (Optuna pruning), the heartbeat thread, the outcome."""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from shared.train import Callback


class TrialReporter(Callback):
    """Reports ``metric`` after every epoch of every Trainer of the trial; stops the training when Optuna prunes.

    Pruning asks the trainer to stop (its run finishes normally, with stop_reason) instead of raising through the
    project's code; later trainers of the same pruned trial stop before their first epoch. Steps are cumulative over
    the trial's trainers (teacher then student: epochs 1..E then E+1..)."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric
        self.values: list[float] = []
        self.seen: set[str] = set()
        self.pruned_at: int | None = None
        self.run_ids: list[str] = []
        self._offset = self._base = 0

    def on_train_start(self, trainer) -> None:
        self._base = self._offset
        rid = getattr(trainer.tracker, "run_id", None)
        if rid and rid not in self.run_ids:
            self.run_ids.append(rid)
        if self.pruned_at is not None:
            trainer.request_stop(f"pruned by Optuna (trial {self.trial.number})")

    def on_epoch_end(self, trainer, metrics: dict) -> None:
        self.seen.update(metrics)
        if self.pruned_at is not None or self.metric not in metrics:
            return
        value = float(metrics[self.metric])
        step = self._base + trainer.epoch
        self.values.append(value)
        if not math.isfinite(value):
            return
        self.trial.report(value, step)
        if self.trial.should_prune():
            self.pruned_at = step
            trainer.request_stop(f"pruned by Optuna (trial {self.trial.number}) at epoch {trainer.epoch}")

    def on_train_end(self, trainer) -> None:
        self._offset = self._base + trainer.epoch


class Heartbeat:
    def __init__(self, storage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"optuna-heartbeat-{trial_id}")

    def _run(self) -> None:
        interval = self.storage.get_heartbeat_interval()
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # a transient database error must not kill the trial; the next beat retries
                pass
            if self._stop.wait(interval):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@dataclass
class Outcome:
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | None = None
    error: str | None = None
    fatal: bool = False  # stop the sweep (configuration error)
    invalid: str | None = None  # not a valid point of the command (recorded as PRUNED, not counted in the budget)
    violation: float = 1.0  # an invalid point's distance from validity: the trial's constraint for the sampler
    traceback: str | None = None  # of an unexpected exception


