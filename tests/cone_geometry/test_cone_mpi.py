"""The MPI split gives the same statistics for any number of ranks (1, 2, 3), rank 0 alone returns them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import torch.nn as nn
    from mpi4py import MPI
    from projects.cone_geometry import nesting
    from projects.cone_geometry.models import StudentConv

    def network():
        # a block with three convolutions (two pairs, where the original deadlocked with P > 1), channel counts
        # that no rank count divides, then a block whose pair has fewer channels (2) than there are ranks (3)
        torch.manual_seed(0)
        m = nn.Module()
        m.features = nn.Sequential(StudentConv(2, 5), StudentConv(5, 7), StudentConv(7, 3), nn.MaxPool2d(2, 2),
                                   StudentConv(3, 2), StudentConv(2, 5))
        with torch.no_grad():
            for p in m.features.parameters():
                p.normal_()
        return m

    comm = MPI.COMM_WORLD
    blocks = nesting.conv_blocks(network(), 9) if comm.Get_rank() == 0 else None
    result = nesting.network_nesting(blocks, comm=comm)
    if comm.Get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(nesting.to_json(result, blocks, {"ranks": comm.Get_size()}), f)
    else:
        assert result is None
''')


def _run(script: Path, out: Path, ranks: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(script), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def _in_process(script: Path, out: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script), str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text())


def _flat(doc: dict) -> list[tuple]:
    return [(b, p, k, e["distance"], e["opening"], e["rotation"], e["binary_nesting"])
            for b, block in enumerate(doc["blocks"]) for p, pair in enumerate(block["layer_pairs"])
            for k, e in enumerate(pair)]


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_same_result_for_any_number_of_ranks(tmp_path):
    script = tmp_path / "nest.py"
    script.write_text(SCRIPT)
    single = _in_process(script, tmp_path / "single.json")
    assert [len(p) for b in single["blocks"] for p in b["layer_pairs"]] == [5 * 7, 7 * 3, 2 * 5]
    reference = _flat(single)
    for ranks in (2, 3):
        doc = _run(script, tmp_path / f"out{ranks}.json", ranks)
        assert doc["ranks"] == ranks
        got = _flat(doc)
        assert len(got) == len(reference)
        for a, b in zip(got, reference):
            assert a[:3] == b[:3] and a[6] == b[6]
            for x, y in zip(a[3:6], b[3:6]):
                assert x == pytest.approx(y, rel=1e-9, abs=1e-9)
