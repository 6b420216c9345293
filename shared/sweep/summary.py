"""The parent run's summary of a study: trial table, best trial, parameter importances, Optuna's plots."""
from __future__ import annotations

import time
import warnings

import typer

from .command import first_line, fmt
from .storage import quiet_optuna


def summarize(sweep) -> None:
    """Log the study so far to the parent run and to the default output folder's ``sweeps/<study>/``
    (:func:`shared.experiment.default_out_dir`): trial table, best trial, parameter importances, Optuna's plots."""
    import optuna
    from mlflow.entities import Metric, RunTag

    from shared.experiment import default_out_dir
    from shared.files import write_json
    from shared.plotting import save_figure

    s, pid = sweep.s, sweep.parent_id
    trials = sweep.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    counts = sweep.counts()
    out = default_out_dir("sweeps", s.study)
    table = [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
              "mlflow_run_ids": t.user_attrs.get("mlflow_run_ids", []),
              **{k: t.user_attrs[k] for k in ("error", "invalid") if k in t.user_attrs},
              **({"retry_of": t.system_attrs["failed_trial"]} if "failed_trial" in t.system_attrs else {})}
             for t in trials]
    tags = {"n_trials_target": sweep.target_n,
            **{f"n_{k.lower()}": counts[k] for k in ("COMPLETE", "PRUNED", "FAIL", "INVALID")}}
    files = [write_json(out / "trials.json", table)]
    metrics = []
    if complete:
        best = sweep.study.best_trial
        info = {"number": best.number, "value": best.value, "params": best.params, "metric": s.metric,
                "direction": s.direction, "mlflow_run_ids": best.user_attrs.get("mlflow_run_ids", [])}
        sweep.study.set_user_attr("geomlab_best", info)
        files.append(write_json(out / "best_trial.json", info))
        tags.update({"best_trial": best.number, "best_value": best.value,
                     **{f"best_params.{k}": fmt(v) for k, v in best.params.items()},
                     **({"best_run_id": info["mlflow_run_ids"][0]} if info["mlflow_run_ids"] else {})})
        metrics.append(Metric("best_value", float(best.value), int(time.time() * 1000),
                              counts["COMPLETE"] + counts["PRUNED"]))
    sweep.client.log_batch(pid, metrics=metrics, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    for f in files:
        sweep.client.log_artifact(pid, str(f), "sweep")
    varied = [k for k in sweep.space.distributions if len({repr(t.params.get(k)) for t in complete}) > 1]
    if len(complete) >= 2 and varied:  # importances need at least two finished points that differ
        try:
            with quiet_optuna(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(sweep.study, params=varied)
        except Exception as e:
            typer.echo(f"warning: no parameter importances yet ({first_line(e)})", err=True)
        else:
            f = write_json(out / "param_importances.json", {"metric": s.metric, "n_complete": len(complete),
                                                           "importances": {k: float(v) for k, v in imp.items()}})
            sweep.client.log_artifact(pid, str(f), "sweep")
    plots = [("optimization_history", 1), ("parallel_coordinate", 2)]
    for name, need in plots:
        if len(complete) < need:
            continue
        from optuna.visualization import matplotlib as ovm

        try:
            with quiet_optuna(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ovm, f"plot_{name}")(sweep.study, target_name=s.metric)
        except Exception as e:
            typer.echo(f"warning: no {name} plot ({first_line(e)})", err=True)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        path = save_figure(fig, out / f"{name}.png")
        sweep.client.log_artifact(pid, str(path), "figures")


