"""Signals at the worst moments (issue 20): inside ``torch.save``, an MLflow ``log_batch``, a garbage-collection
callback and an Optuna storage call, twice within the grace period, and at random times into training, a sweep and a
study whose snapshot writes are a large share of an epoch.

Every case runs ``geomlab`` in a subprocess whose prelude patches the function to send the signal from inside it
(deterministic), or arms timers at random moments and re-runs the same command in the same process until the work
is done. Each asserts the exit code (143 for SIGTERM, 130 for SIGINT), no traceback, the runs' statuses and that no
finished work was lost: every snapshot loads, every snapshotted epoch's metrics are logged once, and resumed
training ends bit-identical to training that was never interrupted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from helpers import store_runs, store_steps

from shared import interrupts
from shared.files import load_snapshot

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ["train", "--arch", "lenet_small", "--dataset", "digits", "--width", "4", "--snapshot-every", "1"]


@pytest.fixture(autouse=True)
def _warm(warm_cache):
    """Each test's GEOMLAB_CACHE (``tmp/cache``) holds the digits split already."""


def _env(tmp: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GEOMLAB_NO_PROGRESS="1", MLFLOW_DISABLE_TELEMETRY="true",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", GEOMLAB_CACHE=str(tmp / "cache"),
               PYTHONUNBUFFERED="1", **extra)
    return env


def _sigint_default() -> None:
    """preexec_fn: a pytest-xdist worker ignores SIGINT, and its children would inherit that; give the default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _clean_stderr(err: str) -> None:
    assert "Traceback" not in err and "Exception ignored" not in err, err[-4000:]


# The prelude of every deterministic case: FAULT names where the signal is sent from (see below), SIG which one,
# AT on which call of that function, TWICE whether a second one follows at once (the user asking to stop *now*).
PRELUDE = r"""
import gc, json, os, signal, sys, time
fault, sig, at, twice = os.environ["FAULT"], int(os.environ["SIG"]), int(os.environ["AT"]), os.environ["TWICE"] == "1"
calls = {"n": 0}

def fire():
    signal.raise_signal(sig)     # to this thread: os.kill may wait on another one, and two then coalesce
    for _ in range(10000):       # bytecodes: Python runs the handler here, inside the patched function
        pass
    if twice:
        signal.raise_signal(sig)
        for _ in range(10000):
            pass

def due():
    calls["n"] += 1
    return calls["n"] == at

if fault == "torch.save":        # from the zip writer's write callback, in the middle of a snapshot
    import torch
    real_save = torch.save
    class Writer:
        def __init__(self, f):
            self.f, self.writes = f, 0
        def write(self, b):
            self.writes += 1
            if self.writes == 3 and self.armed:
                fire()
            return self.f.write(b)
        def __getattr__(self, name):
            return getattr(self.f, name)
    def save(obj, f, *a, **k):
        if not hasattr(f, "write"):  # MLflow's model logging saves to a path: not a snapshot
            return real_save(obj, f, *a, **k)
        w = Writer(f)
        w.armed = due()
        return real_save(obj, w, *a, **k)
    torch.save = save
elif fault in ("log_batch", "gc"):  # inside an MLflow metrics batch / a GC callback during the metrics write
    from mlflow.tracking import MlflowClient
    real_log_batch = MlflowClient.log_batch
    armed = {"gc": False}
    def on_gc(phase, info):
        if armed["gc"]:
            armed["gc"] = False
            fire()
    gc.callbacks.append(on_gc)
    def log_batch(self, run_id, metrics=(), *a, **k):
        if metrics and due():
            if fault == "gc":
                armed["gc"] = True
                gc.collect()
            else:
                fire()
        return real_log_batch(self, run_id, metrics, *a, **k)
    MlflowClient.log_batch = log_batch
elif fault.startswith("optuna."):  # inside an Optuna storage call (e.g. optuna.set_trial_state_values)
    from optuna.storages import RDBStorage
    name = fault.split(".", 1)[1]
    real = getattr(RDBStorage, name)
    def call(self, *a, **k):
        if due():
            fire()
        return real(self, *a, **k)
    setattr(RDBStorage, name, call)
from shared.cli import main
main(sys.argv[1:])
"""


def _inject(tmp_path: Path, fault: str, sig: int, at: int, args: list[str], twice: bool = False,
            timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE, *map(str, args)], cwd=tmp_path,
                          env=_env(tmp_path, FAULT=fault, SIG=str(int(sig)), AT=str(at), TWICE=str(int(twice))),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=_sigint_default)


def _check_training_kept(tmp_path: Path, code: int, res, min_epoch: int) -> list[int]:
    """The run is KILLED with ``code``, every snapshot loads, every snapshotted epoch is logged exactly once."""
    assert res.returncode == code, res.stderr[-4000:]
    _clean_stderr(res.stderr)
    assert "stop requested" in res.stderr and "interrupted (" in res.stderr, res.stderr[-2000:]
    db = tmp_path / "mlflow.db"
    ((run_id, status, _),) = store_runs(db)
    assert status == "KILLED"
    snaps = sorted((tmp_path / "out" / "snapshots").glob("epoch_*.pt"))
    assert not list((tmp_path / "out" / "snapshots").glob(".*.tmp"))  # no half-written file left
    for p in snaps:
        load_snapshot(p)  # raises on a truncated file
    newest = load_snapshot(snaps[-1])
    assert "optimizer_state_dict" in newest  # the newest one can resume
    done = [h["epoch"] for h in newest["history"]]
    assert done == list(range(1, len(done) + 1)) and len(done) >= min_epoch
    assert store_steps(db, run_id) == done  # logged once each: none lost, none twice
    return done


# ------------------------------------------------------------------------------------------------------------------
# deterministic: the signal is sent from inside the call that it must not cut


@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
def test_sigterm_inside_torch_save_finishes_the_snapshot(tmp_path, twice):
    # the 4th torch.save is epoch 2's snapshot: epoch_000 (the initialization), epoch_001, epoch_000 again without
    # its resume state, epoch_002
    res = _inject(tmp_path, "torch.save", signal.SIGTERM, 4, [*TRAIN, "--epochs", "40", "--out-dir", "out"],
                  twice=twice)
    done = _check_training_kept(tmp_path, 143, res, min_epoch=2)
    assert done == [1, 2]  # the stop came at the next safe point after the snapshot: the start of epoch 3


@pytest.mark.parametrize("fault, sig", [("log_batch", signal.SIGTERM), ("gc", signal.SIGTERM),
                                        ("log_batch", signal.SIGINT)])
def test_signal_inside_a_metrics_batch_or_a_gc_callback_stops_after_the_epoch(tmp_path, fault, sig):
    # the 2nd metrics batch is epoch 2's: the batch is written, the epoch snapshotted, then the run stops KILLED
    res = _inject(tmp_path, fault, sig, 2, [*TRAIN, "--epochs", "40", "--out-dir", "out"])
    done = _check_training_kept(tmp_path, 128 + sig, res, min_epoch=2)
    assert done == [1, 2]


SPACE = ("params:\n  lr: {type: float, low: 1.0e-2, high: 2.0e-1, log: true}\n"
         "fixed: {arch: mlp, width: 16, dataset: digits, epochs: EPOCHS}\n")


def _sweep_args(tmp_path: Path, epochs: int, n: int) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("EPOCHS", str(epochs)))
    return ["sweep", "shared", "train", "--space", str(space), "--n-trials", str(n), "--study", "s", "--storage",
            f"sqlite:///{tmp_path / 'optuna.db'}", "--metric", "test_acc", "--seed", "1"]


def _study(tmp_path: Path):
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def _sweep_runs(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], filter_string="tags.optuna_study = 's'")
    return ([r for r in runs if r.data.tags.get("entry_point") == "sweep"],
            [r for r in runs if r.data.tags.get("entry_point") != "sweep"])


def test_sigterm_inside_an_optuna_report_requeues_the_trial(tmp_path):
    # the 2nd intermediate value of trial 0 (its epoch 2): the write finishes, the trial stops between batches
    res = _inject(tmp_path, "optuna.set_trial_intermediate_value", signal.SIGTERM, 2, _sweep_args(tmp_path, 20, 2))
    assert res.returncode == 143, res.stderr[-4000:]
    _clean_stderr(res.stderr + res.stdout)
    study = _study(tmp_path)
    assert {t.number: t.state.name for t in study.trials} == {0: "FAIL", 1: "WAITING"}
    assert sorted(study.trials[0].intermediate_values) == [1, 2]  # the value being written when the signal came
    assert "SIGTERM" in study.trials[0].user_attrs["error"]
    (parent,), children = _sweep_runs(tmp_path)
    assert parent.info.status == "KILLED" and [r.info.status for r in children] == ["KILLED"]


def test_sigterm_inside_a_trial_state_change_keeps_the_finished_trial(tmp_path):
    # the 1st state write is trial 0's COMPLETE (a new trial is created RUNNING): it is written, then the sweep
    # stops between trials, before trial 1 is asked for
    res = _inject(tmp_path, "optuna.set_trial_state_values", signal.SIGTERM, 1, _sweep_args(tmp_path, 2, 3))
    assert res.returncode == 143, res.stderr[-4000:]
    _clean_stderr(res.stderr + res.stdout)
    study = _study(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    (parent,), children = _sweep_runs(tmp_path)
    assert parent.info.status == "KILLED" and [r.info.status for r in children] == ["FINISHED"]


# ------------------------------------------------------------------------------------------------------------------
# randomized: SIGTERM at random moments, the same command re-run in the same process until it finishes

RANDOM = r"""
import json, os, random, signal, sys, threading, time
import torch
from shared import interrupts
from shared.cli import main

per_write = float(os.environ["SLOW_WRITE"])   # seconds per write call of torch.save: snapshots take a large share
real_save = torch.save
class Slow:
    def __init__(self, f):
        self.f = f
    def write(self, b):
        time.sleep(per_write)
        return self.f.write(b)
    def __getattr__(self, name):
        return getattr(self.f, name)
torch.save = lambda obj, f, *a, **k: real_save(obj, Slow(f) if hasattr(f, "write") else f, *a, **k)

argv, n = json.loads(os.environ["ARGV"]), int(os.environ["TRIES"])
lo, hi = map(float, os.environ["WINDOW"].split(","))
rng = random.Random(int(os.environ["SEED"]))
interrupts.install()
out = []
for i in range(n + 1):                       # n interrupted tries, then one that finishes
    delay = rng.uniform(lo, hi) if i < n else None
    timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)) if delay else None
    if timer:
        timer.start()
    t0 = time.monotonic()
    try:
        main(argv)
        rc = 0
    except SystemExit as e:
        rc = e.code
    if timer:
        timer.cancel()
        timer.join()
    time.sleep(0.05)                        # a signal of a timer that fired at the very end is handled here
    out.append({"rc": rc, "delay": delay, "took": time.monotonic() - t0})
    print("try", i, out[-1], file=sys.stderr, flush=True)
    interrupts.reset()
with open(os.environ["RESULT"], "w") as f:
    json.dump(out, f)
"""


def _random_tries(tmp_path: Path, argv: list[str], tries: int, window: tuple[float, float], seed: int,
                  slow_write: float, timeout: float = 900) -> tuple[list[dict], str]:
    result = tmp_path / "tries.json"
    res = subprocess.run([sys.executable, "-c", RANDOM], cwd=tmp_path, capture_output=True, text=True,
                         timeout=timeout, preexec_fn=_sigint_default,
                         env=_env(tmp_path, ARGV=json.dumps(argv), TRIES=str(tries), WINDOW=f"{window[0]},{window[1]}",
                                  SEED=str(seed), SLOW_WRITE=str(slow_write), RESULT=str(result)))
    assert res.returncode == 0, res.stderr[-4000:]
    _clean_stderr(res.stderr + res.stdout)
    out = json.loads(result.read_text())
    assert [t["rc"] for t in out[:-1]] and {t["rc"] for t in out[:-1]} <= {0, 143}, out
    assert out[-1]["rc"] == 0, res.stderr[-4000:]
    return out, res.stderr


def _weights(path: Path) -> dict:
    return load_snapshot(path)["model_state_dict"]


@pytest.mark.timeout(1200)
def test_random_sigterms_into_training_lose_nothing_and_resume_bit_identical(tmp_path):
    epochs = 12
    # the reference: the same training, never interrupted (the slow writes do not change a number)
    ref = subprocess.run([sys.executable, "-m", "shared.cli", *TRAIN, "--epochs", str(epochs), "--out-dir", "ref"],
                         cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    # 8 SIGTERMs, each 0.3-1.5 s into a try: an epoch is ~0.1 s of batches and ~0.15 s of snapshot writing
    out, err = _random_tries(tmp_path, [*TRAIN, "--epochs", str(epochs), "--out-dir", "out"], 8, (0.3, 1.5), 20,
                             slow_write=0.002)
    assert sum(t["rc"] == 143 for t in out) >= 4, out  # most tries were cut somewhere: the test is not vacuous
    db = tmp_path / "mlflow.db"
    runs = {name: (rid, status) for rid, status, name in store_runs(db)}
    (rid, status), = [v for k, v in runs.items() if v[0] != _ref_run(tmp_path)]
    assert status == "FINISHED"  # the same run continued by every try, closed by the last one
    assert store_steps(db, rid) == list(range(1, epochs + 1))  # each epoch logged once: none lost, none twice
    snaps = tmp_path / "out" / "snapshots"
    assert sorted(p.name for p in snaps.glob("epoch_*.pt")) == [f"epoch_{e:03d}.pt" for e in range(epochs + 1)]
    assert not list(snaps.glob(".*.tmp"))
    for e in range(epochs + 1):  # every epoch's weights, bit-identical to the uninterrupted run's
        a, b = _weights(snaps / f"epoch_{e:03d}.pt"), _weights(tmp_path / "ref" / "snapshots" / f"epoch_{e:03d}.pt")
        assert all(torch.equal(a[k], b[k]) for k in b), f"epoch {e} differs"


def _ref_run(tmp_path: Path) -> str:
    snap = load_snapshot(sorted((tmp_path / "ref" / "snapshots").glob("epoch_*.pt"))[-1])
    return snap["run_id"]


@pytest.mark.timeout(1200)
def test_random_sigterms_into_a_sweep_finish_the_budget_once(tmp_path):
    n = 3
    out, _ = _random_tries(tmp_path, _sweep_args(tmp_path, 6, n), 5, (2.0, 6.0), 7, slow_write=0.001)
    study = _study(tmp_path)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == n and set(states) <= {"COMPLETE", "FAIL"}, states  # none RUNNING, none lost
    for t in study.trials:
        if t.state.name == "FAIL":
            assert t.user_attrs["error"].startswith("interrupted (SIGTERM)"), t.user_attrs
    (parent,), children = _sweep_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}
    finished = sorted(int(r.data.tags["optuna_trial"]) for r in children if r.info.status == "FINISHED")
    assert finished == sorted(t.number for t in study.trials if t.state.name == "COMPLETE")  # one run per trial


@pytest.mark.timeout(1800)
def test_random_sigterms_into_a_study_finish_it_without_failed_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    argv = ["hyperplane-bias", "study", "--scale", "smoke", "--seeds", "0", "--epochs", "2", "--max-test", "100"]
    out, _ = _random_tries(tmp_path, argv, 3, (4.0, 12.0), 3, slow_write=0.001, timeout=1500)
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()])
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}, [(r.info.run_name, r.info.status) for r in runs]
    (parent,) = [r for r in runs if r.data.tags.get("entry_point") == "study" and r.info.status == "FINISHED"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    doc = json.loads(mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/report/study.json"))
    names = [k["name"] for k in doc["children"]]
    assert len(names) == len(set(names))
    for kid in doc["children"]:  # every child's run finished (a KILLED one was resumed or redone)
        assert c.get_run(kid["run_id"]).info.status == "FINISHED", kid


# ------------------------------------------------------------------------------------------------------------------
# the module itself (in this process)


def _signal_self(sig: int, until=lambda: True) -> None:
    """Send ``sig`` to this thread (``raise_signal``: under load, a signal sent with os.kill to the process may wait
    on another thread, and two such signals coalesce into one) and wait until its handler has run."""
    signal.raise_signal(sig)
    deadline = time.monotonic() + 30
    while not until() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_a_signal_inside_a_critical_section_waits_for_its_end():
    interrupts.install()
    with interrupts.critical():
        _signal_self(signal.SIGTERM, lambda: interrupts.requested() is not None)
        interrupts.check()  # inside: does not raise
        assert interrupts.requested() == signal.SIGTERM
    with pytest.raises(interrupts.Terminated) as e:
        interrupts.check()
    assert e.value.exit_code == 143 and interrupts.signal_name(e.value) == "SIGTERM"


def test_a_second_signal_within_the_grace_period_stops_at_once_but_not_inside_a_critical_section():
    interrupts.install()
    _signal_self(signal.SIGINT, lambda: interrupts.requested() is not None)
    reached = []
    with pytest.raises(interrupts.Interrupted) as e:
        with interrupts.critical():
            _signal_self(signal.SIGINT, lambda: interrupts._state.urgent)
            reached.append("end of the section")  # the critical section ran to its end
    assert reached and e.value.exit_code == 130
    interrupts.reset()
    _signal_self(signal.SIGINT, lambda: interrupts.requested() is not None)
    with pytest.raises(interrupts.Interrupted):  # outside any section: the handler raises at once
        _signal_self(signal.SIGINT, lambda: False)
