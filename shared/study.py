"""Studies: a paper's experiment end to end, as one MLflow run tree with a report whose verdicts are computed.

``geomlab <project> study --scale smoke|cpu|paper`` opens one *parent* run per study (found again by the tag
``study_key``, a hash of the project and its resolved settings) and runs the project's existing commands as its
*children*, in this process, exactly as ``geomlab <project> <command> --option value ...`` would (the Typer command is
invoked with an argument list, as the sweeps do). Every run a child opens carries the tags ``study_key`` and
``study_child`` (the child's name plus a hash of its option values), so that re-running the same study command
continues it:

* a child with a FINISHED run under the parent is reused (nothing is run again);
* an interrupted training child (its run RUNNING after a kill -9, or FAILED) resumes with ``--resume-from`` from the
  newest snapshot any of its earlier runs logged; the snapshots of the earlier runs are then copied into the new run,
  so that it holds the whole training history (analyses read ``--run <id>``); the earlier run is closed as KILLED;
* any other interrupted child (an analysis) is run again.

The report (:class:`Report`) holds the settings, the child runs, each claim quoted from the paper's README or poster
with the statistic that tests it, the measured value with its spread and a verdict computed by an explicit rule, and
the figures; it is written as ``report/report.md`` and ``report/report.html`` (figures embedded as base64 PNG, so that
the MLflow UI's artifact view shows it whole) plus ``report/study.json`` and ``report/figures/*.png``.
"""
from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import html
import inspect
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated as Annotated_, Any, Callable, Optional, Sequence

import typer

from shared.errors import UsageError, check

SCALES = ("smoke", "cpu", "paper")
#: settings that name a dataset of the registry (`geomlab datasets`)
DATASET_SETTINGS = ("dataset", "regression", "classification")
#: where the papers' READMEs and poster text live (quoted claims are checked against them by the tests)
SEEDS_DIR = Path(os.environ.get("GEOMLAB_SEEDS_DIR", "/work/shared/seeds"))


def _hash(obj: Any, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _echo(msg: str) -> None:
    typer.echo(f"[study] {msg}", err=True)


# ------------------------------------------------------------------------------------------------------------------
# Settings: a dataclass per study, one preset per scale, every field an option of the `study` command


def setting(default: Any = None, help: str = "", like: Any = None) -> Any:
    """A study setting (a dataclass field). A setting that *is* an option of a project command (the study passes it
    on unchanged) names that command in ``like`` (``"train"``, ``["paths", "norm"]``, or a
    :class:`shared.options.Opt`): the study then takes that option's declaration -- the same name, help text, type
    and hidden old names (one name, one meaning). Any other setting is the study's own and has its ``help``."""
    return field(default=default, metadata={"help": help, "like": like})


#: the help of every study's --seeds (one name, one meaning)
SEEDS_HELP = ("Seeds of the study's independent repetitions (comma-separated): each seed makes one full set of the "
              "study's runs (the command's description says which).")
SCALE_HELP = ("Preset: smoke (embedded digits, under a minute), cpu (Fashion-MNIST, at most 25 min on 2 cores) or "
              "paper (the paper's own settings, for a GPU); the table below gives every preset's values.")


def _parse_value(kind: type, text: Any, name: str) -> Any:
    if not isinstance(text, str):
        return text
    try:
        if kind is bool:
            check(text.lower() in ("true", "false", "on", "off", "1", "0"), f"--{name} takes true or false")
            return text.lower() in ("true", "on", "1")
        if kind in (int, float, str):
            return kind(text)
        if kind in (tuple, list):  # comma-separated numbers or names
            items = [v.strip() for v in text.split(",") if v.strip()]
            return tuple(int(v) if re.fullmatch(r"-?\d+", v) else (float(v) if _is_float(v) else v) for v in items)
    except ValueError:
        raise UsageError(f"--{name} got {text!r}, which is not a valid {kind.__name__}") from None
    return text


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _kind(f: dataclasses.Field, default: Any) -> type:
    return type(default) if default is not None else str


def resolve_settings(presets: dict[str, Any], scale: str, overrides: dict[str, Any]) -> Any:
    """The preset of ``scale`` with every given (not None) override applied."""
    check(scale in presets, f"--scale must be one of: {', '.join(presets)}; got {scale!r}")
    base = presets[scale]
    values = {}
    for f in fields(base):
        given = overrides.get(f.name)
        if given is not None:
            values[f.name] = _parse_value(_kind(f, getattr(base, f.name)), given, f.name.replace("_", "-"))
    out = dataclasses.replace(base, **values)
    from shared.data import DATASETS

    for name in DATASET_SETTINGS:  # checked here, before the parent run opens
        value = getattr(out, name, "")
        check(not value or value in DATASETS, f"--{name} {value!r} is not a registered dataset; use one of: "
                                              f"{DATASETS.choices()}")
    if hasattr(out, "validate"):
        out.validate()
    return out


def _declared(app: typer.Typer, like: Any, name: str):
    """The ``Annotated`` type of option ``name`` as ``like`` (a command of ``app``, or an Opt) declares it."""
    from shared.options import Opt

    if isinstance(like, Opt):
        return like.annotated
    *groups, last = [like] if isinstance(like, str) else list(like)
    node = app
    for g in groups:
        node = next(i.typer_instance for i in node.registered_groups if i.name == g)
    info = next(c for c in node.registered_commands if (c.name or c.callback.__name__.replace("_", "-")) == last)
    param = inspect.signature(info.callback, eval_str=True).parameters.get(name)
    assert param is not None, f"study setting {name}: `{' '.join([*groups, last])}` has no option --{name}"
    return param.annotation


def _study_param(app: typer.Typer, f: dataclasses.Field, presets: dict[str, Any]) -> inspect.Parameter:
    """The `study` option of setting ``f``: default None (the preset's value) unless every preset agrees on a
    single value (then that value, shown by --help)."""
    import copy
    import typing

    values = [getattr(p, f.name) for p in presets.values()]
    agreed = values[0] if all(v == values[0] for v in values) and not isinstance(values[0], (tuple, list)) else None
    like = f.metadata.get("like")
    if like is None:
        annotation = Annotated_[Optional[str], typer.Option(help=f.metadata.get("help", ""))]
        default = None if agreed is None else _show(agreed)
    else:
        declared = _declared(app, like, f.name)
        kind, *meta = typing.get_args(declared)
        base = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
        info = copy.copy(next(m for m in meta if isinstance(m, typer.models.OptionInfo)))
        annotation = Annotated_[base if agreed is not None else Optional[base], info]
        default = agreed
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def presets_table(presets: dict[str, Any]) -> str:
    """The presets' values, one line per setting (the `study` command's --help shows it)."""
    first = next(iter(presets.values()))
    names = ["--" + f.name.replace("_", "-") for f in fields(first)]
    cols = [[_show(getattr(p, f.name)) for f in fields(first)] for p in presets.values()]
    rows = [["option", *presets]] + [[n, *(c[i] for c in cols)] for i, n in enumerate(names)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip() for r in rows)


def register_study(app: typer.Typer, project: str, presets: dict[str, Any], run: Callable[["Study"], None],
                   doc: str) -> None:
    """Add ``study`` to a project's app: ``--scale``, ``--run-name`` (of the parent run) and one option per setting
    (left out: the preset's value; the presets are tabled in the command's help)."""
    from shared import options as opt

    first = next(iter(presets.values()))
    params = [inspect.Parameter("scale", inspect.Parameter.KEYWORD_ONLY, default="smoke",
                                annotation=Annotated_[str, typer.Option(help=SCALE_HELP)])]
    params += [_study_param(app, f, presets) for f in fields(first)]
    params.append(inspect.Parameter("run_name", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=opt.RunName))

    def study_cmd(**kwargs) -> None:
        scale, run_name = kwargs.pop("scale"), kwargs.pop("run_name")
        settings = resolve_settings(presets, scale, kwargs)
        Study(project, scale, settings, run_name=run_name).execute(run)

    study_cmd.__signature__ = inspect.Signature(params)
    study_cmd.__annotations__ = {p.name: p.annotation for p in params}
    study_cmd.__doc__ = doc
    epilog = ("\b\nAn option left out takes the value of the --scale preset:\n" + presets_table(presets))
    app.command("study", epilog=epilog)(study_cmd)


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)


# ------------------------------------------------------------------------------------------------------------------
# Children


@dataclass
class ChildRun:
    """A child that has finished: its run (and every run it opened), reused or made now."""

    name: str
    key: str
    run_id: str
    command: str
    reused: bool
    resumed_from: str | None = None
    run_ids: list[str] = field(default_factory=list)  # every run of this child (nested runs included)


@functools.lru_cache(maxsize=1)
def _cli_root():
    import typer.main

    import shared.cli

    return typer.main.get_command(shared.cli.app)


def resolve_cli(project: str, words: Sequence[str]):
    """The click command of ``geomlab <project> <words...>`` and its program name."""
    node = _cli_root().commands[project.replace("_", "-")]
    prog = f"geomlab {node.name}"
    for w in words:
        node = node.commands[w]
        prog += f" {w}"
    return node, prog


class Study:
    """One study: its parent run, its children (run or reused), its report."""

    def __init__(self, project: str, scale: str, settings: Any, run_name: str | None = None):
        self.project, self.scale, self.settings = project, scale, settings
        self.run_name = run_name  # not part of the key: a name does not change a study
        self.key = _hash({"project": project, "settings": dataclasses.asdict(settings)})
        self.children: list[ChildRun] = []
        self.parent_id: str | None = None
        self.experiment_id: str | None = None
        self.client = None
        self.out_dir: Path | None = None
        self.trained_children = 0  # children that ran now (not reused)

    # -- the parent --------------------------------------------------------------------------------------------
    def _find_parent(self) -> str | None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exps, filter_string=f"tags.study_key = '{self.key}' and "
                                                      "tags.entry_point = 'study'", order_by=["attributes.start_time ASC"],
                                  max_results=10)
        runs = [r for r in runs if r.info.lifecycle_stage == "active"]
        return runs[0].info.run_id if runs else None

    def execute(self, body: Callable[["Study"], None]) -> None:
        """Run the study; at smoke scale on one torch thread (tiny networks: a second thread only adds overhead, and
        on a busy machine makes them several times slower)."""
        import torch

        threads = torch.get_num_threads()
        if self.scale == "smoke":
            torch.set_num_threads(1)
        try:
            self._execute(body)
        finally:
            torch.set_num_threads(threads)

    def _execute(self, body: Callable[["Study"], None]) -> None:
        from mlflow.tracking import MlflowClient

        from shared.experiment import default_out_dir
        from shared.files import ensure_writable_dir
        from shared.tracking import Tracker, configure_tracking

        configure_tracking()
        self.client = MlflowClient()
        existing = self._find_parent()
        outer = os.environ.get("MLFLOW_RUN_ID")
        if existing and outer and outer != existing:  # `mlflow run -e study` made a new run: point it at the study
            self.client.set_tag(outer, "study_parent_run_id", existing)
            os.environ.pop("MLFLOW_RUN_ID", None)
        settings = dataclasses.asdict(self.settings)
        tracker = Tracker(reopen=existing)
        name = self.run_name or (self.client.get_run(existing).info.run_name if existing
                                 else f"study-{self.project}-{self.scale}")  # continued: the name stays
        t0 = time.perf_counter()
        with tracker.start(self.project, "study", run_name=name,
                           params={"study.scale": self.scale, **{f"study.{k}": _show(v) for k, v in settings.items()}},
                           tags={"study_key": self.key, "study_scale": self.scale}) as t:
            self.parent_id, self.experiment_id = t.run_id, t.experiment_id
            self.out_dir = ensure_writable_dir(default_out_dir(self.project, f"study-{t.run_id}"))
            _echo(f"{self.project} study at scale {self.scale}: parent run {t.run_id}"
                  + (" (continued)" if existing else ""))
            body(self)
            seconds = time.perf_counter() - t0
            t.log_metrics({"study_seconds": seconds, "study_children_run": self.trained_children,
                           "study_children_reused": len(self.children) - self.trained_children})
        _echo(f"done in {seconds:.0f} s: {self.trained_children} children run, "
              f"{len(self.children) - self.trained_children} reused; report: runs:/{self.parent_id}/report/report.html")

    # -- children ----------------------------------------------------------------------------------------------
    def _child_runs(self, key: str) -> list:
        runs = self.client.search_runs([self.experiment_id],
                                       filter_string=f"tags.study_key = '{self.key}' and tags.study_child = '{key}'",
                                       order_by=["attributes.start_time ASC"], max_results=1000)
        return [r for r in runs if r.info.lifecycle_stage == "active"]

    def _newest_snapshot(self, runs: list) -> str | None:
        from shared.tracking import list_run_artifacts

        for r in reversed(runs):
            snaps = [p for p in list_run_artifacts(r.info.run_id, "snapshots") if p.endswith(".pt")]
            if snaps:
                return f"runs:/{r.info.run_id}/{snaps[-1]}"
        return None

    def _copy_snapshots(self, earlier: list, run_id: str) -> None:
        """Copy the earlier runs' snapshots that the resumed run lacks into it (the whole history in one run)."""
        import tempfile

        import mlflow

        from shared.tracking import list_run_artifacts

        have = {Path(p).name for p in list_run_artifacts(run_id, "snapshots")}
        for r in earlier:
            for p in list_run_artifacts(r.info.run_id, "snapshots"):
                if Path(p).name in have:
                    continue
                with tempfile.TemporaryDirectory(prefix="geomlab-study-") as d:
                    local = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path=p, dst_path=d)
                    self.client.log_artifact(run_id, local, "snapshots")
                have.add(Path(p).name)

    def child(self, name: str, command: str | Sequence[str], values: dict[str, Any], *,
              resumable: bool = False, project: str | None = None) -> ChildRun:
        """Run ``geomlab <project> <command> --<option> <value> ...`` as a child, or reuse/resume it."""
        from shared.sweep.command import command_args, params_by_name
        from shared.tracking import Tracker

        words = [command] if isinstance(command, str) else list(command)
        project = project or self.project
        key = f"{name}-{_hash({'project': project, 'command': words, 'values': values}, 8)}"
        check(re.fullmatch(r"[A-Za-z0-9_.=,+-]+", key) is not None, f"study child name {name!r} has odd characters")
        runs = self._child_runs(key)
        top = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == self.parent_id]
        done = [r for r in top if r.info.status == "FINISHED"]
        if done:
            r = done[-1]
            child = ChildRun(name, key, r.info.run_id, " ".join(words), True, r.data.tags.get("resumed_from"),
                             [x.info.run_id for x in runs if x.info.start_time >= r.info.start_time])
            _echo(f"{name}: reused run {r.info.run_id}")
            self.children.append(child)
            return child
        cmd, prog = resolve_cli(project, words)
        resume = self._newest_snapshot(top) if resumable and top else None
        for r in runs:  # earlier attempts: a kill -9 leaves them RUNNING
            if r.info.status == "RUNNING":
                self.client.set_terminated(r.info.run_id, "KILLED")
        call = dict(values)
        if resume:
            call["resume_from"] = resume
        if "run_name" in params_by_name(cmd) and call.get("run_name") is None:
            call["run_name"] = f"study-{name}"
        args = command_args(cmd, call)
        _echo(f"{name}: {prog} {' '.join(args)}" + (" (resumed)" if resume else ""))
        old_tags = Tracker.default_tags
        Tracker.default_tags = {**old_tags, "study_key": self.key, "study_child": key}
        try:
            rv = cmd.main(args, prog_name=prog, standalone_mode=False)
        except SystemExit as e:
            rv = e.code
        finally:
            Tracker.default_tags = old_tags
        if rv == 130:
            raise KeyboardInterrupt
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            raise UsageError(f"study child {name} (`{prog}`) exited with code {rv}; re-run the study to continue")
        after = self._child_runs(key)
        # the child's run: a new one, or the interrupted run itself when the resume continued it (shared.resume)
        continued = resume.split("/")[1] if resume else None
        new_top = [r for r in after if r.data.tags.get("mlflow.parentRunId") == self.parent_id
                   and (r.info.run_id not in {x.info.run_id for x in top}
                        or (r.info.run_id == continued and r.info.status == "FINISHED"))]
        check(bool(new_top), f"study child {name} (`{prog}`) opened no MLflow run")
        r = new_top[-1]
        if resume:
            self._copy_snapshots(top, r.info.run_id)
        started = r.info.start_time
        child = ChildRun(name, key, r.info.run_id, " ".join(words), False, resume,
                         [x.info.run_id for x in after if x.info.start_time >= started])
        self.children.append(child)
        self.trained_children += 1
        return child

    # -- reading children's outputs ----------------------------------------------------------------------------
    def load_json(self, run_id: str, artifact: str) -> Any:
        import mlflow

        return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact}")

    def artifacts(self, run_id: str, path: str) -> list[str]:
        from shared.tracking import list_run_artifacts

        return list_run_artifacts(run_id, path)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        hist = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in hist)

    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def nested_runs(self, run_id: str, entry_point: str | None = None) -> list:
        filt = f"tags.mlflow.parentRunId = '{run_id}'" + (f" and tags.entry_point = '{entry_point}'"
                                                         if entry_point else "")
        return self.client.search_runs([self.experiment_id], filter_string=filt,
                                       order_by=["attributes.start_time ASC"], max_results=5000)

    # -- the report --------------------------------------------------------------------------------------------
    def publish(self, report: "Report") -> dict[str, Path]:
        """Write the report (Markdown, HTML, JSON, figures) and log it to the parent run under ``report/``."""
        import mlflow

        from shared.files import atomic_write, write_json
        from shared.plotting import save_figure

        out = self.out_dir / "report"
        figs = out / "figures"
        figs.mkdir(parents=True, exist_ok=True)
        pngs: dict[str, bytes] = {}
        for name, fig in report.figures.items():
            p = save_figure(fig, figs / f"{name}.png")
            pngs[name] = p.read_bytes()
        report.settings = dataclasses.asdict(self.settings)
        report.children = self.children
        paths = {"md": out / "report.md", "html": out / "report.html", "json": out / "study.json"}
        md = report.markdown()
        atomic_write(paths["md"], lambda tmp: Path(tmp).write_text(md))
        page = report.html(pngs)
        atomic_write(paths["html"], lambda tmp: Path(tmp).write_text(page))
        write_json(paths["json"], report.as_dict())
        client = self.client
        for p in paths.values():
            client.log_artifact(self.parent_id, str(p), "report")
        client.log_artifacts(self.parent_id, str(figs), "report/figures")
        for c in report.claims:
            client.set_tag(self.parent_id, f"verdict.{c.name}", c.verdict)
        mlflow.log_metrics({f"claim_{c.name}": c.value for c in report.claims if c.value is not None
                            and math.isfinite(c.value)})
        _echo(f"report: {paths['html']} (also runs:/{self.parent_id}/report/report.html)")
        return paths


# ------------------------------------------------------------------------------------------------------------------
# Claims, verdicts and the report

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive at this scale"


@dataclass
class Claim:
    """One claim of the paper, the statistic that tests it, what was measured and the verdict of the stated rule."""

    name: str
    quote: str  # verbatim from the README / poster
    source: str  # file name under SEEDS_DIR
    statistic: str
    measured: str  # the value with its spread, as text
    rule: str  # the explicit rule that turns the numbers into the verdict
    verdict: str
    value: float | None = None  # the headline number (logged as metric claim_<name>)


def verdict_by_interval(lo: float, hi: float, threshold: float, *, above_holds: bool = True) -> str:
    """``holds`` when the whole interval lies on the claim's side of ``threshold``, ``does not hold`` when it lies
    wholly on the other side, else inconclusive (also when the interval is undefined)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if (lo > threshold) if above_holds else (hi < threshold):
        return HOLDS
    if (hi < threshold) if above_holds else (lo > threshold):
        return FAILS
    return INCONCLUSIVE


def verdict_by_p(p: float | None, effect: float | None, alpha: float = 0.05, *, positive: bool = True) -> str:
    """``holds`` when p < alpha and the effect has the claimed sign; ``does not hold`` when p < alpha with the other
    sign; else inconclusive."""
    if p is None or effect is None or not (math.isfinite(p) and math.isfinite(effect)):
        return INCONCLUSIVE
    if p < alpha:
        return HOLDS if (effect > 0) == positive else FAILS
    return INCONCLUSIVE


def spearman(xs: Sequence[float], ys: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's rho and its two-sided p-value (scipy); (None, None) when a column is constant."""
    from scipy.stats import spearmanr

    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None, None
    r = spearmanr(xs, ys)
    rho, p = float(r.statistic), float(r.pvalue)
    return (None, None) if math.isnan(rho) else (rho, p)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, standard deviation (ddof 1), and Student's t interval mean ± t(level, n-1) sd / sqrt(n) (nan for n < 2)."""
    import numpy as np
    from scipy.stats import t as student_t

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan, math.nan
    sd = float(v.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return m, sd, m - half, m + half


def fmt_spread(values: Sequence[float], digits: int = 3) -> str:
    m, sd, lo, hi = mean_ci(values)
    if not math.isfinite(m):
        return "n/a"
    if not math.isfinite(sd):
        return f"{m:.{digits}g} (n = 1)"
    return f"{m:.{digits}g} ± {sd:.{digits}g} (sd, n = {len(values)}; 95% t-interval {lo:.{digits}g} .. {hi:.{digits}g})"


@dataclass
class Report:
    title: str
    project: str
    scale: str
    summary: str  # what was run, and what the scale reduced
    claims: list[Claim] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)  # (title, header, rows)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib figure
    captions: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    children: list[ChildRun] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"title": self.title, "project": self.project, "scale": self.scale, "summary": self.summary,
                "settings": {k: _show(v) for k, v in self.settings.items()},
                "claims": [dataclasses.asdict(c) for c in self.claims],
                "tables": [{"title": t, "header": h, "rows": [[_cell(c) for c in r] for r in rows]}
                           for t, h, rows in self.tables],
                "children": [dataclasses.asdict(c) for c in self.children], "figures": list(self.figures)}

    def verdict_rows(self) -> list[list[str]]:
        return [[c.name, f"“{c.quote}”", c.statistic, c.measured, c.verdict] for c in self.claims]

    def _sections(self) -> list[tuple[str, str, list[str], list[list[Any]]]]:
        """(heading, text, header, rows) in report order, shared by both renderings."""
        s = [("Settings", f"Scale `{self.scale}`. {self.summary}", ["setting", "value"],
              [[k, _show(v)] for k, v in self.settings.items()]),
             ("Verdicts", "Each verdict is computed from the numbers by the rule given with it.",
              ["claim", "quoted from the paper", "statistic", "measured", "verdict"], self.verdict_rows())]
        for c in self.claims:
            s.append((f"Claim `{c.name}`", f"Source: `{c.source}`. Quote: “{c.quote}”. Statistic: {c.statistic}. "
                                           f"Measured: {c.measured}. Rule: {c.rule}. **Verdict: {c.verdict}.**", [], []))
        for title, header, rows in self.tables:
            s.append((title, "", header, rows))
        s.append(("Child runs", "Reused: finished by an earlier invocation of the same study command.",
                  ["child", "command", "run", "reused", "resumed from"],
                  [[c.name, c.command, c.run_id, "yes" if c.reused else "no", c.resumed_from or ""]
                   for c in self.children]))
        return s

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for heading, text, header, rows in self._sections():
            lines += [f"## {heading}", ""]
            if text:
                lines += [text, ""]
            if header:
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(_cell(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |"
                          for r in rows]
                lines.append("")
        lines += ["## Figures", ""]
        for name in self.figures:
            lines += [f"![{name}](figures/{name}.png)", "", self.captions.get(name, ""), ""]
        return "\n".join(lines)

    def html(self, pngs: dict[str, bytes]) -> str:
        def esc(s: Any) -> str:
            t = html.escape(_cell(s))
            return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", re.sub(r"`([^`]+)`", r"<code>\1</code>", t))

        body = [f"<h1>{esc(self.title)}</h1>"]
        for heading, text, header, rows in self._sections():
            body.append(f"<h2>{esc(heading)}</h2>")
            if text:
                body.append(f"<p>{esc(text)}</p>")
            if header:
                body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
                            + "</table>")
        body.append("<h2>Figures</h2>")
        for name, data in pngs.items():
            b64 = base64.b64encode(data).decode()
            body.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{esc(name)}: {esc(self.captions.get(name, ''))}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
                 "margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}img{max-width:100%}"
                 "code{background:#f3f3f3}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return ",".join(map(_cell, v))
    return "" if v is None else str(v)


def quote_in_seed(quote: str, source: str) -> bool:
    """Does the quote appear verbatim (whitespace-normalized) in the seed file?"""
    text = " ".join((SEEDS_DIR / source).read_text().split())
    return " ".join(quote.split()) in text
