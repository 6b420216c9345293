"""p-variation speed: our exact methods against the plain O(n^2) DP measured in the same run, and against the
published rust-pvar timings (shared/reference/peers-and-performance.md, section 1.3: a 2-core Ice Lake, 1 thread).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/depth_limit/bench_pvar.py [--quick] [--repeats 3] [--cold-compile]

Every case is a path of n points in R^d with p = 2.5 (bm: Gaussian random walk with N(0, 1/n) increments; monotone:
cumulative sums of |N(0, 1)|; smooth: sines plus 1% noise). Times are medians over --repeats runs, after the numba
kernels are loaded (the load/compile time is reported on its own); ratios use the process CPU time, which with one
thread is the cost on an idle core even when other jobs share the machine (the wall time is shown too). The reference is run only where it takes less
than about --ref-budget seconds; its value must agree with ours to 1e-9 (relative).
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "depth_limit"))  # the test oracles

from projects.depth_limit import pvar  # noqa: E402
from projects.depth_limit.models import pvar_metrics  # noqa: E402
from depth_reference import pvar_reference  # noqa: E402

# rust-pvar (Rust core, 1 thread) from peers-and-performance.md 1.3, seconds, p = 2.5
RUST = {("bm", 1000, 1): 0.0007, ("bm", 10000, 1): 0.0095, ("bm", 100000, 1): 0.110, ("bm", 1000000, 1): 1.30,
        ("bm", 1000, 10): 0.0024, ("bm", 10000, 10): 0.039, ("bm", 100000, 10): 0.55, ("bm", 1000, 100): 0.031,
        ("bm", 10000, 100): 0.83, ("bm", 100, 4096): 0.046, ("bm", 1000, 225): 0.119, ("bm", 2000, 4096): 6.15,
        ("bm", 2000, 64): 0.050, ("bm", 10000, 225): 3.10, ("monotone", 10000, 1): 0.0057}

CASES = [("bm", 1000, 1), ("bm", 10000, 1), ("bm", 100000, 1), ("bm", 1000000, 1), ("bm", 1000, 10),
         ("bm", 10000, 10), ("bm", 100000, 10), ("bm", 1000, 100), ("bm", 10000, 100), ("bm", 100, 4096),
         ("bm", 1000, 225), ("bm", 2000, 64), ("bm", 2000, 4096), ("bm", 10000, 225), ("monotone", 10000, 1),
         ("monotone", 10000, 10), ("smooth", 10000, 10), ("smooth", 2000, 4096)]
QUICK = [("bm", 10000, 1), ("bm", 100000, 1), ("bm", 1000, 10), ("bm", 1000, 225), ("bm", 2000, 4096)]


def make_path(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "bm":
        return (rng.standard_normal((n, d)) / np.sqrt(n)).cumsum(axis=0)
    if kind == "monotone":
        return np.abs(rng.standard_normal((n, d))).cumsum(axis=0)
    t = np.linspace(0, 1, n)[:, None]
    return np.sin(2 * np.pi * rng.uniform(1, 5, (1, d)) * t) + 0.01 * rng.standard_normal((n, d))


def median_time(fn, repeats: int) -> tuple[float, float, object]:
    """(median wall seconds, median CPU seconds of this process, last result). With one thread the CPU time is
    what the run costs on an idle core, even when other jobs share the machine."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), out


def cold_compile_seconds() -> float:
    """Compile every kernel from scratch in a fresh process with an empty numba cache."""
    with tempfile.TemporaryDirectory() as cache:
        code = ("import time; t0 = time.perf_counter(); from projects.depth_limit import pvar; pvar.warmup(); "
                "print(time.perf_counter() - t0)")
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             cwd=str(Path(__file__).resolve().parents[2]), check=True)
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the rust-pvar target cases and a few more")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ref-budget", type=float, default=4.0, help="skip the O(n^2) reference above this estimate (s)")
    ap.add_argument("--cold-compile", action="store_true", help="also time a from-scratch numba compilation")
    args = ap.parse_args()

    t0 = time.perf_counter()
    pvar.warmup()
    load = time.perf_counter() - t0
    print(f"numba kernels loaded in {load:.2f} s (from the cache when it exists)")
    if args.cold_compile:
        print(f"cold compile (empty cache, fresh process, including imports): {cold_compile_seconds():.2f} s")
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, p = 2.5, median of {args.repeats}\n")
    hdr = (f"{'case':9s} {'n':>8s} {'d':>5s} {'method':7s} {'wall s':>8s} {'cpu s':>8s} {'O(n^2) cpu':>10s} "
           f"{'ref/ours':>9s} {'rust s':>8s} {'rust/ours':>9s}")
    print(hdr)
    print("-" * len(hdr))
    ref_rate = None  # seconds per (n^2/2 * (d + 8)) of the reference, measured on the first small case
    for kind, n, d in (QUICK if args.quick else CASES):
        x = make_path(kind, n, d)
        method = pvar.choose_method(n, d, 2.5)
        wall, ours, res = median_time(lambda: pvar.p_variation(x, 2.5), args.repeats)
        work = n * n / 2 * (d + 8)
        ref_s, ref_txt, ratio_txt = None, "-", "-"
        if ref_rate is None or ref_rate * work < args.ref_budget:
            _, ref_s, (ref_val, _) = median_time(lambda: pvar_reference(x, 2.5), 1)
            ref_rate = ref_s / work if ref_rate is None else ref_rate
            rel = abs(ref_val - res.value) / max(abs(ref_val), 1e-300)
            if rel > 1e-9:
                raise SystemExit(f"value mismatch on {kind} n={n} d={d}: {res.value} vs reference {ref_val}")
            ref_txt, ratio_txt = f"{ref_s:10.4f}", f"{ref_s / ours:8.1f}x"
        rust = RUST.get((kind, n, d))
        rust_txt = f"{rust:8.4f}" if rust else "-"
        rust_ratio = f"{rust / ours:8.1f}x" if rust else "-"
        print(f"{kind:9s} {n:8d} {d:5d} {method:7s} {wall:8.4f} {ours:8.4f} {ref_txt:>10s} {ratio_txt:>9s} "
              f"{rust_txt:>8s} {rust_ratio:>9s}", flush=True)

    print("\ntraining hot path: the three logged variations (p, p/2, 3p/4) of L weight matrices dim x dim, p = 2")
    print(f"{'L':>6s} {'dim':>4s} {'ours cpu':>9s} {'O(n^2) cpu':>10s} {'ref/ours':>9s}")
    rng = np.random.default_rng(1)
    for L, dim in ((100, 15), (1000, 15), (2000, 15)):
        W = np.cumsum(rng.standard_normal((L, dim, dim)) / np.sqrt(L), axis=0)
        _, ours, vals = median_time(lambda: pvar_metrics(W, 2.0, 0.25), args.repeats)
        xs = (L ** 0.25) * W.reshape(L, -1)
        _, ref, rv = median_time(lambda: [pvar_reference(xs, q)[0] ** (1 / q) for q in (2.0, 1.0, 1.5)], 1)
        if not np.allclose(list(vals.values()), rv, rtol=1e-9):
            raise SystemExit("hot-path values disagree with the reference")
        print(f"{L:6d} {dim:4d} {ours:9.4f} {ref:10.4f} {ref / ours:8.1f}x", flush=True)


if __name__ == "__main__":
    main()
