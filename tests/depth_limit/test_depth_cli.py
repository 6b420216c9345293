"""End-to-end: `geomlab depth-limit ...` against a temporary MLflow store."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from depth_helpers import write_event_file
from projects.depth_limit import models as M

ROOT = Path(__file__).resolve().parents[2]


def _runs(entry_point: str):
    client = MlflowClient()
    exps = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in exps], filter_string=f"tags.entry_point = '{entry_point}'")
    return sorted(runs, key=lambda r: r.info.start_time)


def _history(run_id: str, key: str):
    h = sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)
    return [m.step for m in h], [m.value for m in h]


def _fit(cli, *args):
    r = cli("depth-limit", "fit", *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    return _runs("fit")[-1]


def test_fit_logs_every_step_and_exports_weights(mlflow_store, cli, tmp_path):
    run = _fit(cli, "--dataset", "sin", "--num-samples", "300", "--L", "6", "--dim", "2", "--epochs", "3",
               "--store-grad", "--lr", "2.0", "--alpha", "0.75", "--gamma", "1.0", "--init", "ntrunc")
    rid = run.info.run_id
    steps, pv = _history(rid, "2.000-variation")
    assert steps == [0, 1, 2, 3]  # the initial weights, then every optimization step
    for key in ("1.000-variation", "1.500-variation", "avg_grad_norm", "train_loss_step", "lr_step"):
        assert _history(rid, key)[0][-1] == 3, key
    assert run.data.params["model.L"] == "6" and run.data.tags["task"] == "regression"
    arts = [a.path for a in MlflowClient().list_artifacts(rid, "weights")]
    assert arts == ["weights/resnet_6.pth"]
    local = MlflowClient().download_artifacts(rid, "weights/resnet_6.pth", str(tmp_path))
    weights = torch.load(local)
    assert isinstance(weights, list) and len(weights) == 6 and weights[0].shape == (2, 2)
    # the last logged p-variation is the p-variation of the exported weights
    again = M.pvar_metrics(torch.stack(weights), 2.0, 0.25)
    assert pv[-1] == pytest.approx(again["2.000-variation"], rel=1e-5)


def test_fit_digits_dynamic_lr_follows_the_rule(mlflow_store, cli):
    run = _fit(cli, "--dataset", "digits", "--L", "4", "--dim", "4", "--epochs", "2", "--lr", "0.5",
               "--dynamic-lr", "--activation", "relu", "--p-var", "3")
    rid = run.info.run_id
    _, pv = _history(rid, "3.000-variation")
    _, lr = _history(rid, "lr_step")
    assert lr[-1] == pytest.approx(10 * 0.5 / pv[-1] ** 2, rel=1e-5)  # C = 10 for relu, with the initial lr
    for key in ("accuracy", "precision", "recall", "accuracy_micro"):
        assert _history(rid, key)[0] == [1, 2], key
    for key in ("1.500-variation", "2.250-variation"):
        assert _history(rid, key)[0] == [0, 1, 2], key
    assert "test_acc" in run.data.metrics and not any(k.startswith("final_") for k in run.data.metrics)


@pytest.mark.parametrize("args,needle", [
    (["--p-var", "1.5"], "--p-var"),
    (["--augmentation", "skipp"], "--update-rule"),  # the old name still works
    (["--init", "zeros"], "--init"),
    (["--dataset", "sin", "--training-data-percentage", "0.5"], "--train-fraction"),
])
def test_fit_bad_input_exits_2(mlflow_store, cli, args, needle):
    r = cli("depth-limit", "fit", "--epochs", "1", "--num-samples", "50", *args)
    assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_landscape_render_resumes_and_plots(mlflow_store, cli, tmp_path):
    run = _fit(cli, "--dataset", "digits", "--L", "5", "--dim", "4", "--epochs", "2", "--lr", "1.0")
    rid = run.info.run_id
    out = tmp_path / "ls"
    args = ["depth-limit", "landscape", "render", rid, "--steps", "5", "--cell-size", "2", "--samples", "20",
            "--out", str(out), "--dtype", "float64"]
    r = cli(*args)
    assert r.exit_code == 0, r.stdout + r.stderr
    surface = np.load(out / "surface.npy")
    assert surface.shape == (5, 5) and np.isfinite(surface).all()
    assert (out / "landscape_surface.png").exists() and (out / "landscape_contour.png").exists()
    ls_run = _runs("landscape")[-1]
    assert ls_run.data.tags["source_run_id"] == rid
    # the data the surface was evaluated on is the run's MLflow input (issue 12 item 3)
    assert [d.dataset.name for d in ls_run.inputs.dataset_inputs if d.dataset.name == "digits"]
    # resume: finished cells are reused (a tampered cell shows up), missing ones recomputed
    cells = sorted((out / "cells").glob("cell_*.npy"))
    assert len(cells) == 9
    np.save(cells[0], np.full((2, 2), 123.0))
    cells[-1].unlink()
    r = cli(*args)
    assert r.exit_code == 0, r.stdout + r.stderr
    again = np.load(out / "surface.npy")
    assert np.all(again[:2, :2] == 123.0) and np.allclose(again[2:, 2:], surface[2:, 2:])
    # other settings in the same folder: refused
    r = cli(*args, "--res", "0.1")
    assert r.exit_code == 2 and "other settings" in r.stderr
    r = cli("depth-limit", "landscape", "plot", str(out / "surface.npy"), "--out", str(tmp_path / "fig"))
    assert r.exit_code == 0 and (tmp_path / "fig_contour.png").exists()


def test_paths_from_runs_and_original_folders(mlflow_store, cli, tmp_path):
    rid = _fit(cli, "--dataset", "sin", "--num-samples", "200", "--L", "4", "--dim", "3", "--epochs", "1").info.run_id
    g = torch.Generator().manual_seed(0)
    for rep in ("exp1", "exp2"):
        d = tmp_path / rep
        d.mkdir()
        for L in (4, 8):
            torch.save([torch.randn(3, 3, generator=g) for _ in range(L)], d / f"resnet_{L}.pth")
    out = tmp_path / "paths"
    r = cli("depth-limit", "paths", "norm", rid, str(tmp_path / "exp1"), str(tmp_path / "exp2"), "--ci",
            "--out", str(out))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert (out / "path_norm_beta=0.5.png").exists()
    import json

    res = json.loads((out / "paths_norm.json").read_text())
    assert res["runs_per_depth"] == {"4": 3, "8": 2}
    r = cli("depth-limit", "paths", "norm", str(tmp_path / "exp1"), "--pvar-only", "--p-var", "2", "--out", str(out))
    assert r.exit_code == 0 and "Max 2-variation" in r.stdout
    r = cli("depth-limit", "paths", "weights", str(tmp_path / "exp1"), "--entries", "0,0;2,1", "--out", str(out))
    assert r.exit_code == 0 and (out / "path_weights_2_1.png").exists()
    r = cli("depth-limit", "paths", "weights", str(tmp_path / "exp1"), "--out", str(out))  # default (7,3) > dim 3
    assert r.exit_code == 2 and "outside" in r.stderr
    r = cli("depth-limit", "paths", "norm", str(tmp_path / "missing"))
    assert r.exit_code == 2


def test_curve_fit_from_run_and_event_file(mlflow_store, cli, tmp_path):
    rid = _fit(cli, "--dataset", "digits", "--L", "3", "--dim", "4", "--epochs", "8", "--lr", "5",
               "--store-grad").info.run_id
    r = cli("depth-limit", "curve-fit", "--run", rid, "--window-size", "0", "--out", str(tmp_path / "cf"))
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "Estimated parameter values (C, rho)" in r.stdout and (tmp_path / "cf" / "avg_grad_norm.png").exists()
    cf_run = _runs("curve_fit")[-1]
    assert cf_run.data.tags["source_run_id"] == rid and "fit_rho" in cf_run.data.metrics
    t = np.arange(1, 121)
    ev = write_event_file(tmp_path / "events.out.tfevents.1.x", "avg_grad_norm", list(0.5 / (t + 30.0) ** 1.2))
    r = cli("depth-limit", "curve-fit", "--event-path", str(ev), "--infer-shift", "--window-size", "0",
            "--out", str(tmp_path / "cf2"))
    assert r.exit_code == 0, r.stdout + r.stderr
    params = _runs("curve_fit")[-1].data.metrics
    assert params["fit_rho"] == pytest.approx(1.2, rel=1e-3) and params["fit_T0"] == pytest.approx(30, rel=1e-3)
    r = cli("depth-limit", "curve-fit", "--out", str(tmp_path / "cf3"))
    assert r.exit_code == 2 and "exactly one" in r.stderr


def test_resnet_cifar10_on_tiny_cifar(mlflow_store, cli, tmp_path):
    from helpers import write_cifar_like

    write_cifar_like(tmp_path / "data", n_per_batch=8, n_test=12)
    r = cli("depth-limit", "resnet-cifar10", "--L", "56", "--data-path", str(tmp_path / "data"),
            "--no-verify-checksums", "--epochs", "1", "--batch-size", "16", "--device", "cpu")
    assert r.exit_code == 0, r.stdout + r.stderr
    run = _runs("resnet_cifar10")[-1]
    m = run.data.metrics
    assert 0 <= m["test_top1"] <= m["test_top2"] <= 1
    assert float(run.data.params["train.lr"]) == pytest.approx(56 ** 0.45)
    steps, _ = _history(run.info.run_id, "avg_grad_norm")
    assert steps == [1, 2, 3]  # 40 images, batch 16
    r = cli("depth-limit", "resnet-cifar10", "--L", "20")
    assert r.exit_code == 2 and "--L" in r.stderr


def test_mlproject_commands_parse(cli):
    spec = yaml.safe_load((ROOT / "projects" / "depth_limit" / "MLproject").read_text())
    for name, ep in spec["entry_points"].items():
        values = {k: (v.get("default", "x") if isinstance(v, dict) else v) for k, v in ep["parameters"].items()}
        cmd = shlex.split(ep["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()}))
        if cmd[3] == "sweep":  # the Optuna sweep of this project's entry points (shared/sweep.py)
            assert cmd[3:5] == ["sweep", "depth_limit"], name
            r = cli("sweep", "--help")
            assert r.exit_code == 0, (name, r.stdout + r.stderr)
            continue
        assert cmd[:4] == ["python", "-m", "shared.cli", "depth-limit"], name
        r = cli(*cmd[3:], "--help")
        assert r.exit_code == 0, (name, r.stdout + r.stderr)


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec", path=str(Path(sys.executable).parent)) is None, reason="no mpiexec")
def test_landscape_render_under_mpi(mlflow_store, cli, tmp_path):
    rid = _fit(cli, "--dataset", "digits", "--L", "3", "--dim", "3", "--epochs", "1").info.run_id
    out1, out2 = tmp_path / "one", tmp_path / "two"
    base = ["depth-limit", "landscape", "render", rid, "--steps", "4", "--cell-size", "2", "--samples", "10",
            "--dtype", "float64", "--no-plot"]
    assert cli(*base, "--out", str(out1)).exit_code == 0
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    p = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "shared.cli", *base,
                        "--out", str(out2)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert np.allclose(np.load(out1 / "surface.npy"), np.load(out2 / "surface.npy"))
