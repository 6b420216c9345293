"""The geomlab CLI end to end on digits, and every bad input of the spine issue: exit 2, one line, nothing damaged."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest


def _one_line_error(res, *needles):
    assert res.exit_code == 2, (res.exit_code, res.output)
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in res.output, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def trained(mlflow_store, cli, tmp_path):
    res = cli("train", "--arch", "lenet_small", "--width", "4", "--dataset", "digits", "--epochs", "2",
              "--snapshot-every", "1", "--out-dir", str(tmp_path / "run"))
    assert res.exit_code == 0, res.output
    run_id = res.stdout.split("run ")[1].split(":")[0]
    return run_id, tmp_path / "run" / "snapshots"


def test_digits_end_to_end(trained, cli):
    run_id, snaps = trained
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_acc"] > 0.15
    res = cli("evaluate", f"runs:/{run_id}/snapshots/epoch_002.pt", "--dataset", "digits")
    assert res.exit_code == 0 and "acc=" in res.stdout
    res2 = cli("evaluate", str(snaps / "epoch_002.pt"), "--dataset", "digits")
    assert res2.stdout == res.stdout


def test_resume_continues_the_run(trained, cli, tmp_path):
    run_id, snaps = trained
    res = cli("train", "--arch", "lenet_small", "--width", "4", "--epochs", "3", "--out-dir", str(tmp_path / "r2"),
              "--resume-from", f"runs:/{run_id}/snapshots/epoch_002.pt")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r2/snapshots/epoch_003.pt").exists() and not (tmp_path / "r2/snapshots/epoch_001.pt").exists()


@pytest.mark.parametrize("args,needles", [
    (["train", "--arch", "resnet9000"], ["unknown architecture 'resnet9000'", "lenet_small"]),
    (["train", "--arch", "lenet_small"] + ["--dataset", "cifar11"], ["unknown dataset 'cifar11'", "cifar10"]),
    (["train", "--arch", "lenet_small", "--optimizer", "sgdd"], ["unknown optimizer 'sgdd'", "adam"]),
    (["train", "--arch", "lenet_small", "--noise", "1.5"], ["--noise must be a fraction in [0, 1]"]),
    (["train", "--arch", "lenet_small", "--noise", "-0.1"], ["--noise"]),
    (["train", "--arch", "lenet_small", "--split", "1.2"], ["--split must be in (0, 1)"]),
    (["train", "--arch", "lenet_small", "--subsample-classes", "12"], ["more classes than the dataset has (10)"]),
    (["train", "--arch", "lenet_small", "--dataset", "mnist", "--data-path", "/nonexistent"],
     ["dataset mnist not found", "MNIST/raw"]),
    (["train", "--arch", "lenet_small", "--device", "tpu"], ["unknown device 'tpu'"]),
    (["train"], ["no architecture given", "lenet_small"]),
])
def test_bad_training_inputs(mlflow_store, cli, args, needles):
    _one_line_error(cli(*args, "--epochs", "1"), *needles)


def test_unwritable_output_directory(mlflow_store, cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(cli("train", "--arch", "lenet_small", "--epochs", "1", "--out-dir", str(blocker / "sub")),
                    "cannot be written")


def test_missing_and_broken_snapshots(trained, cli, tmp_path):
    run_id, snaps = trained
    _one_line_error(cli("evaluate", str(tmp_path / "nope.pt")), "does not exist")
    _one_line_error(cli("evaluate", "runs:/0123456789abcdef0123456789abcdef/snapshots/epoch_001.pt"),
                    "run 0123456789abcdef0123456789abcdef not found")
    _one_line_error(cli("evaluate", f"runs:/{run_id}/snapshots/epoch_099.pt"), "could not be fetched")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file" * 50)
    _one_line_error(cli("evaluate", str(garbage)), "corrupted or truncated")
    good = snaps / "epoch_002.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line_error(cli("evaluate", str(truncated)), "corrupted or truncated")
    _one_line_error(cli("evaluate", str(good), "--arch", "mlp"), "was written for architecture 'lenet_small'")


def test_nan_loss_leaves_earlier_snapshots_intact(mlflow_store, cli, tmp_path):
    out = tmp_path / "nan"
    res = cli("train", "--arch", "mlp", "--epochs", "30", "--lr", "1e9", "--momentum", "0", "--snapshot-every", "1",
              "--out-dir", str(out))
    _one_line_error(res, "training loss became", "lower --lr")
    init = out / "snapshots/epoch_000.pt"
    digest = hashlib.sha256(init.read_bytes()).hexdigest()
    from shared.files import load_snapshot
    assert load_snapshot(init)["epoch"] == 0 and hashlib.sha256(init.read_bytes()).hexdigest() == digest
    failed = mlflow.search_runs(filter_string="attributes.status = 'FAILED'", search_all_experiments=True)
    assert len(failed) == 1


def test_console_script_exit_code_and_single_line(mlflow_store):
    geomlab = Path(sys.executable).with_name("geomlab")
    p = subprocess.run([str(geomlab), "train", "--arch", "nope"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and p.stderr.startswith("error: unknown architecture 'nope'")


@pytest.mark.parametrize("args, message, see", [
    (("cone-geometry", "train", "--no-such-option"), "No such option: --no-such-option", "cone-geometry train"),
    (("train", "--epochs", "x"), "Invalid value for '--epochs'", "train"),
    (("hyperplane-bias", "projections", "--run"), "Option '--run' requires an argument", None),
])
def test_a_bad_command_line_is_one_line_with_the_way_to_help(cli, args, message, see):
    r = cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith(f"error: {message}"), lines
    assert see is None or lines[0].endswith(f" {see} --help')"), lines  # (see 'geomlab ... --help')
    assert "╭" not in r.output  # no Rich panel
