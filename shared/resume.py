"""Which snapshot a training command continues from, and in which MLflow run.

- ``--resume-from S``: continue from snapshot S. It is checked against the new options
  (:func:`snapshot_differences`); options that change the trajectory need ``--resume-override``.
- Re-running a command with an ``--out-dir`` that already holds snapshots continues from the newest one, when it
  was trained with the same options; otherwise the command is refused (it never overwrites them silently).
  ``--fresh`` starts over there (deleting those snapshots; their MLflow run keeps its copies).
- The run: a resume with the same options from the newest snapshot of a run continues that MLflow run (it was
  killed or interrupted). Any other resume opens a new run tagged ``resumed_from_run`` (and the old run gets
  ``resumed_in_run``); an old run still marked RUNNING whose newest snapshot is resumed is marked KILLED.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Iterable

from torch import nn

from shared.data import DataConfig
from shared.errors import UsageError, check
from shared.files import ensure_writable_dir, load_snapshot
from shared.models import model_spec
from shared.train import TrainConfig


# Options that change a run's trajectory: a resume with other values is refused unless overridden (--resume-override).
TRAJECTORY_OPTIONS = ("optimizer", "lr", "momentum", "weight_decay", "nesterov", "schedule", "schedule_options",
                      "lr_step", "lr_decay", "seed", "precision")
# an override of one of these rebuilds the schedule
SCHEDULE_OPTIONS = {"optimizer", "lr", "schedule", "schedule_options", "lr_step", "lr_decay", "epochs"}
EPOCH_DEPENDENT_SCHEDULES = {"cosine"}  # schedules whose shape depends on --epochs
EXECUTION_DATA_OPTIONS = ("data_path", "eval_batch_size", "verify_checksums", "download", "num_workers")
TRAJECTORY_DATA_OPTIONS = tuple(f.name for f in dataclass_fields(DataConfig) if f.name not in EXECUTION_DATA_OPTIONS)


def snapshot_differences(snap: dict, cfg: TrainConfig, data_cfg: DataConfig, spec: dict) -> dict[str, tuple]:
    """The trajectory options (training, data, architecture) whose values differ between a snapshot and a run:
    ``{option: (snapshot's value, run's value)}``. Execution details (device, paths, snapshots, micro-batches,
    channels_last) and the number of epochs (unless the schedule depends on it) may change freely."""
    diffs: dict[str, tuple] = {}
    keys = TRAJECTORY_OPTIONS + (("epochs",) if cfg.schedule in EPOCH_DEPENDENT_SCHEDULES else ())
    for saved, new, names, default in ((snap.get("train_config"), asdict(cfg), keys, TrainConfig()),
                                       (snap.get("data_config"), asdict(data_cfg), TRAJECTORY_DATA_OPTIONS,
                                        DataConfig())):
        if not saved:  # snapshots of other code: nothing to compare
            continue
        for k in names:
            old = saved.get(k, getattr(default, k))  # older snapshots lack newer options: their defaults applied
            if old != new[k]:
                diffs[k] = (old, new[k])
    old_spec = snap.get("model_spec") or {}
    if old_spec and spec and old_spec != spec:
        def name(s):
            opts = ",".join(f"{k}={v}" for k, v in sorted(s.get("options", {}).items()))
            return f"{s.get('arch')}({opts})" if opts else str(s.get("arch"))
        diffs["arch"] = (name(old_spec), name(spec))
    return diffs


def option_name(key: str) -> str:
    return key.replace("_", "-")


def describe_differences(diffs: dict[str, tuple], keys: Iterable[str] | None = None) -> str:
    return ", ".join(f"--{option_name(k)} {diffs[k][0]} in the snapshot, {diffs[k][1]} now" for k in (keys or diffs))


def parse_overrides(text: str | None) -> set[str]:
    """``--resume-override lr,batch-size`` -> {"lr", "batch_size"}; unknown names raise UsageError."""
    names = {n.strip().replace("-", "_") for n in (text or "").split(",") if n.strip()}
    valid = set(TRAJECTORY_OPTIONS) | set(TRAJECTORY_DATA_OPTIONS) | {"epochs", "arch"}
    bad = sorted(names - valid)
    check(not bad, f"--resume-override: unknown option {', '.join(bad)}; use a comma list of: "
                   f"{', '.join(option_name(v) for v in sorted(valid))}")
    return names


def refuse_changes(diffs: dict[str, tuple], allowed: set[str], source: str) -> None:
    """Raise UsageError when a snapshot's trajectory options differ from the run's in options not ``allowed``."""
    refused = [k for k in diffs if k not in allowed]
    check(not refused, f"snapshot {source} was trained with other options ({describe_differences(diffs, refused)}); "
                       "resume with the snapshot's values, or pass --resume-override "
                       f"{','.join(option_name(k) for k in refused)} to continue with the new ones")


@dataclass
class ResumePlan:
    snapshot: dict | None = None  # the loaded snapshot to resume from (None: start at epoch 0)
    source: str | None = None
    overrides: dict[str, tuple] = field(default_factory=dict)  # allowed differences: {option: (old, new)}
    reopen: str | None = None  # continue this MLflow run
    previous_run: str | None = None  # a new run continues this one (tags link them)
    mark_killed: bool = False  # the previous run is still RUNNING although its process is gone
    stopped: str | None = None  # a re-run of a run that stopped early (e.g. plateau): it stays stopped
    message: str | None = None  # what a re-run continues (printed to stderr)

    def tags(self) -> dict:
        if self.snapshot is None:
            return {}
        tags = {"resumed_from": self.source, "resumed_from_epoch": self.snapshot.get("epoch")}
        if self.previous_run:
            tags["resumed_from_run"] = self.previous_run
        if self.overrides:
            tags["resume_overrides"] = describe_differences(self.overrides)
        return tags

    def link(self, run_id: str | None) -> None:
        """After the (new) run opened: tag the previous run, and mark it KILLED if it was left RUNNING."""
        if not (self.previous_run and run_id and run_id != self.previous_run):
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        try:
            client.set_tag(self.previous_run, "resumed_in_run", run_id)
            if self.mark_killed:
                client.set_terminated(self.previous_run, "KILLED")
        except Exception:  # noqa: BLE001  (the previous run lives in another store: the new run's tag is the link)
            pass


def newest_snapshot(folder: Path) -> Path | None:
    files = sorted(folder.glob("epoch_*.pt")) if folder.is_dir() else []
    return files[-1] if files else None


def _run(run_id: str | None):
    if not run_id:
        return None
    from mlflow.tracking import MlflowClient

    from shared.tracking import configure_tracking

    configure_tracking()
    try:
        return MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001  (not in this store)
        return None


def _newest_logged_epoch(run_id: str) -> int:
    from shared.tracking import list_run_artifacts

    try:
        names = [a for a in list_run_artifacts(run_id, "snapshots") if a.endswith(".pt")]
    except UsageError:
        return -1
    return max((int(Path(n).stem.split("_")[-1]) for n in names if Path(n).stem.split("_")[-1].isdigit()), default=-1)


def plan_resume(*, out_dir: str | os.PathLike | None, resume_from: str | None, fresh: bool,
                resume_override: str | None, train_cfg: TrainConfig, data_cfg: DataConfig,
                model: nn.Module) -> ResumePlan:
    """Decide where a training command starts (see the module docstring). Raises UsageError before any run opens."""
    from shared.tracking import resolve_input

    allowed = parse_overrides(resume_override)
    check(not (fresh and resume_from), "--fresh and --resume-from exclude each other: --fresh starts at epoch 0")
    check(not allowed or resume_from, "--resume-override needs --resume-from (the snapshot to continue)")
    if out_dir is not None:  # before any run opens: a read-only snapshots/ inside a writable --out-dir
        ensure_writable_dir(Path(out_dir).expanduser() / "snapshots", "snapshot folder")
    uri_run = None
    if resume_from:
        path, uri_run = resolve_input(resume_from, "snapshot to resume from")
        snap, source, auto = load_snapshot(path), resume_from, False
    else:
        folder = Path(out_dir).expanduser() / "snapshots" if out_dir is not None else None
        newest = newest_snapshot(folder) if folder is not None else None
        if newest is None:
            return ResumePlan()
        if fresh:
            for f in folder.glob("epoch_*.pt"):
                f.unlink()
            return ResumePlan()
        snap, source, auto = load_snapshot(newest), str(newest), True
    diffs = snapshot_differences(snap, train_cfg, data_cfg, model_spec(model))
    refused = [k for k in diffs if k not in allowed]
    if refused and auto:
        raise UsageError(f"--out-dir {out_dir} already holds snapshots up to {Path(source).name} of run "
                         f"{snap.get('run_id') or '?'} trained with other options ({describe_differences(diffs)}); "
                         f"re-run with its options to continue it, pass --resume-from {source} --resume-override "
                         f"{','.join(option_name(k) for k in refused)} to continue with the new ones, or --fresh to "
                         "start over (deleting those snapshots)")
    refuse_changes(diffs, allowed, source)
    plan = ResumePlan(snapshot=snap, source=source, overrides=diffs, stopped=snap.get("stop_reason") if auto else None)
    if auto and (plan.stopped or int(snap.get("epoch", 0)) >= train_cfg.epochs):
        plan.message = (f"{out_dir} holds the finished run {snap.get('run_id') or ''} ({snap.get('epoch')} epochs"
                        f"{', ' + plan.stopped if plan.stopped else ''}): nothing to train (pass --fresh to train "
                        "it again)")
    elif auto:
        plan.message = (f"{out_dir} holds snapshots up to {Path(source).name}: continuing from it (pass --fresh to "
                        "start over)")
    run_id = snap.get("run_id") or uri_run
    run = _run(run_id)
    if run is None:
        plan.previous_run = run_id
        return plan
    epoch = int(snap.get("epoch", 0))
    newest = auto or epoch >= _newest_logged_epoch(run_id)
    saved = {**asdict(TrainConfig()), **(snap.get("train_config") or {})}
    same_command = not diffs and saved == asdict(train_cfg)  # the run's params stay true
    if newest and same_command and not os.environ.get("MLFLOW_RUN_ID"):
        plan.reopen = run_id
    else:
        plan.previous_run = run_id
        plan.mark_killed = newest and run.info.status == "RUNNING"
    return plan
