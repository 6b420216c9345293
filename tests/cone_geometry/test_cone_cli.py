"""`geomlab cone-geometry ...` end to end on digits against a temporary MLflow store, original checkpoints, and
every bad input: exit 2 with a one-line message."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from projects.cone_geometry.models import build


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _runs(entry_point):
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, filter_string=f"tags.entry_point = '{entry_point}'", max_results=100)


def _ok(res):
    assert res.exit_code == 0, (res.output, getattr(res, "stderr", ""))
    return res


def test_train_distill_all_nesting_and_plot(mlflow_store, cli, tmp_path):
    _ok(cli("cone-geometry", "train", "--arch", "LeNet8", "--dataset", "digits", "--epochs", "1",
            "--optimizer", "adam", "--lr", "0.003", "--batch-size", "128", "--runs", "2", "--start-run", "1"))
    (teacher,) = _runs("train")
    assert teacher.data.tags["cone.run"] == "1" and teacher.data.params["train.seed"] == "1"
    # adam as the original: no weight decay, no schedule
    assert teacher.data.params["train.weight_decay"] == "0.0" and teacher.data.params["train.schedule"] == "none"
    assert teacher.data.params["data.noise_seed"] == "12345"
    arts = [a.path for a in MlflowClient().list_artifacts(teacher.info.run_id, "snapshots")]
    assert arts == ["snapshots/epoch_000.pt", "snapshots/epoch_001.pt"]

    res = _ok(cli("cone-geometry", "distill-all", "--teacher-run", teacher.info.run_id, "--epochs", "1",
                  "--optimizer", "adam", "--lr", "0.003", "--batch-size", "128", "--kl-reduction", "batchmean"))
    (parent,) = _runs("distill_all")
    assert parent.info.run_id in res.stdout
    students = _runs("distill")
    assert sorted(r.data.tags["teacher_epoch"] for r in students) == ["0", "1"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in students)
    assert all(r.data.params["kd.kl_reduction"] == "batchmean" and r.data.tags["arch"] == "Student_LeNet8"
               for r in students)
    nest_runs = _runs("nesting")
    assert len(nest_runs) == 2
    r = nest_runs[0]
    assert r.data.tags["source_run_id"] in {s.info.run_id for s in students}
    assert r.data.metrics["net/n"] == 6 * 6 + 16 * 16
    assert sum(r.data.metrics[f"net/count_{s}"] for s in ("OUT_PARTIAL_IN", "OUT_FULL_IN", "IN_PARTIAL_OUT",
                                                           "IN_FULL_OUT")) == 292
    assert "block1_pair0/mean_rotation" in r.data.metrics
    arts = {a.path for a in MlflowClient().list_artifacts(r.info.run_id, "figures")}
    assert {"figures/netwise_states.png", "figures/blockwise_states.png", "figures/continuous.png"} <= arts
    (json_art,) = [a.path for a in MlflowClient().list_artifacts(r.info.run_id, "nesting")]
    doc = json.loads(Path(mlflow.artifacts.download_artifacts(f"runs:/{r.info.run_id}/{json_art}")).read_text())
    assert doc["arch"] == "LeNet8" and doc["dataset"] == "digits" and doc["run"] == "1"
    assert doc["epoch"] in ("0", "1") and doc["name"] == f"Student_LeNet8_{doc['epoch']}_x_gaussian"
    assert [len(p) for b in doc["blocks"] for p in b["layer_pairs"]] == [36, 256]
    assert set(doc["blocks"][0]["layer_pairs"][0][0]) == {"distance", "opening", "rotation", "binary_nesting"}

    # a quick nesting of one student by its run id: rotation 0, the rest identical
    student = [s for s in students if s.data.tags["teacher_epoch"] == doc["epoch"]][0]
    _ok(cli("cone-geometry", "nesting", "--student", student.info.run_id, "--quick", "--out-dir",
            str(tmp_path / "quick")))
    (quick_file,) = (tmp_path / "quick").glob("*.json")
    quick = json.loads(quick_file.read_text())
    flat = lambda d: [e for b in d["blocks"] for p in b["layer_pairs"] for e in p]  # noqa: E731
    assert all(e["rotation"] == 0.0 for e in flat(quick))
    assert [e["binary_nesting"] for e in flat(quick)] == [e["binary_nesting"] for e in flat(doc)]

    _ok(cli("cone-geometry", "plot", parent.info.run_id, "--out-dir", str(tmp_path / "plots")))
    out = tmp_path / "plots" / "LeNet8_digits"
    for name in ("evolution_states.png", "evolution_continuous.png", "netwise_states_epoch1.png",
                 "blockwise_states_epoch1.png", "continuous_epoch1.png", "aggregate.json"):
        assert (out / name).stat().st_size > 0, name
    agg = json.loads((out / "aggregate.json").read_text())
    assert agg["evolution"]["epochs"] == ["0", "1"]
    (plot_run,) = _runs("plot")
    assert "LeNet8_digits/net/frac_OUT_FULL_IN" in plot_run.data.metrics


def test_original_checkpoints(mlflow_store, cli, tmp_path):
    # a teacher .tar and a student .pt as the original code wrote them (layout, names, run_<r> folder)
    torch.manual_seed(0)
    folder = tmp_path / "models" / "digits" / "run_3"
    folder.mkdir(parents=True)
    teacher = build("LeNet8", 10, 1, 28)
    torch.save({"epoch": 4, "model_state_dict": teacher.state_dict(), "optimizer_state_dict": {},
                "scheduler_state_dict": None}, folder / "LeNet8_4_x_gaussian.tar")
    _ok(cli("cone-geometry", "distill", "--resume-from", str(folder / "LeNet8_4_x_gaussian.tar"), "--arch",
            "Student_LeNet8", "--dataset", "digits", "--epochs", "1", "--batch-size", "256"))
    (run,) = _runs("distill")
    assert run.data.tags["teacher_epoch"] == "5" and run.data.tags["cone.run"] == "3"

    student = build("Student_LeNet8", 10, 1, 28)
    original_index = {0: 0, 1: 3, 3: 7, 4: 10}  # [conv, ReLU, Bias] per conv in the original
    state = {}
    for k, v in student.state_dict().items():
        part = k.split(".")
        if part[0] == "features":
            part[1] = str(original_index[int(part[1])])
        state["module." + ".".join(part)] = v
    torch.save(state, folder / "Student_LeNet8_4_x_gaussian.pt")
    _ok(cli("cone-geometry", "nesting", "--student", str(folder / "Student_LeNet8_4_x_gaussian.pt"), "--arch",
            "LeNet8", "--dataset", "digits", "--out-dir", str(tmp_path / "n")))
    doc = json.loads((tmp_path / "n" / "Student_LeNet8_4_x_gaussian.json").read_text())
    assert (doc["name"], doc["arch"], doc["dataset"], doc["epoch"], doc["run"]) == \
        ("Student_LeNet8_4_x_gaussian", "LeNet8", "digits", "4", "3")


def _one_line_error(res, *needles):
    assert res.exit_code == 2, (res.exit_code, res.output)
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in res.output, err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("args,needles", [
    (["train"], ["no architecture given", "Student_VGG9"]),
    (["train", "--arch", "VGG12"], ["unknown architecture 'VGG12'"]),
    (["train", "--arch", "LeNet8", "--noisy", "1.5"], ["--noise is a fraction"]),  # the old name still works
    (["train", "--arch", "LeNet8", "--init", "xavier"], ["unknown --init 'xavier'"]),
    (["train", "--arch", "LeNet8", "--optimizer", "rmsprop"], ["unknown --optimizer"]),
    (["train", "--arch", "LeNet8", "--runs", "2", "--start-run", "2"], ["--start-run"]),
    (["train", "--arch", "VGG13", "--dataset", "digits"], ["at least 32x32"]),
    (["distill", "--teacher", "/nonexistent.tar"], ["does not exist"]),
    (["distill", "--teacher", "/nonexistent.tar", "--alpha", "1.5"], ["--kl-weight (alpha) must be in [0, 1]"]),
    (["distill-all", "--teacher-run", "not-a-run"], ["neither a folder of snapshots nor an MLflow run id"]),
    (["nesting", "--student", "/nonexistent.pt"], ["does not exist"]),
    (["plot", "/nonexistent.json"], ["does not exist"]),
])
def test_bad_inputs(mlflow_store, cli, args, needles):
    _one_line_error(cli("cone-geometry", *args), *needles)


def test_nesting_of_a_teacher_is_refused(mlflow_store, cli, tmp_path):
    path = tmp_path / "t.pt"
    from shared.files import save_snapshot
    from shared.models import build_model, model_spec

    m = build_model("LeNet8", 10, 1, 28, init="x_gaussian")
    save_snapshot(path, {"model_state_dict": m.state_dict(), "model_spec": model_spec(m)})
    _one_line_error(cli("cone-geometry", "nesting", "--student", str(path)), "a teacher", "distill")
