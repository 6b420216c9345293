"""hyperplane_bias defects: `reinit --run R --load-from <local copy of R's last snapshot>` does not re-initialize
from the trained model itself; `--epochs` naming a missing snapshot is a one-line error; the README describes
what the original did with `--rand --seed` and with `--split`, and `--no-shuffle --split` keeps its promise."""
from __future__ import annotations

import json
import re
from pathlib import Path

from mlflow.tracking import MlflowClient

from shared.data import DataConfig, load_data

HB = "hyperplane-bias"
README = Path(__file__).resolve().parents[2] / "projects/hyperplane_bias/README.md"


def test_reinit_skips_the_trained_model_and_refuses_missing_epochs(mlflow_store, cli, tmp_path):
    r = cli(HB, "train", "--arch", "lenet", "--dataset", "digits", "--epochs", "2", "--lr", "0.01",
            "--snapshot-every", "1", "--batch-size", "128")
    assert r.exit_code == 0, r.output
    run = re.search(r"train: run ([0-9a-f]{32})", r.stdout).group(1)
    local = MlflowClient().download_artifacts(run, "snapshots/epoch_002.pt", str(tmp_path))
    r = cli(HB, "reinit", "--run", run, "--load-from", local, "--max-test", "60", "--results", "out")
    assert r.exit_code == 0, r.output
    assert "holds the trained model itself" in r.stderr
    doc = json.loads(Path("out", "reinit", "reinit_epoch_002.json").read_text())
    assert list(doc["init_from_epoch"]) == ["0", "1"]  # not "2": that is the trained model
    assert set(doc["checkpoints"]) == {"0", "1"}

    r = cli(HB, "reinit", "--run", run, "--checkpoint-epochs", "0,7", "--max-test", "60")
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    assert "epoch(s) 7" in err and "0, 1, 2" in err


def test_readme_describes_the_originals_rand_seed_and_split_shuffle():
    text = README.read_text()
    fixed = text.split("Bugs of the original that are fixed:")[1].split("Choices we made:")[0]
    assert "reproduced the run's own initialization" not in fixed and "--rand" not in fixed
    choices = " ".join(text.split("Choices we made:")[1].split())
    assert "(k+2)-th draw after seeding" in choices and "not the run's own initialization" in choices
    assert "`SubsetRandomSampler`, which reshuffles every epoch whatever `--shuffle` said" in choices


def test_no_shuffle_keeps_the_batch_order_fixed_with_a_split():
    data = load_data(DataConfig(dataset="digits", split=0.2, shuffle=False, batch_size=64))
    first = [y.clone() for _, y in data.train]
    second = [y.clone() for _, y in data.train]
    assert all((a == b).all() for a, b in zip(first, second)) and len(first) == len(second)
    shuffled = load_data(DataConfig(dataset="digits", split=0.2, shuffle=True, batch_size=64))
    a = [y.clone() for _, y in shuffled.train]
    b = [y.clone() for _, y in shuffled.train]
    assert any((x != y).any() for x, y in zip(a, b))
