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

The report (:class:`Report`) holds the settings, the hardware, the paper's central claims (:class:`Paper`, kept in the
project's study module) and which of them are tested, the child runs, each claim with the statistic that tests it,
the measured value with its spread, its null (the same statistic where the claim's cause is absent, measured in the
same study), the design's preconditions (a failed one makes the claim "not tested") and a verdict computed by an
explicit rule, and the figures; it is written as ``report/report.md`` and ``report/report.html`` (figures embedded as base64 PNG, so that
the MLflow UI's artifact view shows it whole) plus ``report/study.json`` and ``report/figures/*.png``.

Modules: ``settings`` (a study's settings, presets and their parsing), ``command`` (the ``study`` command of a project),
``driver`` (:class:`Study`: the parent run, its children reused, resumed or run; the report written and logged),
``report`` (claims, verdict rules, the statistics helpers and the report's renderings). Everything is re-exported
here: import from ``shared.study``.
"""
from __future__ import annotations

from .command import register_study
from .driver import ChildRun, Study, resolve_cli
from .report import (FAILS, HOLDS, INCONCLUSIVE, NOT_TESTED, VERDICTS, Claim, Paper, PaperClaim, Precondition, Report,
                     fmt_spread, mean_ci, spearman, verdict_by_interval, verdict_by_p, verdict_vs_null)
from .settings import (DATASET_SETTINGS, SCALE_HELP, SCALES, SEEDS_HELP, _show, presets_table, resolve_settings,
                       setting)

__all__ = [
    "DATASET_SETTINGS", "FAILS", "HOLDS", "INCONCLUSIVE", "NOT_TESTED", "SCALES", "SCALE_HELP", "SEEDS_HELP", "VERDICTS",
    "ChildRun", "Claim", "Paper", "PaperClaim", "Precondition", "Report", "Study", "fmt_spread", "mean_ci",
    "presets_table", "register_study", "resolve_cli", "resolve_settings", "setting", "spearman", "verdict_by_interval",
    "verdict_by_p", "verdict_vs_null",
    # private helpers that tests import from here
    "_show",
]
