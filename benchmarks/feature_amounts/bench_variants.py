"""Variant generation: the vectorized generator against a literal per-variant loop (scipy.stats.skewnorm + trapezoid).

    .venv/bin/python benchmarks/feature_amounts/bench_variants.py [--depths 13 16 19] [--repeats 3]

Both produce the same list (checked here); the table gives the median seconds over the repeats and the speed-up.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
from scipy.integrate import trapezoid  # noqa: E402
from scipy.stats import skewnorm  # noqa: E402

from projects.feature_amounts.variants import base_widths, generate_variants  # noqa: E402


def literal(depth: int) -> list[tuple]:
    base = base_widths(depth)
    n, total = len(base), sum(base)
    x = np.arange(n * 100) / 100
    out = []
    for mean in range(n + 1):
        for scale in np.arange(0.5, 6, 0.5):
            for skew in range(-40, 41, 4):
                y = skewnorm.pdf(x, skew, loc=mean, scale=scale)
                bins = [trapezoid(y[i * 100:(i + 1) * 100], x[i * 100:(i + 1) * 100]) for i in range(n)]
                if sum(bins) <= 0.95:
                    continue
                w = [math.ceil(b * total) for b in bins]
                if min(w) >= 2:
                    out.append((float(mean), float(scale), float(skew), tuple(w)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=[13, 16, 19])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    print(f"{'depth':>5} {'variants':>8} {'literal s':>10} {'vectorized s':>13} {'speed-up':>9}")
    for d in a.depths:
        tl, tv = [], []
        for _ in range(a.repeats):
            t = time.perf_counter()
            ref = literal(d)
            tl.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = generate_variants(d)
            tv.append(time.perf_counter() - t)
        assert [(v.mean, v.scale, v.skew, v.widths) for v in got] == ref, "the two generators disagree"
        ml, mv = statistics.median(tl), statistics.median(tv)
        print(f"{d:>5} {len(got):>8} {ml:>10.3f} {mv:>13.3f} {ml / mv:>8.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
