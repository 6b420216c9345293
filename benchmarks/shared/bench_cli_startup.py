"""Start-up cost of the CLI: `geomlab --help` and an argument error, wall time and peak RSS (issue 12 item 12).

    python benchmarks/shared/bench_cli_startup.py [--before DIR] [--repeats 7]

Each case runs ``python -m shared.cli ...`` in a fresh process with this checkout on PYTHONPATH; with ``--before``
(a checkout of an older commit, e.g. ``git archive dae21af | tar -x -C /tmp/before``) the same cases run from that
tree too, interleaved, and the table shows the ratios of the medians. Peak RSS is the child's ru_maxrss. Bytecode caches are on (as in a normal install; a warm-up run fills them).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
CACHE = tempfile.mkdtemp(prefix="geomlab-pycache-")
CASES = {
    "python -c pass": None,  # the interpreter alone: the floor on this machine
    "geomlab --help": ["--help"],
    "argument error": ["cone-geometry", "train", "--no-such-option"],
    "sub-command --help": ["feature-amounts", "train", "--help"],
}


def run_once(tree: Path, argv: list[str] | None) -> tuple[float, float]:
    # bytecode caches as in a normal install (kept out of the trees by PYTHONPYCACHEPREFIX)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PYTHONPYCACHEPREFIX": CACHE}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-c", "pass"] if argv is None else [sys.executable, "-m", "shared.cli", *argv]
    p = subprocess.Popen(cmd, cwd=tree, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in (0, 2):
        raise SystemExit(f"{tree}: {' '.join(argv)} exited with {p.returncode}")
    return wall, usage.ru_maxrss / 1024  # MiB (Linux reports KiB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="an older checkout to compare against")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    trees = {"now": HERE, **({"before": args.before.resolve()} if args.before else {})}
    results = {(t, c): [] for t in trees for c in CASES}
    for tree in trees.values():  # warm-up: fill the bytecode cache and the OS file cache
        for argv in CASES.values():
            run_once(tree, argv)
    for _ in range(args.repeats):
        for case, argv in CASES.items():
            for name, tree in trees.items():
                if argv is not None or name == "now":
                    results[(name, case)].append(run_once(tree, argv))
    print(f"{'case':22s} {'tree':7s} {'median s':>9s} {'min s':>7s} {'peak RSS MiB':>13s}")
    for case in CASES:
        for name in trees:
            if not results[(name, case)]:
                continue
            walls = [w for w, _ in results[(name, case)]]
            rss = max(r for _, r in results[(name, case)])
            print(f"{case:22s} {name:7s} {statistics.median(walls):9.3f} {min(walls):7.3f} {rss:13.0f}")
        if "before" in trees and results[("before", case)]:
            now = statistics.median(w for w, _ in results[("now", case)])
            before = statistics.median(w for w, _ in results[("before", case)])
            rss_now = max(r for _, r in results[("now", case)])
            rss_before = max(r for _, r in results[("before", case)])
            print(f"{'':22s} ratio   {before / now:8.1f}x faster, {rss_before / rss_now:.1f}x less memory")


if __name__ == "__main__":
    main()
