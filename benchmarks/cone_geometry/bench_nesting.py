"""Full cone nesting statistics (rotation included) of a random student, and the speedup over the literal
construction of the rotation.

    .venv/bin/python benchmarks/cone_geometry/bench_nesting.py                       # Student_VGG9, 32x32x3
    .venv/bin/python benchmarks/cone_geometry/bench_nesting.py --arch VGG11exp --repeats 3 --threads 2

Table 1 times ``network_nesting`` on the whole network (``--repeats`` runs, median) next to ``--quick`` (rotation
= 0) measured in the same run, and reports the peak resident memory added by the computation.  Table 2 times one
layer pair on a D = 64 block (8x8) with the literal construction (D x D circulant, product of D-1 Givens
rotations, inverse, shear: ``reference.pair_nesting``) and with the closed form, and the ratio.  The last line
extrapolates the literal construction to the whole network from its per-pair-of-cones time at each block's D
(measured on a few cones; O(D^4) per cone pair), i.e. what the original code would need without ``--quick``.

Weights come from the default init (x_gaussian, seeded); biases are drawn N(0, 0.1^2) so that apices differ.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "cone_geometry"))  # the test oracles

import numpy as np  # noqa: E402
import torch  # noqa: E402

import cone_reference as reference  # noqa: E402
from projects.cone_geometry import nesting  # noqa: E402
from projects.cone_geometry.models import build, student_of  # noqa: E402


def random_student(arch: str, channels: int, size: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build(student_of(arch), 10, channels, size)
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_(0.0, 0.1)
    return model


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def literal_seconds_per_cone_pair(D_side: int, n: int = 2) -> float:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(n):
        reference.pairwise_nesting(rng.normal(size=(3, 3)), 0.1, rng.normal(size=(3, 3)), -0.1, (D_side, D_side))
    return (time.perf_counter() - t0) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="VGG9", help="teacher or Student_ name (the student is analysed)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads inside the computation")
    ap.add_argument("--chunk-elements", type=int, default=nesting.DEFAULT_CHUNK_ELEMENTS)
    ap.add_argument("--literal-cones", type=int, default=2, help="cone pairs timed per D for the extrapolation")
    ap.add_argument("--no-literal", action="store_true", help="skip table 2 and the extrapolation")
    a = ap.parse_args(argv)

    model = random_student(a.arch, a.channels, a.size)
    blocks = nesting.conv_blocks(model, a.size)
    triples = sum(b.convs[p + 1].n_in * b.convs[p + 1].n_out * b.convs[p].n_in
                  for b in blocks for p in range(len(b.pairs)))
    rss0 = peak_rss_mib()
    full, quick = [], []
    for _ in range(a.repeats):  # interleaved so that machine drift hits both alike
        t0 = time.perf_counter()
        nesting.network_nesting(blocks, quick=False, threads=a.threads, chunk_elements=a.chunk_elements)
        full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        nesting.network_nesting(blocks, quick=True, threads=a.threads, chunk_elements=a.chunk_elements)
        quick.append(time.perf_counter() - t0)
    rss1 = peak_rss_mib()
    mf, mq = statistics.median(full), statistics.median(quick)
    print(f"# {student_of(a.arch)} at {a.size}x{a.size}x{a.channels}: {triples:,} (c, o, i) cone pairs; "
          f"torch threads {a.threads}; {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"torch {torch.__version__}")
    print(f"{'case':<34}{'median s':>10}{'min s':>10}{'ratio':>10}")
    print(f"{'quick (rotation = 0), baseline':<34}{mq:>10.3f}{min(quick):>10.3f}{1.0:>10.2f}")
    print(f"{'full statistics (closed form)':<34}{mf:>10.3f}{min(full):>10.3f}{mf / mq:>10.2f}")
    print(f"peak RSS {rss1:.0f} MiB (before the computation {rss0:.0f} MiB; added {rss1 - rss0:.0f} MiB)")

    if a.no_literal:
        return 0
    rng = np.random.default_rng(1)
    C, O, I = 4, 4, 4
    wn, bn = rng.normal(size=(C, O, 3, 3)), rng.normal(size=(C, O))
    wp, bp = rng.normal(size=(I, C, 3, 3)), rng.normal(size=(I, C))
    t0 = time.perf_counter()
    ref = reference.pair_nesting(wn, bn, wp, bp, (8, 8))
    t_lit = time.perf_counter() - t0
    fast_times = []
    for _ in range(5):
        t0 = time.perf_counter()
        res = nesting.pair_nesting(wn, bn, wp, bp, (8, 8))
        fast_times.append(time.perf_counter() - t0)
    t_fast = statistics.median(fast_times)
    err = max(abs(e["rotation"] - r) for e, r in zip(ref, res.rotation.reshape(-1)))
    print()
    print(f"# one layer pair on a D = 64 block: {C * O * I} cone pairs; max |rotation difference| {err:.1e}")
    print(f"{'case':<34}{'median s':>10}{'ratio':>10}")
    print(f"{'literal construction, baseline':<34}{t_lit:>10.4f}{1.0:>10.2f}")
    print(f"{'closed form':<34}{t_fast:>10.4f}{t_lit / t_fast:>10.0f}")

    est = 0.0
    per_d: dict[int, float] = {}
    for b in blocks:
        for p in range(len(b.pairs)):
            side = b.size[0]
            if side not in per_d:
                if side <= 16:
                    per_d[side] = literal_seconds_per_cone_pair(side, a.literal_cones)
                else:  # O(D^4): scale the 16x16 time (timing D = 1024 directly takes minutes per cone pair)
                    base = per_d.get(16) or literal_seconds_per_cone_pair(16, a.literal_cones)
                    per_d[16] = base
                    per_d[side] = base * (side * side / 256.0) ** 4
            est += per_d[side] * b.convs[p + 1].n_in * b.convs[p + 1].n_out * b.convs[p].n_in
    print("literal s per cone pair by block side (sides > 16 scaled from 16 by D^4): "
          + ", ".join(f"{k}x{k}: {v:.3g}" for k, v in sorted(per_d.items())))
    print(f"extrapolated literal time for the network: {est:.3g} s ({est / 3600:.3g} h) vs {mf:.3g} s: "
          f"{est / mf:.3g}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
