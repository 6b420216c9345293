"""`feature-amounts optimize`: an Optuna study over (mean, scale, skew) or per-layer widths, each trial a child run."""
from __future__ import annotations

import os
from dataclasses import dataclass


from shared.data import DataConfig, load_data
from shared.errors import UsageError, check
from shared.progress import say
from shared.tracking import Tracker, configure_tracking
from shared.train import Callback, TrainConfig

from .variants import base_widths, invalid_reason, make_variant, widths_from_bins
from .config import PROJECT, FAOptions, Target, _hash, train_key
from .training import _search, train_target


# ------------------------------------------------------------------------------------------------------------------
# Optuna


class OptunaReporter(Callback):
    """Reports the per-epoch validation top-1 (percent) to an Optuna trial and stops a run the pruner rejects."""

    def __init__(self, trial):
        self.trial = trial
        self.pruned = False
        self.reason: str | None = None

    def on_epoch_end(self, tr, metrics) -> None:
        key = "val_acc" if "val_acc" in metrics else "test_acc"
        if key not in metrics:
            return
        self.trial.report(100.0 * metrics[key], tr.epoch)
        if self.trial.should_prune():
            self.pruned = True
            self.reason = f"pruned by Optuna at epoch {tr.epoch}"
            tr.request_stop(self.reason)


def make_pruner(name: str, warmup: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"unknown --pruner {name!r}; use median, hyperband or none")


def suggest_target(trial, space: str, opts: FAOptions, grid: bool) -> Target:
    """A network from the trial's parameters: (mean, scale, skew) of the skew-normal, or per-layer shares."""
    base = base_widths(opts.vgg_depth, opts.patch_size)
    n = len(base)
    if space == "skewnormal":
        if grid:
            mean = float(trial.suggest_int("mean", 0, n))
            scale = trial.suggest_float("scale", 0.5, 5.5, step=0.5)
            skew = float(trial.suggest_int("skew", -40, 40, step=4))
        else:
            mean = trial.suggest_float("mean", 0.0, float(n))
            scale = trial.suggest_float("scale", 0.5, 5.5)
            skew = trial.suggest_float("skew", -40.0, 40.0)
        v = make_variant(mean, scale, skew, opts.vgg_depth, opts.patch_size, opts.width_multiplier)
        reason = invalid_reason(v)
        if reason:
            import optuna

            trial.set_user_attr("invalid", reason)
            raise optuna.TrialPruned(f"invalid variant: {reason}")
        return Target(f"trial{trial.number:04d}", tuple(v.widths), None, v.mean, v.scale, v.skew)
    if space == "widths":
        shares = [trial.suggest_float(f"share{i}", 0.01, 1.0, log=True) for i in range(n)]
        total = sum(shares)
        widths = widths_from_bins([s / total for s in shares], sum(base), opts.width_multiplier)
        return Target(f"trial{trial.number:04d}", widths)
    raise UsageError(f"unknown --space {space!r}; use skewnormal or widths")


@dataclass
class StudyOutcome:
    parent_run_id: str
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict
    n_complete: int
    n_pruned: int


def optimize(space: str, n_trials: int, data_cfg: DataConfig, train_cfg: TrainConfig, opts: FAOptions, *,
             storage: str | None, study_name: str, sampler_seed: int = 0, pruner: str = "median",
             pruner_warmup: int = 1, grid: bool = False, reset_running: bool = True, run_name: str | None = None,
             progress: bool = True, echo=say) -> StudyOutcome:
    """An Optuna study (TPE) over (mean, scale, skew) or per-layer widths; each trial one child run.

    ``storage`` (an Optuna URL, sqlite by default) keeps the study: running the command again continues it until
    ``n_trials`` trials are complete or pruned. Trials left RUNNING by a killed process are marked FAIL and their
    parameters queued again (``reset_running``; turn it off when several workers share the study).
    Samples that the original's rules reject (invalid variants) are recorded as pruned with the user attribute
    ``invalid`` and do not count towards ``n_trials``.
    """
    import optuna
    from optuna.trial import TrialState

    check(n_trials >= 1, f"--n-trials must be >= 1, got {n_trials}")
    check(space in ("skewnormal", "widths"), f"unknown --space {space!r}; use skewnormal or widths")
    opts.validate()
    configure_tracking()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_url = storage if storage else "sqlite:///optuna-feature-amounts.db"
    try:
        study = optuna.create_study(study_name=study_name, storage=storage_url, direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=sampler_seed),
                                    pruner=make_pruner(pruner, pruner_warmup), load_if_exists=True)
    except Exception as e:  # noqa: BLE001
        raise UsageError(f"cannot open the Optuna study {study_name!r} in {storage_url} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''}); check --storage") from None
    data = load_data(data_cfg, seed=train_cfg.seed)
    loader_start = data.train.state_dict()
    tkey = train_key(data_cfg, train_cfg, opts)
    skey = _hash({"study": study_name, "storage": storage_url, "space": space, "train": tkey})
    parent = None if os.environ.get("MLFLOW_RUN_ID") else \
        next(iter(_search(f"tags.`fa.study_key` = '{skey}' and tags.`fa.role` = 'study'")), None)
    tracker = Tracker(reopen=parent.info.run_id) if parent is not None else Tracker()
    if reset_running:
        for tr in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_state_values(tr._trial_id, TrialState.FAIL)
            study.enqueue_trial(tr.params, skip_if_exists=False)
            echo(f"trial {tr.number} was left running by a stopped process: marked failed, its parameters queued")
    with tracker.start(PROJECT, "optimize", run_name=run_name or f"study-{study_name}",
                       params={"study": study_name, "storage": storage_url, "space": space, "pruner": pruner,
                               "grid": grid, "dataset": data_cfg.dataset, "epochs": train_cfg.epochs},
                       tags={"fa.role": "study", "fa.study": study_name, "fa.study_key": skey}) as t:

        def objective(trial):
            target = suggest_target(trial, space, opts, grid)
            rep = OptunaReporter(trial)
            data.train.load_state_dict(loader_start)
            res = train_target(target, data, data_cfg, train_cfg, opts, entry_point="optimize",
                               tags={"fa.trial": trial.number, "fa.study": study_name, "fa.train_key": tkey},
                               extra_callbacks=[rep], progress=progress, catch_training_errors=True)
            trial.set_user_attr("run_id", res.run_id)
            trial.set_user_attr("widths", list(target.widths))
            if res.error:
                trial.set_user_attr("failed", res.error)
                echo(f"trial {trial.number}: {target.vid} failed ({res.error}); counted as pruned")
                raise optuna.TrialPruned(res.error)
            rec = res.record
            echo(f"trial {trial.number}: {target.vid} widths={list(target.widths)} BestVal={rec['BestVal']:.2f}%"
                 + (" (pruned)" if rep.pruned else ""))
            if rep.pruned:
                raise optuna.TrialPruned()
            return rec["BestVal"]

        def trained() -> int:  # invalid samples (rejected before training) do not count
            return sum(1 for tr in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                       if "invalid" not in tr.user_attrs)

        attempts = 0
        while trained() < n_trials:
            check(attempts < 50 * n_trials, f"{attempts} samples in a row were invalid variants; widen the search "
                  "(--space widths) or use a smaller --vgg-depth")
            before = len(study.trials)
            study.optimize(objective, n_trials=n_trials - trained(), catch=())
            attempts += len(study.trials) - before
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        pruned = [tr for tr in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
                  if "invalid" not in tr.user_attrs]
        best_value = study.best_value if complete else None
        best_params = dict(study.best_params) if complete else {}
        if complete:
            t.log_metrics({"best_value": best_value, "n_complete": len(complete), "n_pruned": len(pruned)})
            t.log_dict({"best_value": best_value, "best_params": best_params,
                        "best_widths": study.best_trial.user_attrs.get("widths"),
                        "best_run_id": study.best_trial.user_attrs.get("run_id")}, "feature_amounts/best.json")
    return StudyOutcome(t.run_id, study_name, storage_url, best_value, best_params, len(complete), len(pruned))
