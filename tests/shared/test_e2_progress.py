"""Progress goes to stderr; when stderr is not a terminal it is one line per epoch (or cell, variant, ...)."""
import os
import re
import subprocess
import sys
from pathlib import Path

from shared import progress

ROOT = Path(__file__).resolve().parents[2]


def test_training_prints_one_line_per_epoch_to_a_piped_stderr(mlflow_store, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GEOMLAB_NO_PROGRESS"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "train", "--arch", "lenet_small", "--dataset", "digits",
                           "--epochs", "3", "--out-dir", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [l for l in proc.stderr.splitlines() if l.startswith("epoch ")]
    assert [re.match(r"epoch (\d+)/3 ", l).group(1) for l in lines] == ["1", "2", "3"], proc.stderr
    assert all("train_loss=" in l and "test_acc=" in l for l in lines)
    assert "epoch 1/3" not in proc.stdout  # progress never on stdout
    assert "\x1b[" not in proc.stderr  # no terminal control codes in a log


def test_lines_and_quiet_tasks(capsys, monkeypatch):
    monkeypatch.delenv("GEOMLAB_NO_PROGRESS", raising=False)
    with progress.progress_bar() as bar:
        cells = bar.add_task("landscape cells", total=2)
        inner = bar.add_task("batches", total=5, quiet=True)
        for _ in range(5):
            bar.advance(inner)
        bar.update(cells, detail="loss=0.5")
        bar.advance(cells)
        bar.advance(cells)
    out = capsys.readouterr()
    assert out.out == ""
    got = out.err.splitlines()
    assert len(got) == 2 and got[0].startswith("landscape cells 1/2 loss=0.5 (") and got[1].startswith("landscape cells 2/2")


def test_disabled_prints_nothing(capsys, monkeypatch):
    monkeypatch.setenv("GEOMLAB_NO_PROGRESS", "1")
    with progress.progress_bar() as bar:
        bar.advance(bar.add_task("epoch", total=1))
    assert capsys.readouterr().err == ""
