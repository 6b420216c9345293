"""``geomlab sweep``: hyperparameter and architecture sweeps of any geomlab command with Optuna, tracked in MLflow.

    geomlab sweep <project> <command> --space space.yaml --n-trials 20 --study NAME [--storage URL]
                  [--sampler tpe|grid|random] [--pruner median|hyperband|none] [--metric val_acc]
                  [--direction maximize|minimize] [--seed S]

- ``<project>`` is a project folder name (``cone_geometry`` or ``cone-geometry``) or ``shared`` for the root
  commands (``geomlab train``); ``<command>`` is one of its commands.
- A trial runs that command in this process, through its click command, with ``--<param> <value>`` built from the
  sampled parameters and the space's fixed values. Every training run uses :class:`shared.train.Trainer`; a
  reporter installed in ``shared.train.GLOBAL_CALLBACKS`` reports the metric after every epoch to Optuna (which
  prunes) and ``shared.tracking.Tracker.default_tags`` tags every MLflow run of the trial with ``optuna_trial`` and
  ``optuna_study``. The command's runs nest under the study's parent run (one per study, its id kept in the study's
  user attributes, so workers on other machines find it). The trial's value is the last (``--objective best``: the
  best) per-epoch value of the metric.
- The parent run gets the space, the best trial (tags ``best_*``, metric ``best_value``), the parameter importances
  (``sweep/param_importances.json``) and Optuna's plots (``figures/optimization_history.png``,
  ``figures/parallel_coordinate.png``).
- Re-running the same command continues the study (``load_if_exists``) and runs only the trials still needed to
  reach ``--n-trials`` COMPLETE + PRUNED trials. Several workers (processes, machines) may run the same command
  against one storage: the decision "one more trial?" and the sampling happen under a per-study lock (PostgreSQL /
  MySQL advisory lock, a lock file next to a SQLite database), so together they finish exactly ``--n-trials``.
  Every running trial records a heartbeat; a trial whose worker died is marked FAIL (and its MLflow runs FAILED) by
  the next worker that looks, and retried with the same parameters (``RetryHeartbeatStaleTrialCallback``).

Space file (YAML)::

    params:
      lr:    {type: float, low: 1.0e-3, high: 1.0e-1, log: true}
      width: {type: int, low: 4, high: 16}          # optional: step, log
      opt:   {type: categorical, choices: [sgd, adam]}
    fixed:                                           # passed to every trial unchanged
      epochs: 2
      dataset: digits
    metrics: [my_metric]                             # optional: per-epoch metrics the command adds itself

Everything (the file, each name against the command's options, each value through the command's own parser, the
metric, the storage, the tracking server, a study started with another space) is checked before any trial starts;
problems are one-line errors with exit code 2.

Modules: ``space`` (the space file), ``samplers`` (sampler and pruner registries), ``command`` (the command a trial
runs, and the checks of the space against it), ``storage`` (Optuna storage URL, study lock, RDBStorage),
``mlflow_store`` (the tracking store's checks and faults), ``trial`` (per-epoch reporter, heartbeat, outcome),
``driver`` (set-up and the trial loop of a worker), ``summary`` (the parent run's summary), ``cli`` (the command).
Only ``cli`` is imported with the package: the rest is imported when a sweep starts.
"""
from __future__ import annotations

from .cli import register

__all__ = ["register"]
