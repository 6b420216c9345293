"""depth_limit's analysis runs over finished fits: weight paths (``paths``) and the gradient-decay fit
(``curve-fit``)."""
from __future__ import annotations

from typing import Callable

from projects.depth_limit import paths as P
from projects.depth_limit import plots
from projects.depth_limit.curvefit import OmegaFit, fit_history
from projects.depth_limit.inputs import load_weight_sources, metric_history
from projects.depth_limit.pvar import check_p
from projects.depth_limit.tfevents import read_scalar_series
from shared.errors import UsageError
from shared.experiment import default_out_dir
from shared.files import ensure_writable_dir, write_json
from shared.plotting import save_figure
from shared.progress import say
from shared.tracking import Tracker, parse_run_ref

PROJECT = "depth_limit"


# ---------------------------------------------------------------------------------------------------------------
# curve fit


def curve_fit_run(*, run: str | None, event_path: str | None, tag: str, filter_period: int, window_size: int,
                  scaling_x: float, infer_shift: bool, out_dir: str | None = None, run_name: str | None = None,
                  plot: bool = True) -> tuple[OmegaFit, dict]:
    """Fit the decay of a metric history; files go to ``out_dir`` (default: the run's own output folder)."""
    if (run is None) == (event_path is None):
        raise UsageError("pass exactly one input: --run <MLflow run id> or --event-path <TensorBoard event file>")
    if run is not None:
        steps, values = metric_history(run, tag)
        source_run = parse_run_ref(run)
    else:
        steps, values = read_scalar_series(event_path, tag)
        source_run = None
    # the original indexes the history t = 1..n (MLflow steps of a fit are 1..n too)
    fit = fit_history(values, filter_period=filter_period, window_size=window_size, scaling_x=scaling_x,
                      infer_shift=infer_shift)
    if out_dir:
        ensure_writable_dir(out_dir)
    res = {"input": run or event_path, "tag": tag, "n_values": int(values.size), **fit.as_dict(),
           "options": {"filter_period": filter_period, "window_size": window_size, "scaling_x": scaling_x,
                       "infer_shift": infer_shift}}
    tracker = Tracker()
    params = {"curve_fit.input": run or event_path, "curve_fit.tag": tag, "curve_fit.filter_period": filter_period,
              "curve_fit.window_size": window_size, "curve_fit.scaling_x": scaling_x,
              "curve_fit.infer_shift": infer_shift}
    with tracker.start(PROJECT, "curve_fit", run_name=run_name, params=params,
                       tags={"source_run_id": source_run} if source_run else {}) as t:
        out = ensure_writable_dir(out_dir or default_out_dir(PROJECT, t.run_id))
        json_path = write_json(out / "curve_fit.json", res)
        t.log_metrics({**{f"fit_{k}": v for k, v in fit.params.items()},
                       **{f"fit_{k}_sd": v for k, v in fit.sd.items()},
                       **{f"fit_{k}_std_error": v for k, v in fit.std_error.items()}, "fit_points": fit.n_points})
        t.log_artifact(json_path, "curve_fit")
        if plot:
            fig_path = save_figure(plots.plot_curve_fit(fit, tag), out / "avg_grad_norm.png", tracker=t)
            res["figure"] = str(fig_path)
        res["run_id"] = t.run_id
    return fit, res


# ---------------------------------------------------------------------------------------------------------------
# paths


def paths_run(kind: str, sources: list[str], *, beta: float, p: float, pvar_only: bool, ci: bool, z: float,
              entries: str | None, ext: str, out_dir: str | None = None, run_name: str | None = None,
              echo: Callable[[str], None] = say) -> dict:
    """``norm`` (curves of |L^beta W_k|, or with pvar_only the p-variation table) or ``weights`` (chosen entries).
    Files go to ``out_dir`` (default: the run's own output folder, so that runs never overwrite each other)."""
    if kind == "norm" and pvar_only:
        check_p(p)
    loaded = load_weight_sources(sources, ext)
    groups = P.group_by_depth([(label, w) for label, w, _ in loaded])
    run_ids = sorted({r for _, _, r in loaded if r})
    if out_dir:
        ensure_writable_dir(out_dir)
    result: dict = {"inputs": sources, "depths": list(groups), "runs_per_depth": {L: len(v) for L, v in groups.items()},
                    "beta": beta}
    figures: dict[str, object] = {}  # file name -> figure
    text = None
    if kind == "norm" and pvar_only:
        table = P.pvar_table(groups, p, beta)
        text = P.format_pvar_table(table, p)
        echo(text)
        result.update(p=p, pvar={str(L): v for L, v in table.items()})
    elif kind == "norm":
        curves = P.norm_curves(groups, beta, z)
        figures[f"path_norm_beta={beta:g}.png"] = plots.plot_norm_curves(curves, beta, ci)
        result["curves"] = {str(c.L): {"x": c.x.tolist(), "mean": c.mean.tolist(), "half_width": c.half_width.tolist(),
                                       "runs": c.runs} for c in curves}
    else:
        ent = P.parse_entries(entries)
        curves = P.entry_curves(groups, ent, beta)
        for (i, j), lines in curves.items():
            figures[f"path_weights_{i}_{j}.png"] = plots.plot_entry_curves(lines, (i, j), beta)
        result["entries"] = [list(e) for e in ent]
    tags = {"source_run_id": run_ids[0]} if len(run_ids) == 1 else ({"source_run_ids": ",".join(run_ids)} if run_ids else {})
    params = {"paths.kind": kind, "paths.inputs": " ".join(sources)[:5000], "paths.beta": beta, "paths.p": p,
              "paths.pvar_only": pvar_only, "paths.ci": ci, "paths.entries": entries or "default"}
    with Tracker().start(PROJECT, "paths", run_name=run_name, params=params, tags=tags) as t:
        out = ensure_writable_dir(out_dir or default_out_dir(PROJECT, t.run_id))
        t.log_artifact(write_json(out / f"paths_{kind}.json", result), "paths")
        paths = [save_figure(fig, out / name, tracker=t) for name, fig in figures.items()]
        if text:
            t.log_text(text, "paths/pvar_table.txt")
        result["run_id"] = t.run_id
    result["figures"] = [str(f) for f in paths]
    return result
