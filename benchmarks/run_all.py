"""Run every benchmark script in turn (each prints its own table with ratios against a same-run baseline).

    python benchmarks/run_all.py [--only shared,cone_geometry,...]

The machine should be otherwise idle. Results are collected by hand into BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SCRIPTS = [  # (group, script, args, extra environment)
    ("shared", "shared/bench_train_throughput.py", ["--repeats", "5"], {}),
    ("shared", "shared/bench_fashion_mnist_accuracy.py", [], {}),
    ("shared", "shared/bench_cli_startup.py", ["--repeats", "5"], {}),
    ("shared", "shared/bench_digits_cache.py", ["--repeats", "5"], {}),
    ("shared", "shared/bench_snapshot_disk.py", [], ONE_THREAD),
    ("cone_geometry", "cone_geometry/bench_nesting.py", ["--repeats", "5"], ONE_THREAD),
    ("cone_geometry", "cone_geometry/bench_mpi.py", ["--repeats", "3"], {}),
    ("hyperplane_bias", "hyperplane_bias/bench_reinit.py", [], ONE_THREAD),
    ("depth_limit", "depth_limit/bench_pvar.py", ["--repeats", "3"], ONE_THREAD),
    ("depth_limit", "depth_limit/bench_landscape.py", ["--steps", "10", "--repeats", "3"], ONE_THREAD),
    ("feature_amounts", "feature_amounts/bench_splitting.py", [], ONE_THREAD),
    ("feature_amounts", "feature_amounts/bench_variants.py", ["--repeats", "3"], {}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="", help="comma-separated groups")
    args = ap.parse_args()
    only = {g for g in args.only.split(",") if g}
    failed = []
    for group, script, extra, env in SCRIPTS:
        if only and group not in only:
            continue
        path = HERE / script
        if not path.exists():
            print(f"== {script}: not present, skipped")
            continue
        print(f"== {script} {' '.join(extra)}", flush=True)
        rc = subprocess.run([sys.executable, str(path), *extra], env={**os.environ, **env}).returncode
        if rc:
            failed.append(script)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
