"""The study driver: the parent run of a study and its children (see :mod:`shared.study`).

:class:`Study` finds the parent run again by its ``study_key`` tag (or opens it), runs each child through the CLI in
this process (:func:`resolve_cli`), reuses a finished child, resumes an interrupted training child from its newest
snapshot (copying the earlier runs' snapshots into the new run), and writes and logs the report to the parent run.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import typer

from shared import interrupts
from shared.errors import UsageError, check

from .settings import _show

if TYPE_CHECKING:
    from .report import Report



def _hash(obj: Any, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _echo(msg: str) -> None:
    typer.echo(f"[study] {msg}", err=True)


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
        self.hardware: dict[str, str] = {}  # shared.hardware.describe(): tagged hw.* on the parent, shown in the report

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
        from shared.hardware import describe

        self.hardware = describe(getattr(self.settings, "device", "auto"))
        with tracker.start(self.project, "study", run_name=name,
                           params={"study.scale": self.scale, **{f"study.{k}": _show(v) for k, v in settings.items()}},
                           tags={"study_key": self.key, "study_scale": self.scale,
                                 **{f"hw.{k}": v for k, v in self.hardware.items()}}) as t:
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

        interrupts.check()  # a safe point: between study children
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
        old_tags, old_exp = Tracker.default_tags, Tracker.child_experiment_id
        Tracker.default_tags = {**old_tags, "study_key": self.key, "study_child": key}
        Tracker.child_experiment_id = self.experiment_id  # the study's run tree in one experiment
        try:
            rv = cmd.main(args, prog_name=prog, standalone_mode=False)
        except SystemExit as e:
            rv = e.code
        finally:
            Tracker.default_tags, Tracker.child_experiment_id = old_tags, old_exp
        if rv in (130, 143):  # the child stopped at a safe point on Ctrl-C / SIGTERM: so does the study
            raise interrupts.interrupted(interrupts.requested() or rv - 128)  # typer returns 130 for both
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            raise UsageError(f"study child {name} (`{prog}`) exited with code {rv}; re-run the study to continue")
        after = self._child_runs(key)
        # the child's run: a new one, or the interrupted run itself when the resume continued it (shared.resume)
        from shared.tracking import parse_run_ref

        continued = parse_run_ref(resume) if resume else None
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
        report.hardware = {**self.hardware, **report.hardware}  # a project adds what it chose (e.g. the precision)
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
        for k, v in report.hardware.items():
            client.set_tag(self.parent_id, f"hw.{k}", v)
        mlflow.log_metrics({f"claim_{c.name}": c.value for c in report.claims if c.value is not None
                            and math.isfinite(c.value)})
        _echo(f"report: {paths['html']} (also runs:/{self.parent_id}/report/report.html)")
        return paths
