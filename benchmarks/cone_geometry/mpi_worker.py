"""One MPI run of the nesting statistics, for bench_mpi.py (run under mpiexec; prints one JSON line on rank 0).

    mpiexec -n 2 .venv/bin/python -m mpi4py benchmarks/cone_geometry/mpi_worker.py --arch VGG9 --size 32
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mpi4py import MPI  # noqa: E402

from bench_nesting import random_student  # noqa: E402
from projects.cone_geometry import nesting  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="VGG9")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    blocks = nesting.conv_blocks(random_student(a.arch, a.channels, a.size), a.size) if rank == 0 else None
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    comm.Barrier()
    t0 = time.perf_counter()
    c0 = time.process_time()
    result = nesting.network_nesting(blocks, quick=a.quick, comm=comm, threads=1)
    cpu = time.process_time() - c0
    comm.Barrier()
    seconds = time.perf_counter() - t0
    rss = comm.gather((rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, cpu), root=0)
    if rank == 0:
        n = sum(r.state.size for block in result for r in block)
        print(json.dumps({"ranks": comm.Get_size(), "seconds": seconds, "entries": n,
                          "rss_before_mib": [r[0] for r in rss], "rss_peak_mib": [r[1] for r in rss],
                          "cpu_s": [r[2] for r in rss]}))


if __name__ == "__main__":
    main()
