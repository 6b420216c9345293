"""What the cached digits split saves a process: `geomlab train` for one epoch on digits, and a process that only
loads digits, each with an empty $GEOMLAB_CACHE (the split computed by scikit-learn) against a filled one.

    python benchmarks/shared/bench_digits_cache.py [--repeats 5]

Cold and warm runs alternate; the table gives the medians and their ratio. Each run has its own fresh SQLite
tracking store (the store's migrations are in both columns alike).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
CASES = {
    "load digits only": [sys.executable, "-c", "from shared.data import DataConfig, load_data; "
                                               "load_data(DataConfig(dataset='digits'))"],
    "geomlab train, 1 epoch": [sys.executable, "-m", "shared.cli", "train", "--arch", "lenet_small", "--dataset",
                               "digits", "--width", "4", "--epochs", "1"],
}


def run_once(cmd: list[str], cache: Path, work: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1", "GEOMLAB_NO_PROGRESS": "1",
           "GEOMLAB_CACHE": str(cache), "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=work, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="geomlab-digits-bench-"))
    warm = root / "warm-cache"
    run_once(CASES["load digits only"], warm, root)  # fills the warm cache (and the OS file cache)
    times = {(c, k): [] for c in CASES for k in ("cold", "warm")}
    for i in range(args.repeats):
        for case, cmd in CASES.items():
            for kind in ("cold", "warm"):
                work = root / f"{i}-{kind}-{len(times[(case, kind)])}-{case[:4]}"
                work.mkdir()
                cache = warm if kind == "warm" else work / "empty-cache"
                times[(case, kind)].append(run_once(cmd, cache, work))
    print(f"{'case':<24} {'cold (s)':>9} {'warm (s)':>9} {'cold/warm':>10}   (medians of {args.repeats})")
    for case in CASES:
        cold, hot = statistics.median(times[(case, "cold")]), statistics.median(times[(case, "warm")])
        print(f"{case:<24} {cold:9.2f} {hot:9.2f} {cold / hot:9.2f}x")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
