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
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shlex
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from shared import options as opt
from shared.errors import UsageError, check
from shared.registry import Registry

# Metrics that shared.train.Trainer reports after an epoch (val_* only with a validation split, train_eval_* only
# with --train-acc). A project declares further per-epoch metrics of its commands with a module-level
# ``SWEEP_METRICS = {"<command>": ["name", ...]}`` in projects/<name>/cli.py, a user with ``metrics:`` in the space.
TRAINER_METRICS = ({"train_loss", "train_acc", "lr", "epoch_time_s"}
                   | {f"{s}_{m}" for s in ("val", "test", "train_eval") for m in ("loss", "acc", "top5")})
# metric prefix -> (option that enables it, hint)
_METRIC_NEEDS = {"val_": ("split", "add e.g. `split: 0.1` under fixed: in the space file, or use a test_* metric"),
                 "train_eval_": ("train_acc", "add `train_acc: true` under fixed: in the space file")}
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PARAM_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
              "categorical": {"type", "choices"}}


# ------------------------------------------------------------------------------------------------------------------
# Samplers and pruners (registries: a project may add its own)

SAMPLERS: Registry = Registry("sampler", "--sampler")
PRUNERS: Registry = Registry("pruner", "--pruner")


def _grid_values(name: str, dist) -> list:
    import numpy as np
    import optuna.distributions as od

    if isinstance(dist, od.CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, od.IntDistribution):
        check(not dist.log, f"the grid sampler cannot enumerate the log-scale int parameter {name}; drop `log` or "
                            "use categorical choices")
        return list(range(dist.low, dist.high + 1, dist.step))
    check(dist.step is not None, f"the grid sampler needs a `step` for the float parameter {name} (or categorical "
                                 "choices); or use --sampler tpe/random")
    n = int(round((dist.high - dist.low) / dist.step))
    return [float(v) for v in np.round(dist.low + dist.step * np.arange(n + 1), 12)]


def _tpe(space: "Space", seed: int | None):
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def _random(space: "Space", seed: int | None):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _grid(space: "Space", seed: int | None):
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """Workers agree on the grid's order only through the seed (the same in every worker: --seed or 0); the
        sweep loop stops by counting, so the sampler's own `study.stop()` (meant for Study.optimize) is left out."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid({k: _grid_values(k, d) for k, d in space.distributions.items()}, seed=seed)


SAMPLERS.register("tpe", _tpe)
SAMPLERS.register("grid", _grid)
SAMPLERS.register("random", _random)
PRUNERS.register("median", lambda epochs: __import__("optuna").pruners.MedianPruner())
PRUNERS.register("hyperband", lambda epochs: __import__("optuna").pruners.HyperbandPruner(
    min_resource=1, max_resource=epochs if epochs else "auto"))
PRUNERS.register("none", lambda epochs: __import__("optuna").pruners.NopPruner())


# ------------------------------------------------------------------------------------------------------------------
# The space file


@dataclass
class Space:
    path: Path
    text: str
    params: dict[str, dict]  # name (underscores) -> spec as written
    fixed: dict[str, Any]
    metrics: list[str]
    distributions: dict = field(default_factory=dict)  # name -> optuna distribution

    def grid_size(self) -> int:
        return math.prod(len(_grid_values(k, d)) for k, d in self.distributions.items())


def _key(name: Any) -> str:
    return str(name).replace("-", "_")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_space(path: str | os.PathLike) -> Space:
    """Parse and check a space file (without the command: names and values are checked by :func:`check_space`)."""
    import yaml
    import optuna.distributions as od

    p = Path(path).expanduser()
    check(p.is_file(), f"space file {p} does not exist; pass --space with a YAML file (see "
                       "projects/<name>/spaces/ for examples)")
    text = p.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"space file {p} is not valid YAML{where} ({getattr(e, 'problem', None) or e}); fix "
                         "the file") from None
    check(isinstance(doc, dict), f"space file {p} must be a mapping with `params:` (and optional `fixed:`, "
                                 f"`metrics:`), got {type(doc).__name__}")
    unknown = set(doc) - {"params", "fixed", "metrics"}
    check(not unknown, f"space file {p}: unknown top-level key(s) {', '.join(map(str, sorted(unknown)))}; use "
                       "params, fixed, metrics")
    params, fixed, metrics = doc.get("params") or {}, doc.get("fixed") or {}, doc.get("metrics") or []
    check(isinstance(params, dict) and params, f"space file {p}: `params:` must map at least one parameter name "
                                               "to {type: float|int|categorical, ...}")
    check(isinstance(fixed, dict), f"space file {p}: `fixed:` must map option names to values")
    check(isinstance(metrics, list) and all(isinstance(m, str) for m in metrics),
          f"space file {p}: `metrics:` must be a list of metric names")
    space = Space(p, text, {}, {}, list(metrics))
    for raw, spec in params.items():
        name = _key(raw)
        where = f"space file {p}: params.{raw}"
        check(isinstance(spec, dict) and "type" in spec,
              f"{where} must be a mapping with `type: float|int|categorical`")
        kind = spec["type"]
        check(kind in PARAM_KEYS, f"{where}: unknown type {kind!r}; use float, int or categorical")
        extra = set(spec) - PARAM_KEYS[kind]
        check(not extra, f"{where}: unknown key(s) {', '.join(map(str, sorted(extra)))} for type {kind}; use "
                         f"{', '.join(sorted(PARAM_KEYS[kind] - {'type'}))}")
        try:
            if kind == "categorical":
                choices = spec.get("choices")
                check(isinstance(choices, list) and choices and all(
                    c is None or isinstance(c, (bool, int, float, str)) for c in choices),
                    f"{where}: `choices` must be a non-empty list of plain values")
                check(len(set(map(repr, choices))) == len(choices), f"{where}: `choices` has duplicates")
                dist = od.CategoricalDistribution(choices)
            else:
                check("low" in spec and "high" in spec, f"{where} needs `low` and `high`")
                lo, hi, step = spec["low"], spec["high"], spec.get("step")
                check(_is_number(lo) and _is_number(hi) and (step is None or _is_number(step)),
                      f"{where}: low, high and step must be numbers (YAML reads 1e-3 as a string: write 1.0e-3)")
                log = spec.get("log", False)
                check(isinstance(log, bool), f"{where}: `log` must be true or false")
                if kind == "int":
                    check(all(float(v).is_integer() for v in (lo, hi, step or 1)),
                          f"{where}: low, high and step of an int parameter must be integers")
                    dist = od.IntDistribution(int(lo), int(hi), log=log, step=int(step or 1))
                else:
                    dist = od.FloatDistribution(float(lo), float(hi), log=log,
                                                step=None if step is None else float(step))
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
        check(name not in space.distributions, f"{where}: parameter given twice (- and _ are the same)")
        space.params[name], space.distributions[name] = spec, dist
    for raw, value in fixed.items():
        name = _key(raw)
        check(name not in space.params, f"space file {p}: {raw} is both in params and in fixed; keep one")
        check(name not in space.fixed, f"space file {p}: fixed.{raw} is given twice (- and _ are the same)")
        check(value is None or isinstance(value, (bool, int, float, str, list)),
              f"space file {p}: fixed.{raw} must be a plain value or a list")
        space.fixed[name] = value
    return space


# ------------------------------------------------------------------------------------------------------------------
# The command a trial runs


@dataclass
class Target:
    project: str  # "shared" or the project's folder name
    entry: str
    command: Any  # typer click command
    prog: str  # "geomlab train", "geomlab cone-geometry train"
    declared_metrics: set[str]


def resolve_command(project: str, entry: str) -> Target:
    import importlib

    import typer.main

    from shared.commands import project_apps, root_app

    root = typer.main.get_command(root_app())  # the tree without `sweep` (shared.cli adds it)
    apps = project_apps()
    folder = _key(project)
    if folder == "shared":
        cmds = dict(root.commands)
        prog, module = "geomlab", "shared.commands"
    else:
        dashed = folder.replace("_", "-")
        known = [n.replace("-", "_") for n in apps] + ["shared"]
        check(dashed in apps, f"unknown project {project!r}; use one of: {', '.join(known)}")
        cmds, prog, module = dict(root.commands[dashed].commands), f"geomlab {dashed}", apps[dashed]
    cmds = {k: v for k, v in cmds.items() if not hasattr(v, "commands")}  # commands, not sub-apps
    cmd = cmds.get(entry) or cmds.get(entry.replace("_", "-"))
    check(cmd is not None,
          f"unknown command {entry!r} of {prog}; use one of: {', '.join(sorted(cmds)) or '(none)'}")
    declared = getattr(importlib.import_module(module), "SWEEP_METRICS", {}) or {}
    return Target(folder, cmd.name, cmd, f"{prog} {cmd.name}", set(declared.get(cmd.name, ())))


def _params_by_name(cmd) -> dict:
    """The command's parameters by Python name, also reachable by their long option names (--learning-rate)."""
    params = [p for p in cmd.params if p.name and p.expose_value]
    out = {p.name: p for p in params}
    for p in params:
        for o in getattr(p, "opts", []):
            if o.startswith("--"):
                out.setdefault(_key(o[2:]), p)
    return out


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def command_args(cmd, values: dict[str, Any]) -> list[str]:
    """``--name value`` (flags: ``--name`` / ``--no-name``; arguments positionally) for ``values``."""
    params = _params_by_name(cmd)
    opts: list[str] = []
    positional: list[tuple[int, list[str]]] = []
    order = {p.name: i for i, p in enumerate(cmd.params)}
    for name, value in values.items():
        p = params[_key(name)]
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if not hasattr(p, "opts") or not p.opts or not p.opts[0].startswith("-"):  # an argument
            positional.append((order[name], [_fmt(v) for v in items]))
            continue
        if getattr(p, "is_bool_flag", False):
            if value:
                opts.append(p.opts[0])
            elif p.secondary_opts:
                opts.append(p.secondary_opts[0])
            continue
        for v in items:
            opts += [p.opts[0], _fmt(v)]
    for _, vals in sorted(positional):
        opts += vals
    return opts


def _first_line(e: BaseException) -> str:
    msg = e.format_message() if hasattr(e, "format_message") else str(e)
    return (msg.strip().splitlines() or [type(e).__name__])[0][:300]


def check_space(space: Space, target: Target) -> None:
    """Every name must be an option of the command, every value must pass the command's own parser."""
    from typer._click.exceptions import ClickException

    params = _params_by_name(target.command)
    seen: dict[str, str] = {}
    for name in [*space.params, *space.fixed]:
        if name not in params:
            import difflib

            close = difflib.get_close_matches(name, list(params), n=1)
            primary = sorted({p.name for p in params.values()})
            raise UsageError(f"space file {space.path}: unknown parameter {name!r} for `{target.prog}`"
                             f"{f' (did you mean {close[0]}?)' if close else ''}; its options are: "
                             f"{', '.join(primary)}")
        p = params[name]
        check(p.name not in seen, f"space file {space.path}: {seen.get(p.name)} and {name} are the same option "
                                  f"of `{target.prog}`; keep one")
        seen[p.name] = name
        value = space.fixed.get(name)
        if getattr(p, "is_bool_flag", False):
            values = space.params[name].get("choices", [None]) if name in space.params else [value]
            check(all(isinstance(v, bool) or v is None for v in values),
                  f"space file {space.path}: {name} is an on/off flag of `{target.prog}`; give true or false")
        if isinstance(value, list):
            check(getattr(p, "multiple", False) or getattr(p, "nargs", 1) == -1,
                  f"space file {space.path}: fixed.{name} is a list but --{name.replace('_', '-')} takes one value")

    def probe(values: dict) -> None:
        args = command_args(target.command, {**space.fixed, **values})
        try:
            target.command.make_context(target.prog, args, resilient_parsing=False)
        except ClickException as e:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            raise UsageError(f"space file {space.path}: `{target.prog}` rejects {shown or 'the fixed values'} "
                             f"({_first_line(e)}); fix the space") from None

    points = [{}, {}, {}]  # low ends, high ends, an inner point (a float must not land on an int option)
    for name, d in space.distributions.items():
        if hasattr(d, "choices"):
            for c in d.choices:
                probe({name: c})
            points[0][name] = points[1][name] = points[2][name] = d.choices[0]
        else:
            inner = d.low + 0.37 * (d.high - d.low)
            points[0][name], points[1][name] = d.low, d.high
            points[2][name] = int(round(inner)) if isinstance(d.low, int) else inner
    for point in points:
        probe(point)


def _effective(space: Space, target: Target, name: str) -> tuple[bool, Any]:
    """(known, value) of an option for the trials: fixed value or the command's default; unknown when swept."""
    params = _params_by_name(target.command)
    p = params.get(name)
    if p is None or any(params.get(k) is p for k in space.params):
        return False, None
    for k, v in space.fixed.items():
        if params.get(k) is p:
            return True, v
    return True, p.default


def check_metric(metric: str, space: Space, target: Target) -> None:
    known = TRAINER_METRICS | target.declared_metrics | set(space.metrics)
    check(metric in known, f"unknown metric {metric!r} for `{target.prog}`; the training loop reports "
                           f"{', '.join(sorted(TRAINER_METRICS | target.declared_metrics))}; declare other per-epoch "
                           "metrics of the command under `metrics:` in the space file")
    if metric in TRAINER_METRICS:
        for prefix, (option, hint) in _METRIC_NEEDS.items():
            if metric.startswith(prefix):
                known_value, value = _effective(space, target, option)
                check(not known_value or bool(value), f"metric {metric} is never reported by `{target.prog}` with "
                                                      f"{option}={value!r}; {hint}")


# ------------------------------------------------------------------------------------------------------------------
# Storage, lock, tracking


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def default_storage() -> str:
    return f"sqlite:///{Path.cwd().resolve() / 'optuna.db'}"


def normalize_storage(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    url = url or default_storage()
    try:
        u = make_url(url)
    except ArgumentError:
        raise UsageError(f"--storage {url!r} is not a database URL; use sqlite:///path/optuna.db (one machine) or "
                         "postgresql://user:password@host:5432/db (several machines)") from None
    backend = u.get_backend_name()
    check(backend in ("sqlite", "postgresql", "mysql"), f"--storage {_redact(url)}: unsupported database "
                                                        f"{backend!r}; use sqlite, postgresql or mysql")
    if u.drivername in ("postgresql", "mysql"):  # SQLAlchemy's default drivers (psycopg 3, mysqlclient) or these
        import importlib.util

        default, alternative = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("MySQLdb", "pymysql")}[backend]
        if importlib.util.find_spec(default) is None and importlib.util.find_spec(alternative) is not None:
            url = u.set(drivername=f"{backend}+{alternative}").render_as_string(hide_password=False)
    if backend == "sqlite":
        check(bool(u.database) and u.database != ":memory:",
              "--storage sqlite needs a file (sqlite:///path/optuna.db): an in-memory study cannot be resumed")
        db = Path(u.database).expanduser().resolve()
        check(db.parent.is_dir(), f"--storage {url}: folder {db.parent} does not exist; create it or choose "
                                  "another path")
        url = f"sqlite:///{db}"
    return url


def _engine_kwargs(url: str) -> dict:
    from sqlalchemy.engine import make_url

    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": 60}}
    return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}


class StudyLock:
    """A per-study mutex shared by every worker of the storage: advisory lock (PostgreSQL, MySQL) or lock file."""

    def __init__(self, url: str, study: str):
        from sqlalchemy.engine import make_url

        self.url, self.study = url, study
        self.backend = make_url(url).get_backend_name()
        self.key = int.from_bytes(hashlib.blake2b(f"geomlab-sweep:{study}".encode(), digest_size=8).digest(),
                                  "big", signed=True)
        self._engine = None
        self._conn = None
        self._file = None
        self._depth = 0
        self._mutex = threading.RLock()
        if self.backend == "sqlite":
            self.path = Path(make_url(url).database + ".lock")
        else:
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            try:
                self._engine = sqlalchemy.create_engine(url, poolclass=NullPool,
                                                        connect_args=_engine_kwargs(url)["connect_args"])
            except ImportError as e:
                raise UsageError(f"--storage {_redact(url)} needs the database driver {e.name!r}, which is not "
                                 "installed; pip install psycopg2-binary (PostgreSQL) or pymysql (MySQL), or "
                                 "name the driver in the URL (postgresql+psycopg2://...)") from None

    def connect(self) -> None:
        """Open the lock's connection (the first contact with the storage: unreachable -> UsageError)."""
        if self._engine is not None and self._conn is None:
            try:
                self._conn = self._engine.connect()
            except Exception as e:
                raise UsageError(f"cannot reach the Optuna storage {_redact(self.url)} "
                                 f"({_first_line(getattr(e, 'orig', None) or e)}); check "
                                 "--storage (host, port, database, user) and that the server runs") from None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        from sqlalchemy import text

        with self._mutex:
            if self._depth == 0:
                if self.backend == "sqlite":
                    self._file = open(self.path, "a+")
                    fcntl.flock(self._file, fcntl.LOCK_EX)
                else:
                    self.connect()
                    sql = ("SELECT pg_advisory_lock(:k)" if self.backend == "postgresql"
                           else "SELECT GET_LOCK(:k, 600)")
                    self._conn.execute(text(sql), {"k": self.key if self.backend == "postgresql" else str(self.key)})
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    if self.backend == "sqlite":
                        fcntl.flock(self._file, fcntl.LOCK_UN)
                        self._file.close()
                    else:
                        sql = ("SELECT pg_advisory_unlock(:k)" if self.backend == "postgresql"
                               else "SELECT RELEASE_LOCK(:k)")
                        self._conn.execute(text(sql), {"k": self.key if self.backend == "postgresql"
                                                       else str(self.key)})
                        self._conn.commit()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            self._engine.dispose()


def open_storage(url: str, heartbeat: int, lock: StudyLock):
    """An RDBStorage with heartbeats and retries of trials whose worker died (created under the study lock)."""
    import optuna
    from sqlalchemy.exc import OperationalError

    with _quiet_optuna():
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        except OperationalError as e:
            raise UsageError(f"cannot open the Optuna storage {_redact(url)} ({_first_line(e.orig or e)}); check "
                             "--storage and that the database server runs") from None
        except Exception as e:  # e.g. a storage written by an incompatible optuna version
            raise UsageError(f"cannot use the Optuna storage {_redact(url)} ({type(e).__name__}: {_first_line(e)})"
                             "; use another --storage") from None


def check_tracking() -> str:
    """The tracking URI, after checking that the tracking store answers (one-line error otherwise)."""
    from mlflow.tracking import MlflowClient

    from shared.tracking import configure_tracking

    uri = configure_tracking()
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            r = requests.get(uri.rstrip("/") + "/health", timeout=10)
            ok = r.status_code == 200
            reason = f"HTTP {r.status_code}"
        except requests.RequestException as e:
            ok, reason = False, type(e).__name__
        check(ok, f"the MLflow tracking server {uri} does not answer ({reason}); start it (mlflow server ...) or "
                  "fix MLFLOW_TRACKING_URI")
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:
        raise UsageError(f"cannot use the MLflow tracking store {uri} ({type(e).__name__}: {_first_line(e)}); "
                         "fix MLFLOW_TRACKING_URI") from None
    return uri


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # ask/tell with our own heartbeat thread (_Heartbeat) is what Study.optimize does inside
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


# ------------------------------------------------------------------------------------------------------------------
# A trial


class TrialReporter:
    """Reports ``metric`` after every epoch of every Trainer of the trial; stops the training when Optuna prunes.

    A :class:`shared.train.Callback` by its hooks (not by inheritance: importing shared.train imports torch, and
    ``geomlab --help`` must not).

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

    def on_step_end(self, trainer, loss, output, y) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _Heartbeat:
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


# ------------------------------------------------------------------------------------------------------------------
# The sweep


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


class Sweep:
    def __init__(self, s: Settings):
        self.s = s
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
        self.target = resolve_command(s.project, s.entry)
        check_space(self.space, self.target)
        check_metric(s.metric, self.space, self.target)
        if s.direction is None:
            s.direction = "minimize" if re.search(r"loss|err|time", s.metric) else "maximize"
        self.sampler_factory = SAMPLERS.get(s.sampler)
        epochs = self.space.fixed.get("epochs")
        self.pruner = PRUNERS.get(s.pruner)(epochs if isinstance(epochs, int) else None)
        self.target_n = s.n_trials
        if s.sampler == "grid":
            self.sampler_factory(self.space, None)  # checks the grid can be enumerated
            self.target_n = min(s.n_trials, self.space.grid_size())
        s.storage = normalize_storage(s.storage)
        self.lock = StudyLock(s.storage, s.study)
        self.lock.connect()
        self.tracking_uri = check_tracking()
        with self.lock.hold():
            self.rdb = open_storage(s.storage, s.heartbeat, self.lock)
            self._open_study()
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
        with _quiet_optuna():
            self.study = optuna.create_study(study_name=s.study, storage=self.rdb, direction=s.direction,
                                             sampler=self.sampler_factory(self.space, s.seed), pruner=self.pruner,
                                             load_if_exists=True)
        have = self.study.user_attrs.get("geomlab")
        want = json.loads(json.dumps(self.config()))
        if have is None:
            self.study.set_user_attr("geomlab", want)
        else:
            diff = [k for k in want if have.get(k) != want[k]]
            check(not diff, f"study {s.study} in {_redact(s.storage)} was started with another "
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
                run = _create_run_retrying(self.client, exp_id, name, run_name=f"sweep-{s.study}")
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
                "optuna_storage": _redact(s.storage), "git_commit": git_commit(), "sweep_command": self.command_line()}
        self.client.log_batch(pid, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.log_text(pid, self.space.text, f"sweep/{self.space.path.name}")

    def command_line(self) -> str:
        s = self.s
        parts = ["geomlab", "sweep", self.target.project, self.target.entry, "--space", str(self.space.path),
                 "--n-trials", str(s.n_trials), "--study", s.study, "--storage", _redact(s.storage), "--sampler",
                 s.sampler, "--pruner", s.pruner, "--metric", s.metric, "--direction", s.direction,
                 "--objective", s.objective]
        if s.seed is not None:
            parts += ["--seed", str(s.seed)]
        return shlex.join(parts)

    # -- the loop ------------------------------------------------------------------------------------------------
    def _counts(self) -> dict[str, int]:
        from collections import Counter

        return Counter(t.state.name for t in self.study.get_trials(deepcopy=False))

    def _fail_stale(self) -> None:
        """Mark trials of dead workers FAIL (queueing their retry) and close their MLflow runs as FAILED."""
        import optuna

        before = {t.number for t in self.study.get_trials(deepcopy=False,
                                                          states=(optuna.trial.TrialState.RUNNING,))}
        if not before:
            return
        with _quiet_optuna():
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
        """Under the study lock: the next trial of this worker, or None when the budget is reached/held by others."""
        import optuna

        with self.lock.hold():
            self._fail_stale()
            c = self._counts()
            done, running, waiting = c["COMPLETE"] + c["PRUNED"], c["RUNNING"], c["WAITING"]
            if done >= self.target_n or (waiting == 0 and done + running >= self.target_n):
                return None
            if self.s.seed is not None and self.s.sampler != "grid":
                # distinct, reproducible streams per trial number, whichever worker runs it
                number = len(self.study.get_trials(deepcopy=False))
                self.study.sampler = self.sampler_factory(self.space, (self.s.seed * 1_000_003 + number) % 2**32)
            with _quiet_optuna():
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
            typer.echo(f"warning: could not list the MLflow runs of trial {number} ({_first_line(e)})", err=True)
            return []

    def run_trial(self, trial) -> Outcome:
        from typer._click.exceptions import ClickException

        import shared.train
        from shared.tracking import Tracker

        s, t = self.s, self.target
        values = {**self.space.fixed, **trial.params}
        if "run_name" in _params_by_name(t.command) and values.get("run_name") is None:
            values["run_name"] = f"{s.study}-trial-{trial.number}"
        args = command_args(t.command, values)
        shown = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        typer.echo(f"trial {trial.number}: {shown}")
        reporter = TrialReporter(trial, s.metric)
        old_tags = Tracker.default_tags
        Tracker.default_tags = {**old_tags, "optuna_trial": trial.number, "optuna_study": s.study}
        shared.train.GLOBAL_CALLBACKS.append(reporter)
        out: Outcome | None = None
        try:
            with _Heartbeat(self.rdb, trial._trial_id):
                try:
                    rv = t.command.main(args, prog_name=t.prog, standalone_mode=False)
                except SystemExit as e:
                    rv = e.code
                if rv == 130:
                    raise KeyboardInterrupt
                if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
                    out = Outcome("FAIL", error=f"`{t.prog}` exited with code {rv}")
        except ClickException as e:
            out = Outcome("FAIL", error=f"`{t.prog}` rejected its options ({_first_line(e)})", fatal=True)
        except UsageError as e:
            out = Outcome("FAIL", error=str(e))
        except Exception as e:  # a failed trial is recorded; the sweep goes on (up to --max-failures in a row)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            out = Outcome("FAIL", error=f"{type(e).__name__}: {_first_line(e)}")
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
            c = self._counts()
            # never reported by any trial: a wrong metric, stop; else this trial ended before its first epoch
            return Outcome("FAIL", fatal=not (c["COMPLETE"] + c["PRUNED"]), error=(
                f"metric {s.metric} was not reported by `{t.prog}` (it reported: {', '.join(logged) or 'nothing'}); "
                "pass one of these with --metric"))
        if reporter.pruned_at is not None:
            return Outcome("PRUNED", value=finite[-1] if finite else None)
        if not finite:
            return Outcome("FAIL", error=f"metric {s.metric} was {values_seen[-1]} (not finite)")
        best = max(finite) if s.direction == "maximize" else min(finite)
        return Outcome("COMPLETE", value=finite[-1] if s.objective == "last" else best)

    def finish_trial(self, trial, out: Outcome) -> None:
        import optuna

        state = optuna.trial.TrialState[out.state]
        if out.error:
            trial.set_user_attr("error", out.error[:2000])
        runs = self._trial_runs(trial.number)
        trial.set_user_attr("mlflow_run_ids", [r.info.run_id for r in runs])
        try:
            with _quiet_optuna():
                if state == optuna.trial.TrialState.COMPLETE:
                    self.study.tell(trial, out.value)
                else:
                    self.study.tell(trial, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            typer.echo(f"trial {trial.number}: another worker marked it failed (no heartbeat for "
                       f"{2 * self.s.heartbeat} s); its result is dropped and the trial is retried", err=True)
            out.state = "FAIL"
        for run in runs:
            self.client.set_tag(run.info.run_id, "state", out.state)
        if out.value is not None and out.state != "FAIL":
            self.client.log_metric(self.parent_id, "trial_value", out.value, step=trial.number)
        val = f" {self.s.metric}={out.value:.4g}" if out.value is not None else ""
        why = f": {out.error}" if out.error else ""
        ids = ",".join(r.info.run_id for r in runs)
        typer.echo(f"trial {trial.number}: {out.state}{val}{why}" + (f" (run {ids})" if ids else ""))

    def run(self) -> None:
        import mlflow

        s = self.s
        c = self._counts()
        done = c["COMPLETE"] + c["PRUNED"]
        grid = f" (the grid has {self.target_n} points)" if self.target_n < s.n_trials else ""
        typer.echo(f"study {s.study} ({_redact(s.storage)}): {done} of {self.target_n} trials done{grid}; "
                   f"{s.direction} {s.metric} of `{self.target.prog}`; MLflow parent run {self.parent_id}")
        env_before = {k: os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
        os.environ.pop("MLFLOW_RUN_ID", None)
        os.environ["MLFLOW_EXPERIMENT_ID"] = self.experiment_id
        outer = mlflow.active_run()
        mlflow.set_experiment(experiment_id=self.experiment_id)
        # the parent is this process's active run while trials run: the commands' runs nest under it
        mlflow.start_run(run_id=self.parent_id, nested=outer is not None)
        error: BaseException | None = None
        failures = 0
        try:
            while True:
                trial = self._next_trial()
                if trial is None:
                    break
                try:
                    out = self.run_trial(trial)
                except KeyboardInterrupt:
                    self.finish_trial(trial, Outcome("FAIL", error="interrupted"))
                    raise
                self.finish_trial(trial, out)
                if out.fatal:
                    raise UsageError(f"trial {trial.number} failed: {out.error}; the sweep stopped")
                failures = failures + 1 if out.state == "FAIL" else 0
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
                typer.echo(f"warning: could not close the sweep cleanly ({_first_line(e)})", err=True)
            finally:
                self.close()
                for k, v in env_before.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v

    def _end(self, error: BaseException | None) -> None:
        import mlflow

        with self.lock.hold():
            c = self._counts()
            done = c["COMPLETE"] + c["PRUNED"]
            if done >= self.target_n and not c["RUNNING"] and not c["WAITING"]:
                status = "FINISHED"
            elif c["RUNNING"]:
                status = "RUNNING"  # other workers go on; the last one to finish closes the parent
            else:
                status = "KILLED" if isinstance(error, KeyboardInterrupt) else ("FAILED" if error else "RUNNING")
            try:
                self.summarize()
            except Exception as e:
                typer.echo(f"warning: the sweep summary could not be logged to the parent run ({_first_line(e)})",
                           err=True)
            if mlflow.active_run() and mlflow.active_run().info.run_id == self.parent_id:
                mlflow.end_run(status=status)
        best = self.study.user_attrs.get("geomlab_best") if c["COMPLETE"] else None
        msg = f"study {self.s.study}: {done}/{self.target_n} trials done ({c['COMPLETE']} complete, " \
              f"{c['PRUNED']} pruned, {c['FAIL']} failed)"
        if best:
            msg += f"; best trial {best['number']}: {self.s.metric}={best['value']:.4g} " + \
                   " ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
        typer.echo(msg + f"; parent run {self.parent_id}")

    # -- the parent run's summary --------------------------------------------------------------------------------
    def summarize(self) -> None:
        import optuna
        from mlflow.entities import Metric, RunTag

        from shared.files import write_json
        from shared.plotting import save_figure

        s, pid = self.s, self.parent_id
        trials = self.study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        counts = self._counts()
        out = Path(os.environ.get("GEOMLAB_OUTPUT_DIR", "outputs")) / "sweeps" / s.study
        table = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                  "mlflow_run_ids": t.user_attrs.get("mlflow_run_ids", []),
                  **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {}),
                  **({"retry_of": t.system_attrs["failed_trial"]} if "failed_trial" in t.system_attrs else {})}
                 for t in trials]
        tags = {"n_trials_target": self.target_n, **{f"n_{k.lower()}": counts[k] for k in ("COMPLETE", "PRUNED",
                                                                                            "FAIL")}}
        files = [write_json(out / "trials.json", table)]
        metrics = []
        if complete:
            best = self.study.best_trial
            info = {"number": best.number, "value": best.value, "params": best.params, "metric": s.metric,
                    "direction": s.direction, "mlflow_run_ids": best.user_attrs.get("mlflow_run_ids", [])}
            self.study.set_user_attr("geomlab_best", info)
            files.append(write_json(out / "best_trial.json", info))
            tags.update({"best_trial": best.number, "best_value": best.value,
                         **{f"best_params.{k}": _fmt(v) for k, v in best.params.items()},
                         **({"best_run_id": info["mlflow_run_ids"][0]} if info["mlflow_run_ids"] else {})})
            metrics.append(Metric("best_value", float(best.value), int(time.time() * 1000),
                                  counts["COMPLETE"] + counts["PRUNED"]))
        self.client.log_batch(pid, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        for f in files:
            self.client.log_artifact(pid, str(f), "sweep")
        varied = [k for k in self.space.distributions if len({repr(t.params.get(k)) for t in complete}) > 1]
        if len(complete) >= 2 and varied:  # importances need at least two finished points that differ
            try:
                with _quiet_optuna(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    imp = optuna.importance.get_param_importances(self.study, params=varied)
            except Exception as e:
                typer.echo(f"warning: no parameter importances yet ({_first_line(e)})", err=True)
            else:
                f = write_json(out / "param_importances.json", {"metric": s.metric, "n_complete": len(complete),
                                                               "importances": {k: float(v) for k, v in imp.items()}})
                self.client.log_artifact(pid, str(f), "sweep")
        plots = [("optimization_history", 1), ("parallel_coordinate", 2)]
        for name, need in plots:
            if len(complete) < need:
                continue
            from optuna.visualization import matplotlib as ovm

            try:
                with _quiet_optuna(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ax = getattr(ovm, f"plot_{name}")(self.study, target_name=s.metric)
            except Exception as e:
                typer.echo(f"warning: no {name} plot ({_first_line(e)})", err=True)
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            path = save_figure(fig, out / f"{name}.png")
            self.client.log_artifact(pid, str(path), "figures")


# ------------------------------------------------------------------------------------------------------------------
# CLI


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep_cmd(
        project: Annotated[str, typer.Argument(help="Project folder name (cone_geometry, hyperplane_bias, depth_limit, "
                                                    "feature_amounts) or `shared` for the root commands (train).")],
        entry: Annotated[str, typer.Argument(help="The project's command each trial runs (e.g. train).")],
        space: Annotated[str, typer.Option(help="Search space YAML: params (float/int/categorical, log, step), "
                                                "fixed values, optional extra metrics.")],
        n_trials: Annotated[int, typer.Option(help="Total COMPLETE+PRUNED trials of the study; a re-run (or another "
                                                   "worker) runs only the missing ones.")] = 20,
        study: Annotated[Optional[str], typer.Option(help="Study name; the same name continues the study "
                                                          "[default: <project>-<command>-<space file name>].")] = None,
        storage: Annotated[str, typer.Option(help="Optuna storage URL shared by all workers: "
                                                  "postgresql://user:pw@host/db for several machines [default: "
                                                  "sqlite:///<cwd>/optuna.db].", show_default=False)] = "",
        sampler: Annotated[str, typer.Option(help="tpe (default), grid (every combination; floats need a step) or "
                                                  "random.")] = "tpe",
        pruner: Annotated[str, typer.Option(help="Stop unpromising trials early on the per-epoch metric: median, "
                                                 "hyperband or none.")] = "median",
        metric: Annotated[str, typer.Option(help="Per-epoch metric to optimize (val_acc needs a validation split; "
                                                 "test_acc, train_loss, ...).")] = "val_acc",
        direction: Annotated[str, typer.Option(help="maximize, minimize or auto (minimize loss/error/time "
                                                    "metrics, maximize the others).")] = "auto",
        seed: opt.Seed = None,
        objective: Annotated[str, typer.Option(help="A trial's value: the metric's last epoch (last) or its best "
                                                    "epoch (best).")] = "last",
        heartbeat: Annotated[int, typer.Option(help="Seconds between heartbeats of a running trial; a trial silent for "
                                                    "2x this is failed and retried.")] = 30,
        max_failures: Annotated[int, typer.Option(help="Stop after this many failed trials in a row.")] = 3,
    ) -> None:
        """Sweep a command's options with Optuna; every trial is an MLflow child run of the study's parent run."""
        import optuna

        name = study or f"{_key(project)}-{entry}-{Path(space).stem}"
        settings = Settings(project, entry, space, n_trials, name, storage, sampler, pruner, metric, direction, seed,
                            objective, heartbeat, max_failures)
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sw = Sweep(settings)
        try:
            sw.prepare()
            sw.run()
        finally:
            sw.close()
            optuna.logging.set_verbosity(level)


def _create_run_retrying(client, exp_id: str | None, name: str, run_name: str, attempts: int = 8):
    """Create a run in experiment ``exp_id`` (or the experiment ``name``, created if missing).

    Workers that start at the same moment against a fresh tracking server race to create the experiment: one gets
    "already exists", and a server can briefly answer "no experiment with id=..." for an experiment another worker
    has just created. Both are retried (a short, bounded back-off)."""
    import time

    from mlflow.exceptions import MlflowException

    for i in range(attempts):
        try:
            eid = exp_id
            if eid:
                try:
                    client.get_experiment(eid)
                except MlflowException as e:
                    if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                        raise
                    eid = None  # a stale MLFLOW_EXPERIMENT_ID of another store: use the experiment by name
            if not eid:
                exp = client.get_experiment_by_name(name)
                eid = exp.experiment_id if exp else client.create_experiment(name)
            return client.create_run(eid, run_name=run_name)
        except MlflowException as e:
            code = getattr(e, "error_code", "")
            if i == attempts - 1 or code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
            time.sleep(0.25 * (i + 1))
