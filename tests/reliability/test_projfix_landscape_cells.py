"""depth_limit landscape render: damaged cell files (zero bytes, truncated, another shape) left in the render folder
are computed again with a warning, in a real `geomlab` process; the surface is the one an undamaged render gives."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


def test_damaged_cells_are_recomputed_with_a_warning(mlflow_store, cli, tmp_path):
    r = cli("depth-limit", "fit", "--dataset", "digits", "--L", "3", "--dim", "4", "--epochs", "1", "--lr", "1.0")
    assert r.exit_code == 0, r.output
    client = MlflowClient()
    (fit,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.entry_point = 'fit'")
    out = tmp_path / "ls"
    args = ["depth-limit", "landscape", "render", fit.info.run_id, "--steps", "4", "--cell-size", "2", "--samples",
            "10", "--out-dir", str(out), "--dtype", "float64", "--no-plot"]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    reference = np.load(out / "surface.npy")
    cells = sorted((out / "cells").glob("cell_*.npy"))
    assert len(cells) == 4
    cells[0].write_bytes(b"")  # zero bytes (today: "Aborted.")
    cells[1].write_bytes(cells[1].read_bytes()[:100])  # truncated (today: a traceback)
    np.save(cells[2], np.zeros(3))  # a readable array of another shape
    intact = cells[3].stat().st_mtime_ns

    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "OMP_NUM_THREADS": "1", "GEOMLAB_NO_PROGRESS": "1",
           "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "shared.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Aborted" not in res.stdout + res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 3, res.stderr
    assert "cell_00000.npy is damaged (zero bytes)" in warnings[0] and "computing cell 0 again" in warnings[0]
    assert "cell_00001.npy is damaged" in warnings[1] and "cell_00002.npy is damaged" in warnings[2]
    assert "(1 done)" in res.stderr  # the intact cell is reused, not recomputed (messages go to stderr)
    assert cells[3].stat().st_mtime_ns == intact
    np.testing.assert_array_equal(np.load(out / "surface.npy"), reference)
    for c in cells[:3]:
        assert np.load(c).shape == (2, 2)
