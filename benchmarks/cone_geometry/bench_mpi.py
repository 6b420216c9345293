"""MPI strong scaling of the nesting statistics: N ranks (one thread each) against 1 rank on the same network.

    .venv/bin/python benchmarks/cone_geometry/bench_mpi.py                   # Student_VGG9 at 32x32x3, N = 1, 2
    .venv/bin/python benchmarks/cone_geometry/bench_mpi.py --ranks 1 2 3 --repeats 3 --arch VGG11exp

Each repeat runs every N in turn (interleaved) with ``mpiexec -n N python -m mpi4py mpi_worker.py``.  "compute"
is the time between two barriers around ``network_nesting`` (broadcast, work, gather) measured on rank 0;
"wall" is the whole command (process start, imports and model construction included); "max CPU s" is the largest
per-rank CPU time inside ``network_nesting`` (what the compute time would be with one idle core per rank, so its
ratio shows the work split independently of other load on the machine).  Ratios are against N = 1 from the same
run.  Peak RSS is the largest resident set over the ranks, and the part added after the model was built.
The machine's load average is printed: on a shared machine, wall-time ratios need idle cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="VGG9")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args(argv)
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        print("mpiexec not found", file=sys.stderr)
        return 1
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    runs: dict[int, list[dict]] = {n: [] for n in a.ranks}
    load0 = f"{os.getloadavg()[0]:.2f}"
    for _ in range(a.repeats):
        for n in a.ranks:
            cmd = [mpiexec, "-n", str(n), sys.executable, "-m", "mpi4py", str(ROOT / "benchmarks/cone_geometry/mpi_worker.py"),
                   "--arch", a.arch, "--size", str(a.size), "--channels", str(a.channels)] + (["--quick"] if a.quick else [])
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return 1
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            rec["wall"] = wall
            runs[n].append(rec)
    base_c = statistics.median(r["seconds"] for r in runs[a.ranks[0]])
    base_w = statistics.median(r["wall"] for r in runs[a.ranks[0]])
    print(f"# Student_{a.arch.removeprefix('Student_')} at {a.size}x{a.size}x{a.channels}, "
          f"{'quick' if a.quick else 'full statistics'}; {a.repeats} repeats; one thread per rank; "
          f"{platform.machine()}, {os.cpu_count()} cpus")
    base_cpu = statistics.median(max(r["cpu_s"]) for r in runs[a.ranks[0]])
    print(f"# load average before: {load0}, after: {os.getloadavg()[0]:.2f}")
    print(f"{'ranks':>5}{'compute s':>11}{'ratio':>8}{'wall s':>9}{'ratio':>8}{'max CPU s':>11}{'ratio':>8}"
          f"{'peak RSS MiB':>14}{'added MiB':>11}")
    for n in a.ranks:
        c = statistics.median(r["seconds"] for r in runs[n])
        w = statistics.median(r["wall"] for r in runs[n])
        cpu = statistics.median(max(r["cpu_s"]) for r in runs[n])
        peak = max(max(r["rss_peak_mib"]) for r in runs[n])
        added = max(max(p - b for p, b in zip(r["rss_peak_mib"], r["rss_before_mib"])) for r in runs[n])
        print(f"{n:>5}{c:>11.3f}{base_c / c:>8.2f}{w:>9.3f}{base_w / w:>8.2f}{cpu:>11.3f}{base_cpu / cpu:>8.2f}"
              f"{peak:>14.0f}{added:>11.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
