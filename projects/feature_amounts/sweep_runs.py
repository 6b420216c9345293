"""A resumable sweep over feature_amounts networks (one parent run, a child run per network, the CSV), and the plot
run over a sweep's results."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence


from shared import interrupts
from shared.data import DataConfig, load_data
from shared.errors import check
from shared.experiment import default_out_dir, is_run_id
from shared.files import ensure_writable_dir, write_text
from shared.plotting import save_figure
from shared.progress import say
from shared.tracking import Tracker, configure_tracking, parse_run_ref, resolve_input
from shared.train import TrainConfig

from .results import from_csv, to_csv
from .config import PROJECT, SWEEP_CSV, FAOptions, Target, _hash, train_key
from .training import _search, last_snapshot, load_record, memory_setting, train_target


# ------------------------------------------------------------------------------------------------------------------
# Sweep


@dataclass
class SweepOutcome:
    parent_run_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    csv_path: Path | None = None


def sweep(targets: Sequence[Target], data_cfg: DataConfig, train_cfg: TrainConfig, opts: FAOptions, *,
          out_dir: str | Path | None = None, run_name: str | None = None, fresh: bool = False,
          progress: bool = True, echo=say) -> SweepOutcome:
    """Train every target as a child run of one parent run; re-running the same command continues.

    Finished variants (``fa.complete`` with the same ``fa.train_key``) are skipped and their rows reused; an
    interrupted one is continued in its own run from its newest snapshot; the parent run is re-opened.
    """
    check(len(targets) > 0, "the selection is empty; widen --start/--stop or the --means/--scales/--skews filters")
    opts.validate()
    configure_tracking()
    tkey = train_key(data_cfg, train_cfg, opts)
    skey = _hash({"train": tkey, "targets": [t.vid for t in targets]})
    data = load_data(data_cfg, seed=train_cfg.seed)
    loader_start = data.train.state_dict()
    base_out = ensure_writable_dir(out_dir) if out_dir else None
    memory_now = memory_setting(opts, train_cfg)  # before any run is opened (an unusable --device is bad input)
    parent = None if fresh or os.environ.get("MLFLOW_RUN_ID") else \
        next(iter(_search(f"tags.`fa.sweep_key` = '{skey}' and tags.`fa.role` = 'sweep'")), None)
    tracker = Tracker(reopen=parent.info.run_id) if parent is not None else Tracker()
    params = {"sweep.variants": len(targets), "sweep.first": targets[0].vid, "sweep.last": targets[-1].vid,
              "dataset": data_cfg.dataset, "epochs": train_cfg.epochs, **{f"fa.{k}": v for k, v in asdict(opts).items()}}
    with tracker.start(PROJECT, "sweep", run_name=run_name or f"sweep-{data_cfg.dataset}-vgg{opts.vgg_depth}",
                       params=params, tags={"fa.role": "sweep", "fa.sweep_key": skey, "fa.train_key": tkey}) as t:
        outcome = SweepOutcome(t.run_id)
        if parent is not None:
            echo(f"continuing sweep run {t.run_id}")
        csv_dir = base_out or ensure_writable_dir(default_out_dir(PROJECT, t.run_id))
        outcome.csv_path = csv_dir / "sweep.csv"
        done_runs: dict[str, Any] = {}
        partial_runs: dict[str, Any] = {}
        retry_memory: dict[str, str] = {}  # variant -> the setting an earlier run of it ran out of memory with
        if not fresh:
            for r in _search(f"tags.`fa.train_key` = '{tkey}' and tags.`fa.role` = 'variant'"):
                vid = r.data.tags.get("fa.variant_id")
                failed_with = r.data.tags.get("fa.memory_failure")
                if failed_with is not None and failed_with != memory_now:
                    retry_memory.setdefault(vid, failed_with)  # another limit or device: not done, try again
                elif r.data.tags.get("fa.complete") == "1":
                    done_runs.setdefault(vid, r)
                elif r.data.tags.get("mlflow.parentRunId") == t.run_id:
                    partial_runs.setdefault(vid, r)
        for i, target in enumerate(targets):
            interrupts.check()  # a safe point: between variants
            prefix = f"[{i + 1}/{len(targets)}] {target.vid}"
            if target.vid in done_runs:
                rec = load_record(done_runs[target.vid])
                outcome.skipped.append(target.vid)
                if rec is not None:
                    outcome.records.append(rec)
                else:
                    outcome.failed.append(target.vid)
                echo(f"{prefix}: already finished in run {done_runs[target.vid].info.run_id}, skipped")
                continue
            resume_run = resume_from = None
            if target.vid in retry_memory:
                echo(f"{prefix}: ran out of memory before ({retry_memory[target.vid]}); trying again with "
                     f"{memory_now}")
            if target.vid in partial_runs:
                resume_run = partial_runs[target.vid].info.run_id
                resume_from = last_snapshot(resume_run, base_out / target.vid if base_out else None)
                outcome.resumed.append(target.vid)
                echo(f"{prefix}: resuming run {resume_run} from {resume_from or 'the start'}")
            data.train.load_state_dict(loader_start)  # every variant sees the same batch order
            res = train_target(target, data, data_cfg, train_cfg, opts, entry_point="sweep",
                               tags={"fa.train_key": tkey, "fa.sweep_key": skey},
                               out_dir=base_out / target.vid if base_out else None, resume_run=resume_run,
                               resume_from=resume_from, progress=progress, catch_training_errors=True,
                               fresh=resume_run is None)  # the sweep's records decide; leftover snapshots do not
            if res.error:
                outcome.failed.append(target.vid)
                echo(f"{prefix}: failed ({res.error})")
            else:
                outcome.trained.append(target.vid)
                outcome.records.append(res.record)
                r = res.record
                echo(f"{prefix}: BestVal {r['BestVal']:.2f}% at epoch {r['BestEpoch']}, {r['EpochsDone']} epochs"
                     + (f" ({r['StopReason']})" if r.get("StopReason") else "") + f", run {res.run_id}")
            _write_csv(t, outcome)
        _write_csv(t, outcome)
        if outcome.records:
            best = max(outcome.records, key=lambda r: r["BestVal"])
            t.log_metrics({"best_val_acc": best["BestVal"] / 100.0, "sweep_done": len(outcome.records),
                           "sweep_failed": len(outcome.failed)})
            t.set_tags({"sweep.best_variant": best.get("VariantId")})
    return outcome


def _write_csv(t: Tracker, outcome: SweepOutcome) -> None:
    order = {r.get("VariantId"): r for r in outcome.records}
    text = to_csv(order.values())
    write_text(outcome.csv_path, text)
    t.log_artifact(outcome.csv_path, "feature_amounts")




# ------------------------------------------------------------------------------------------------------------------
# Plot


def read_results(source: str) -> tuple[list[dict[str, Any]], str | None]:
    """Records from a CSV file, an MLflow artifact URI, or a sweep's parent run id (its feature_amounts/sweep.csv)."""
    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir():
            p = p / "sweep.csv"
            check(p.exists(), f"{source} is a folder without sweep.csv; pass the sweep's CSV or its run id")
        return from_csv(p.read_text()), None
    if source.endswith(".csv"):
        path, run_id = resolve_input(source, "results CSV")
        return from_csv(Path(path).read_text()), run_id
    run_id = parse_run_ref(source)
    check(is_run_id(run_id),
          f"{source} is neither a CSV file nor an MLflow run id; pass the sweep's CSV or its parent run id")
    path, _ = resolve_input(f"runs:/{run_id}/{SWEEP_CSV}", "sweep results")
    return from_csv(Path(path).read_text()), run_id


def plot(source: str, out_dir: str | Path | None = None, run_name: str | None = None,
         tracker: Tracker | None = None) -> tuple[str | None, list[Path]]:
    """Accuracy against mean and skew, and against parameter count, logged to a ``plot`` run."""
    from .plots import figure_mean_skew, figure_parameters

    configure_tracking()
    records, source_run = read_results(source)
    tracker = tracker or Tracker()
    tags = {"fa.role": "plot", **({"source_run_id": source_run} if source_run else {})}
    with tracker.start(PROJECT, "plot", run_name=run_name or "plot", params={"source": source, "rows": len(records)},
                       tags=tags) as t:
        out = ensure_writable_dir(out_dir or default_out_dir(PROJECT, t.run_id))
        title = f"{len(records)} networks" + (f" (sweep {source_run[:8]})" if source_run else "")
        paths = []
        if any(r.get("Mean") is not None for r in records):
            paths.append(save_figure(figure_mean_skew(records, title), out / "accuracy_vs_mean_skew.png", t))
        paths.append(save_figure(figure_parameters(records, title), out / "accuracy_vs_parameters.png", t))
    return t.run_id, paths
