"""cone_geometry defects: `distill --nesting` writes inside --out-dir; a student trained from scratch gets its own
epoch and a full name; nesting of a student without conv pairs (LeNet5) is a one-line error; the teacher sweep
space offers only architectures whose students have nesting statistics."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_cone_cli import _runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

from projects.cone_geometry import nesting
from projects.cone_geometry.models import build
from shared.files import save_snapshot
from shared.models import build_model, model_spec

ROOT = Path(__file__).resolve().parents[2]


def _snapshot(path, arch, **meta):
    m = build_model(arch, 10, 1, 28, init="x_gaussian")
    return save_snapshot(path, {"model_state_dict": m.state_dict(), "model_spec": model_spec(m), **meta})


def test_distill_nesting_writes_inside_out_dir(mlflow_store, cli, tmp_path):
    teacher = _snapshot(tmp_path / "teacher.pt", "LeNet8", epoch=4, data_config={"dataset": "digits"})
    out = tmp_path / "out"
    r = cli("cone-geometry", "distill", "--teacher", str(teacher), "--dataset", "digits", "--epochs", "1",
            "--batch-size", "256", "--nesting", "--quick", "--out-dir", str(out))
    assert r.exit_code == 0, r.output
    (doc,) = (out / "nesting").glob("*.json")
    assert json.loads(doc.read_text())["epoch"] == "4"
    mlruns = tmp_path / "mlruns"  # the artifact store's copy is expected
    outside = [p for p in tmp_path.rglob("*.json") if out not in p.parents and mlruns not in p.parents]
    assert outside == [] and not (tmp_path / "outputs").exists(), outside


def test_student_trained_from_scratch_has_its_epoch_and_a_full_name(mlflow_store, cli, tmp_path):
    r = cli("cone-geometry", "train", "--arch", "Student_LeNet8", "--dataset", "digits", "--epochs", "1",
            "--batch-size", "256", "--out-dir", str(tmp_path / "t"))
    assert r.exit_code == 0, r.output
    (train_run,) = _runs("train")
    r = cli("cone-geometry", "nesting", "--student", train_run.info.run_id, "--quick", "--out-dir",
            str(tmp_path / "n"))
    assert r.exit_code == 0, r.output
    (path,) = (tmp_path / "n").glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["epoch"] == "1" and doc["name"] == "Student_LeNet8_1_x_gaussian" and doc["from_scratch"] is True
    assert path.name == "Student_LeNet8_1_x_gaussian.json"
    (run,) = _runs("nesting")
    assert run.data.tags["student_epoch"] == "1" and run.data.tags["from_scratch"] == "true"
    assert "teacher_epoch" not in run.data.tags
    assert sorted(m.step for m in MlflowClient().get_metric_history(run.info.run_id, "net/n")) == [1]


def test_distilled_student_keeps_the_teacher_epoch(mlflow_store, tmp_path):
    from projects.cone_geometry.runner import _student_meta, load_source

    path = _snapshot(tmp_path / "s.pt", "Student_LeNet8", epoch=30, teacher_epoch="10", teacher_source="t.pt",
                     init="x_gaussian", cone_run=2)
    loaded = load_source(str(path), "student")
    meta = _student_meta(loaded, build("Student_LeNet8", 10, 1, 28), "digits")
    assert (meta["name"], meta["epoch"], meta["student_epoch"]) == ("Student_LeNet8_10_x_gaussian", "10", "30")
    assert "from_scratch" not in meta


def test_nesting_of_a_student_without_conv_pairs_is_a_one_line_error(mlflow_store, cli, tmp_path):
    path = _snapshot(tmp_path / "lenet5.pt", "Student_LeNet5", epoch=3)
    r = cli("cone-geometry", "nesting", "--student", str(path), "--out-dir", str(tmp_path / "n"))
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    assert "one convolution per pooling block" in err and "LeNet8" in err
    assert not list(tmp_path.rglob("*.json")) and _runs("nesting") == []


def test_teacher_space_offers_only_architectures_with_nesting_statistics():
    space = yaml.safe_load((ROOT / "projects/cone_geometry/spaces/teacher.yaml").read_text())
    archs = space["params"]["arch"]["choices"]
    assert archs
    for arch in archs:
        blocks = nesting.conv_blocks(build(f"Student_{arch}", 10, 1, 32), 32)
        assert any(b.pairs for b in blocks), arch
