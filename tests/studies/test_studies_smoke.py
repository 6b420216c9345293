"""`geomlab <project> study --scale smoke` end to end: the run tree, the report, computed verdicts, and a re-run that
trains nothing."""
from __future__ import annotations

import base64
import json
import re

import pytest
from helpers import step_counter

from shared.study import VERDICTS

PROJECTS = ["hyperplane-bias", "depth-limit", "feature-amounts", "cone-geometry"]


@pytest.fixture
def steps(monkeypatch):
    import shared.train

    counter = step_counter()
    monkeypatch.setattr(shared.train, "GLOBAL_CALLBACKS", [counter])
    return counter


def _study_runs(client, exp_ids):
    return client.search_runs(exp_ids, filter_string="tags.entry_point = 'study'")


@pytest.mark.timeout(1800)  # each runs a whole smoke study twice (under a minute each on an idle machine)
@pytest.mark.parametrize("project", PROJECTS)
def test_smoke_study_end_to_end_and_rerun_trains_nothing(project, mlflow_store, cli, steps):
    import mlflow
    from mlflow.tracking import MlflowClient

    res = cli(project, "study", "--scale", "smoke")
    assert res.exit_code == 0, res.stderr + res.stdout
    assert steps.steps > 0
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    (parent,) = _study_runs(client, exps)
    pid = parent.info.run_id
    assert parent.info.status == "FINISHED"
    children = client.search_runs(exps, filter_string=f"tags.mlflow.parentRunId = '{pid}'")
    assert len(children) >= 4
    assert all(c.data.tags.get("study_key") == parent.data.tags["study_key"] for c in children)
    # the report: Markdown + self-contained HTML with embedded figures, and the numbers behind it
    arts = {a.path for a in client.list_artifacts(pid, "report")}
    assert {"report/report.md", "report/report.html", "report/study.json"} <= arts
    page = mlflow.artifacts.load_text(f"runs:/{pid}/report/report.html")
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert imgs and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in imgs)
    doc = json.loads(mlflow.artifacts.load_text(f"runs:/{pid}/report/study.json"))
    assert len(doc["claims"]) >= 2
    for c in doc["claims"]:
        assert c["verdict"] in VERDICTS and c["rule"] and c["quote"]
    for c in doc["claims"]:
        assert parent.data.tags[f"verdict.{c['name']}"] == c["verdict"]
    md = mlflow.artifacts.load_text(f"runs:/{pid}/report/report.md")
    assert all(c["name"] in md for c in doc["claims"])
    # every child run of the report is a run of the tree
    ids = {c.info.run_id for c in children}
    assert {c["run_id"] for c in doc["children"]} <= ids

    # the same command again: every child reused, no training step, no new child run
    before = steps.steps
    res = cli(project, "study", "--scale", "smoke")
    assert res.exit_code == 0, res.stderr + res.stdout
    assert steps.steps == before
    assert len(_study_runs(client, exps)) == 1
    again = client.search_runs(exps, filter_string=f"tags.mlflow.parentRunId = '{pid}'")
    assert {c.info.run_id for c in again} == ids
    doc2 = json.loads(mlflow.artifacts.load_text(f"runs:/{pid}/report/study.json"))
    assert all(c["reused"] for c in doc2["children"])
    assert [c["verdict"] for c in doc2["claims"]] == [c["verdict"] for c in doc["claims"]]
