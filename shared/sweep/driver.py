"""The sweep: set-up (everything checked before the first trial), the study and its MLflow parent run, and the
trial loop shared by every worker of the study."""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import time
import traceback
from dataclasses import dataclass

import typer

from shared import interrupts
from shared.errors import InvalidPoint, UsageError, check

from .command import check_metric, check_space, command_args, first_line, fmt, params_by_name, resolve_command
from .mlflow_store import check_tracking, create_run_retrying, tracking_faults
from .samplers import PRUNERS, SAMPLERS
from .space import load_space
from .summary import summarize
from .storage import StudyLock, normalize_storage, open_storage, quiet_optuna, redact
from .trial import Heartbeat, Outcome, TrialReporter

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Sampled points in a row that are not valid configurations of the command before the sweep gives up.
MAX_INVALID_IN_A_ROW = 500  # the sampler learns the valid region from the constraint values of invalid points



@dataclass
class Settings:
    project: str
    entry: str
    space_path: str
    n_trials: int
    study: str
    storage: str
    sampler: str
    pruner: str
    metric: str
    direction: str | None
    seed: int | None
    objective: str
    heartbeat: int
    max_failures: int


WAIT = object()  # _next_trial: nothing to take now, but the budget is not finished


class Sweep:
    """One worker of a study. ``root`` is the click group of the geomlab app whose commands the trials run."""

    def __init__(self, s: Settings, root):
        self.s, self.root = s, root
        self.client = None
        self.parent_id: str | None = None
        self.experiment_id: str | None = None

    # -- set-up: everything checked before the first trial ---------------------------------------------------------
    def prepare(self) -> None:
        s = self.s
        check(STUDY_NAME.match(s.study) is not None, f"--study {s.study!r}: use letters, digits, '.', '_' or '-'")
        check(s.n_trials >= 1, f"--n-trials must be >= 1, got {s.n_trials}")
        check(s.heartbeat >= 1, f"--heartbeat must be >= 1 second, got {s.heartbeat}")
        check(s.objective in ("last", "best"), f"--objective must be last or best, got {s.objective!r}")
        s.direction = None if s.direction in ("", "auto") else s.direction
        check(s.direction in (None, "maximize", "minimize"),
              f"--direction must be maximize, minimize or auto, got {s.direction!r}")
        self.space = load_space(s.space_path)
        self.target = resolve_command(self.root, s.project, s.entry)
        check_space(self.space, self.target)
        check_metric(s.metric, self.space, self.target)
        if s.direction is None:
            s.direction = "minimize" if re.search(r"loss|err|time", s.metric) else "maximize"
        self.sampler_factory = SAMPLERS.get(s.sampler)
        epochs = self.space.fixed.get("epochs")
        self.pruner = PRUNERS.get(s.pruner)(epochs if isinstance(epochs, int) else None)
        self.grid_size = None
        if s.sampler == "grid":
            self.sampler_factory(self.space, None)  # checks the grid can be enumerated
            self.grid_size = self.space.grid_size()
        s.storage = normalize_storage(s.storage)
        self.lock = StudyLock(s.storage, s.study)
        self.lock.connect()
        self.tracking_uri = check_tracking()
        with self.lock.hold():
            self.rdb = open_storage(s.storage, s.heartbeat, self.lock)
            self._open_study()
            with tracking_faults(self.tracking_uri):
                self._open_parent()

    def close(self) -> None:
        if getattr(self, "lock", None) is not None:
            self.lock.close()

    def config(self) -> dict:
        return {"project": self.target.project, "entry": self.target.entry, "metric": self.s.metric,
                "objective": self.s.objective, "params": self.space.params, "fixed": self.space.fixed}

    def _open_study(self) -> None:
        import optuna

        s = self.s
        with quiet_optuna():
            self.study = optuna.create_study(study_name=s.study, storage=self.rdb, direction=s.direction,
                                             sampler=self.sampler_factory(self.space, s.seed), pruner=self.pruner,
                                             load_if_exists=True)
        have = self.study.user_attrs.get("geomlab")
        want = json.loads(json.dumps(self.config()))
        if have is None:
            self.study.set_user_attr("geomlab", want)
        else:
            diff = [k for k in want if have.get(k) != want[k]]
            check(not diff, f"study {s.study} in {redact(s.storage)} was started with another "
                            f"{' and '.join(diff)}; re-run it with the same command and space, or pass a new --study")
        got = self.study.direction.name.lower()
        check(got == s.direction, f"study {s.study} was created to {got} its metric; pass --direction {got} or a "
                                  "new --study")

    def _open_parent(self) -> None:  # called under the study lock
        import mlflow
        from mlflow.tracking import MlflowClient

        s = self.s
        self.client = MlflowClient(self.tracking_uri)
        outer = os.environ.get("MLFLOW_RUN_ID")  # inside `mlflow run ... -e sweep`
        pid = self.study.user_attrs.get("mlflow_parent_run_id")
        if pid:
            try:
                run = self.client.get_run(pid)
            except Exception:
                raise UsageError(f"study {s.study}'s MLflow parent run {pid} is not in the tracking store "
                                 f"{self.tracking_uri}; set MLFLOW_TRACKING_URI to the store the study was started "
                                 "with, or pass a new --study") from None
            check(run.info.lifecycle_stage == "active", f"study {s.study}'s MLflow parent run {pid} was deleted; "
                                                        "restore it (mlflow gc not yet run) or pass a new --study")
            if outer and outer != pid:
                self.client.set_tag(outer, "sweep_parent_run_id", pid)
            self.experiment_id = run.info.experiment_id
        else:
            active = mlflow.active_run()  # a sweep started inside another run (a demo) nests under it
            if outer:
                run = self.client.get_run(outer)
            elif active:
                run = self.client.create_run(active.info.experiment_id, run_name=f"sweep-{s.study}",
                                             tags={"mlflow.parentRunId": active.info.run_id})
            else:
                exp_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "geomlab"
                run = create_run_retrying(self.client, exp_id, name, run_name=f"sweep-{s.study}")
            pid, self.experiment_id = run.info.run_id, run.info.experiment_id
            self.study.set_user_attr("mlflow_parent_run_id", pid)
            self.study.set_user_attr("mlflow_tracking_uri", self.tracking_uri)
            self._log_parent_setup(pid)
        self.parent_id = pid
        mlflow.set_tracking_uri(self.tracking_uri)

    def _log_parent_setup(self, pid: str) -> None:
        from mlflow.entities import Param, RunTag

        from shared.tracking import git_commit

        s = self.s
        # prefixed: inside `mlflow run -e sweep` the run already holds the entry point's own parameters
        params = {"sweep.project": self.target.project, "sweep.command": self.target.entry, "sweep.metric": s.metric,
                  "sweep.direction": s.direction, "sweep.sampler": s.sampler, "sweep.pruner": s.pruner,
                  "sweep.objective": s.objective, "sweep.seed": s.seed,
                  **{f"space.{k}": json.dumps(v) for k, v in self.space.params.items()},
                  **{f"fixed.{k}": v for k, v in self.space.fixed.items()}}
        existing = self.client.get_run(pid).data.params
        params = {k: v for k, v in params.items() if k not in existing}
        tags = {"project": self.target.project, "entry_point": "sweep", "optuna_study": s.study,
                "optuna_storage": redact(s.storage), "git_commit": git_commit(), "sweep_command": self.command_line()}
        self.client.log_batch(pid, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.log_text(pid, self.space.text, f"sweep/{self.space.path.name}")

    def command_line(self) -> str:
        s = self.s
        parts = ["geomlab", "sweep", self.target.project, self.target.entry, "--space", str(self.space.path),
                 "--n-trials", str(s.n_trials), "--study", s.study, "--storage", redact(s.storage), "--sampler",
                 s.sampler, "--pruner", s.pruner, "--metric", s.metric, "--direction", s.direction,
                 "--objective", s.objective]
        if s.seed is not None:
            parts += ["--seed", str(s.seed)]
        return shlex.join(parts)

    # -- the loop ------------------------------------------------------------------------------------------------
    @property
    def target_n(self) -> int:
        """The budget: --n-trials, capped by the grid's valid points (its size less the invalid points seen)."""
        if self.grid_size is None:
            return self.s.n_trials
        invalid = len({repr(t.params) for t in self.study.get_trials(deepcopy=False) if "invalid" in t.user_attrs})
        return min(self.s.n_trials, self.grid_size - invalid)

    def counts(self) -> dict[str, int]:
        """Trials by state; a PRUNED trial that was an invalid point counts as INVALID; DONE is what the budget
        counts (COMPLETE + PRUNED)."""
        from collections import Counter

        c = Counter("INVALID" if "invalid" in t.user_attrs else t.state.name
                    for t in self.study.get_trials(deepcopy=False))
        c["DONE"] = c["COMPLETE"] + c["PRUNED"]
        return c

    def _fail_stale(self) -> None:
        """Mark trials of dead workers FAIL (queueing their retry) and close their MLflow runs as FAILED."""
        import optuna

        before = {t.number for t in self.study.get_trials(deepcopy=False,
                                                          states=(optuna.trial.TrialState.RUNNING,))}
        if not before:
            return
        with quiet_optuna():
            optuna.storages.fail_stale_trials(self.study)
        failed = [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
                  if t.number in before]
        for t in failed:
            typer.echo(f"trial {t.number}: its worker stopped sending heartbeats; marked FAIL and queued again",
                       err=True)
            for run in self._trial_runs(t.number):
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, "FAILED")
                self.client.set_tag(run.info.run_id, "state", "FAIL")

    def _next_trial(self):
        """Under the study lock: the next trial of this worker; None when the budget is reached; WAIT when the rest
        of the budget is held by running trials (of other workers, live or dead: a dead one's trial turns stale
        after twice the heartbeat, is failed and queued again, and this worker takes it)."""
        with self.lock.hold():
            self._fail_stale()
            c = self.counts()
            done, running, waiting = c["DONE"], c["RUNNING"], c["WAITING"]
            target = self.target_n
            if done >= target:
                return None
            if waiting == 0 and done + running >= target:
                return WAIT
            if self.s.seed is not None and self.s.sampler != "grid":
                # distinct, reproducible streams per trial number, whichever worker runs it
                number = len(self.study.get_trials(deepcopy=False))
                self.study.sampler = self.sampler_factory(self.space, (self.s.seed * 1_000_003 + number) % 2**32)
            with interrupts.critical(), quiet_optuna():  # a trial is asked for and beating, or not asked for
                trial = self.study.ask(fixed_distributions=dict(self.space.distributions))
                # a first heartbeat at once: a RUNNING trial that never sent one is never found stale
                self.rdb.record_heartbeat(trial._trial_id)
            return trial

    def _trial_runs(self, number: int) -> list:
        try:
            return self.client.search_runs(
                [self.experiment_id], filter_string=f"tags.optuna_study = '{self.s.study}' and "
                                                    f"tags.optuna_trial = '{number}'", max_results=1000)
        except Exception as e:
            typer.echo(f"warning: could not list the MLflow runs of trial {number} ({first_line(e)})", err=True)
            return []

    def run_trial(self, trial) -> Outcome:
        from typer._click.exceptions import ClickException

        import shared.train
        from shared.tracking import Tracker

        s, t = self.s, self.target
        values = {**self.space.fixed, **trial.params}
        if "run_name" in params_by_name(t.command) and values.get("run_name") is None:
            values["run_name"] = f"{s.study}-trial-{trial.number}"
        args = command_args(t.command, values)
        shown = " ".join(f"{k}={fmt(v)}" for k, v in trial.params.items())
        typer.echo(f"trial {trial.number}: {shown}")
        reporter = TrialReporter(trial, s.metric)
        old_tags = Tracker.default_tags
        Tracker.default_tags = {**old_tags, "optuna_trial": trial.number, "optuna_study": s.study}
        shared.train.GLOBAL_CALLBACKS.append(reporter)
        out: Outcome | None = None
        try:
            with Heartbeat(self.rdb, trial._trial_id):
                try:
                    rv = t.command.main(args, prog_name=t.prog, standalone_mode=False)
                except SystemExit as e:
                    rv = e.code
                if rv in (130, 143):  # the command stopped at a safe point on Ctrl-C / SIGTERM
                    raise interrupts.interrupted(interrupts.requested() or rv - 128)  # typer returns 130 for both
                if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
                    out = Outcome("FAIL", error=f"`{t.prog}` exited with code {rv}")
        except ClickException as e:
            out = Outcome("FAIL", error=f"`{t.prog}` rejected its options ({first_line(e)})", fatal=True)
        except InvalidPoint as e:  # before UsageError, of which it is a kind
            out = Outcome("PRUNED", invalid=str(e), violation=e.violation)
        except UsageError as e:
            out = Outcome("FAIL", error=str(e))
        except Exception as e:  # a failed trial is recorded; the sweep goes on (up to --max-failures in a row)
            out = Outcome("FAIL", error=f"{type(e).__name__}: {first_line(e)}",
                          traceback=traceback.format_exc()[-4000:])
        finally:
            shared.train.GLOBAL_CALLBACKS.remove(reporter)
            Tracker.default_tags = old_tags
        if out is not None:
            return out
        runs = self._trial_runs(trial.number)
        values_seen = reporter.values
        if not values_seen:  # the command reported no per-epoch metric: read it from its MLflow runs
            for run in runs:
                hist = self.client.get_metric_history(run.info.run_id, s.metric) if s.metric in run.data.metrics \
                    else []
                values_seen += [m.value for m in sorted(hist, key=lambda m: (m.step, m.timestamp))]
        finite = [v for v in values_seen if math.isfinite(v)]
        if not values_seen:
            logged = sorted(reporter.seen | {k for r in runs for k in r.data.metrics})
            c = self.counts()
            # never reported by any trial: a wrong metric, stop; else this trial ended before its first epoch
            return Outcome("FAIL", fatal=not (c["DONE"]), error=(
                f"metric {s.metric} was not reported by `{t.prog}` (it reported: {', '.join(logged) or 'nothing'}); "
                "pass one of these with --metric"))
        if reporter.pruned_at is not None:
            return Outcome("PRUNED", value=finite[-1] if finite else None)
        if not finite:
            return Outcome("FAIL", error=f"metric {s.metric} was {values_seen[-1]} (not finite)")
        best = max(finite) if s.direction == "maximize" else min(finite)
        return Outcome("COMPLETE", value=finite[-1] if s.objective == "last" else best)

    def finish_trial(self, trial, out: Outcome, interrupted: bool = False) -> None:
        """Tell Optuna, tag the trial's MLflow runs; an interrupted trial's runs are KILLED and it is queued again.
        A critical section: a signal never cuts the trial's state change."""
        with interrupts.critical():
            self._finish_trial(trial, out, interrupted)

    def _finish_trial(self, trial, out: Outcome, interrupted: bool) -> None:
        import optuna

        state = optuna.trial.TrialState[out.state]
        runs = self._trial_runs(trial.number)
        try:  # another worker may have failed the trial meanwhile (no heartbeat): then nothing of it can change
            if out.error:
                trial.set_user_attr("error", out.error[:2000])
            if out.invalid:
                trial.set_user_attr("invalid", out.invalid[:2000])
                # infeasible for TPE (optuna >= 5): it learns the valid region instead of sampling among the
                # invalid points it has seen (a space mostly invalid otherwise ends in 100 invalid points in a row)
                trial.set_constraint("invalid", max(float(out.violation), 1e-6))
            if out.traceback:
                trial.set_user_attr("traceback", out.traceback)
            trial.set_user_attr("mlflow_run_ids", [r.info.run_id for r in runs])
            with quiet_optuna():
                if state == optuna.trial.TrialState.COMPLETE:
                    self.study.tell(trial, out.value)
                else:
                    self.study.tell(trial, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            typer.echo(f"trial {trial.number}: another worker marked it failed (no heartbeat for "
                       f"{2 * self.s.heartbeat} s); its result is dropped and the trial is retried", err=True)
            out.state = "FAIL"
        shown = "INVALID" if out.invalid else out.state
        for run in runs:
            if interrupted and run.info.status != "KILLED":  # the trial is retried as a whole: all its runs
                self.client.set_terminated(run.info.run_id, "KILLED")
            self.client.set_tag(run.info.run_id, "state", shown)
        if out.value is not None and out.state != "FAIL":
            self.client.log_metric(self.parent_id, "trial_value", out.value, step=trial.number)
        if interrupted and state == optuna.trial.TrialState.FAIL:  # retried at once, not after the heartbeat
            callback = self.rdb.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(self.study, self.study._storage.get_trial(trial._trial_id))
        val = f" {self.s.metric}={out.value:.4g}" if out.value is not None else ""
        why = f": {out.error}" if out.error else (f": {out.invalid}; not counted" if out.invalid else "")
        ids = ",".join(r.info.run_id for r in runs)
        typer.echo(f"trial {trial.number}: {shown}{val}{why}" + (f" (run {ids})" if ids else ""),
                   err=interrupted)

    def run(self) -> None:
        import mlflow

        s = self.s
        c = self.counts()
        done = c["DONE"]
        grid = f" (the grid has {self.target_n} points)" if self.target_n < s.n_trials else ""
        typer.echo(f"study {s.study} ({redact(s.storage)}): {done} of {self.target_n} trials done{grid}; "
                   f"{s.direction} {s.metric} of `{self.target.prog}`; MLflow parent run {self.parent_id}")
        env_before = {k: os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
        os.environ.pop("MLFLOW_RUN_ID", None)
        os.environ["MLFLOW_EXPERIMENT_ID"] = self.experiment_id
        outer = mlflow.active_run()
        mlflow.set_experiment(experiment_id=self.experiment_id)
        # the parent is this process's active run while trials run: the commands' runs nest under it
        mlflow.start_run(run_id=self.parent_id, nested=outer is not None)
        error: BaseException | None = None
        failures = invalid = 0
        waiting_since = None
        try:
            while True:
                trial = self._next_trial()
                if trial is None:
                    break
                if trial is WAIT:
                    if waiting_since is None:
                        waiting_since = time.monotonic()
                        typer.echo(f"study {s.study}: the rest of the budget is held by running trials; waiting for "
                                   f"them (a trial whose worker died is retried after {2 * s.heartbeat} s)", err=True)
                    time.sleep(min(5.0, s.heartbeat / 2))
                    continue
                waiting_since = None
                try:
                    out = self.run_trial(trial)
                except KeyboardInterrupt as e:
                    self.finish_trial(trial, Outcome("FAIL", error=f"interrupted ({interrupts.signal_name(e)})"),
                                      interrupted=True)
                    raise
                self.finish_trial(trial, out)
                interrupts.check()  # a safe point: between trials
                if out.fatal:
                    raise UsageError(f"trial {trial.number} failed: {out.error}; the sweep stopped")
                invalid = invalid + 1 if out.invalid else 0
                if invalid >= MAX_INVALID_IN_A_ROW:
                    raise UsageError(f"{invalid} sampled points in a row were invalid (last: {out.invalid}); the "
                                     "sweep stopped, narrow the space")
                failures = failures + 1 if out.state == "FAIL" else (failures if out.invalid else 0)
                if failures >= s.max_failures:
                    raise UsageError(f"{failures} trials in a row failed (last: {out.error}); the sweep stopped, "
                                     "fix the space or pass a larger --max-failures")
        except BaseException as e:
            error = e
            raise
        finally:
            try:
                self._end(error)
            except Exception as e:
                if error is None:
                    raise
                typer.echo(f"warning: could not close the sweep cleanly ({first_line(e)})", err=True)
            finally:
                self.close()
                for k, v in env_before.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    def _end(self, error: BaseException | None) -> None:
        with interrupts.critical():
            self._close_parent(error)

    def _close_parent(self, error: BaseException | None) -> None:
        import mlflow

        with self.lock.hold():
            c = self.counts()
            done = c["DONE"]
            if done >= self.target_n and not c["RUNNING"] and not c["WAITING"]:
                status = "FINISHED"
            elif c["RUNNING"]:
                status = "RUNNING"  # other workers go on; the last one to finish closes the parent
            else:
                status = "KILLED" if isinstance(error, KeyboardInterrupt) else ("FAILED" if error else "RUNNING")
            try:
                summarize(self)
            except Exception as e:
                typer.echo(f"warning: the sweep summary could not be logged to the parent run ({first_line(e)})",
                           err=True)
            if mlflow.active_run() and mlflow.active_run().info.run_id == self.parent_id:
                mlflow.end_run(status=status)
        best = self.study.user_attrs.get("geomlab_best") if c["COMPLETE"] else None
        msg = f"study {self.s.study}: {done}/{self.target_n} trials done ({c['COMPLETE']} complete, " \
              f"{c['PRUNED']} pruned, {c['FAIL']} failed" + (f", {c['INVALID']} invalid, not counted"
                                                              if c["INVALID"] else "") + ")"
        if best:
            msg += f"; best trial {best['number']}: {self.s.metric}={best['value']:.4g} " + \
                   " ".join(f"{k}={fmt(v)}" for k, v in best["params"].items())
        typer.echo(msg + f"; parent run {self.parent_id}")

