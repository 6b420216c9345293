"""`make demo`: every project's main job on the embedded `digits` data, as nested MLflow runs under one demo run.

Run through MLflow (``mlflow run . -e demo --env-manager local``) or directly (``python -m shared.demo``). The steps
are ``shared`` (the root ``train``) and every project that has ``projects/<name>/demo.py: run_demo(out_dir)``
(discovered, see :mod:`shared.projects`); a step that fails is reported and the demo exits non-zero after running
the others. Progress goes to stderr; the summary of what was logged to stdout.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

from shared.errors import UsageError
from shared.parsing import parse_choices
from shared.progress import say



def demo_steps() -> dict[str, str | None]:
    """``{step: module}``: ``shared`` first, then every project with a ``demo.py``."""
    from shared.projects import project_modules

    return {"shared": None, **project_modules("demo")}


def _shared_step(out_dir: Path) -> None:
    from shared.data import DataConfig
    from shared.experiment import run_training
    from shared.train import TrainConfig

    out = run_training(project="shared", entry_point="train", arch="lenet_small", run_name="demo-lenet-digits",
                       data_cfg=DataConfig(dataset="digits", batch_size=64, augmentation=True),
                       train_cfg=TrainConfig(epochs=3, lr=0.05, snapshot_every=1), model_options={"width": 8},
                       out_dir=str(out_dir / "lenet"))
    print(f"  lenet_small on digits: test accuracy {out.result.final['test_acc']:.3f} (run {out.run_id})")


def ui_command(uri: str) -> str:
    """The command that opens the MLflow UI on ``uri``: ``make ui`` for the checkout's default store, else the
    virtual environment's ``mlflow ui`` bound to 127.0.0.1."""
    import shlex

    if not uri.startswith("sqlite:///"):
        return f"open {uri} in a browser (the tracking server's own UI)"
    root = Path(__file__).resolve().parents[1]
    if Path(uri[len("sqlite:///"):]) == root / "mlflow.db" and (root / "Makefile").exists():
        return f"make -C {shlex.quote(str(root))} ui   (then http://127.0.0.1:5000)"
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    return (f"{shlex.quote(str(mlflow_exe))} ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port 5000"
            "   (then http://127.0.0.1:5000)")


def main(argv: list[str] | None = None) -> int:
    STEPS = demo_steps()
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", default="all", help="comma-separated steps, or all: " + ", ".join(STEPS))
    ap.add_argument("--out-dir", default="outputs/demo")
    args = ap.parse_args(argv)
    from mlflow.tracking import MlflowClient

    from shared.files import ensure_writable_dir
    from shared.tracking import DEMO_EXPERIMENT, Tracker, configure_tracking

    uri = configure_tracking()
    try:
        steps = list(STEPS) if args.steps == "all" else parse_choices(args.steps, STEPS, "demo step")
    except UsageError as e:
        say(f"error: {e}")
        return 2
    out_dir = ensure_writable_dir(args.out_dir)
    failed: list[str] = []
    t_all = time.perf_counter()
    tracker = Tracker()
    with tracker.start("geomlab", "demo", run_name="demo", experiment=DEMO_EXPERIMENT) as t:
        demo_run = t.run_id
        for step in steps:
            t0 = time.perf_counter()
            say(f"[demo] {step} ...")
            try:
                if STEPS[step] is None:
                    _shared_step(out_dir / step)
                else:
                    importlib.import_module(STEPS[step]).run_demo(ensure_writable_dir(out_dir / step))
            except Exception:
                traceback.print_exc()
                failed.append(step)
            dt = time.perf_counter() - t0
            t.log_metrics({f"demo_seconds_{step}": dt})
            say(f"[demo] {step} done in {dt:.1f} s")
        t.log_metrics({"demo_seconds_total": time.perf_counter() - t_all})
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]  # the steps log to their projects' experiments
    runs = client.search_runs(exps, filter_string=f"tags.mlflow.parentRunId = '{demo_run}'", max_results=500)
    grand = []
    for r in runs:
        grand += client.search_runs(exps, filter_string=f"tags.mlflow.parentRunId = '{r.info.run_id}'",
                                    max_results=500)
    print(f"\n[demo] logged to {uri}: demo run {demo_run} with {len(runs)} child runs"
          + (f" and {len(grand)} grandchild runs" if grand else "") + f" ({time.perf_counter() - t_all:.0f} s)")
    for r in sorted(runs, key=lambda r: r.info.start_time):
        arts = [a.path for a in client.list_artifacts(r.info.run_id)]
        name = r.info.run_name or r.info.run_id
        print(f"  {name:32s} {r.data.tags.get('project', ''):16s} metrics={len(r.data.metrics):3d} "
              f"artifacts={','.join(arts)[:70]}")
    print(f"\n[demo] open the UI with:  {ui_command(uri)}")
    if failed:
        say(f"[demo] FAILED steps: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
