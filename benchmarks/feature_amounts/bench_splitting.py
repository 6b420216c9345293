"""Training throughput with forced micro-batch splitting (k = 2, 4, ...) against the unsplit step, same model, one run.

    .venv/bin/python benchmarks/feature_amounts/bench_splitting.py                # defaults: variant 0, width x0.125
    .venv/bin/python benchmarks/feature_amounts/bench_splitting.py --chunks 1 2 4 8 --steps 8 --repeats 5

Each repeat runs every k in turn (interleaved, so machine drift hits all of them alike) for ``--steps`` timed
optimizer steps of the logical batch (128) after one warm-up step; the table reports the median images/s over the
repeats and the ratio to k = 1. A second table times the automatic splitter's probing (the one-off cost of choosing
a split): without a memory limit (one probe) and with a limit that forces halving.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from projects.feature_amounts.models import feature_vgg  # noqa: E402
from projects.feature_amounts.splitting import AutoSplitter, accumulate_step, micro_for_chunks  # noqa: E402
from projects.feature_amounts.variants import base_widths, generate_variants  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", type=int, default=0, help="variant index (VGG-16 list)")
    ap.add_argument("--reference", action="store_true", help="the unmodified VGG-16 (scaled) instead of a variant")
    ap.add_argument("--width-multiplier", type=float, default=0.125)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per repeat and k")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-probe-table", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.reference:
        widths = tuple(max(2, math.ceil(w * a.width_multiplier)) for w in base_widths(16, a.input_size))
        name = "vgg16_reference"
    else:
        v = generate_variants(16, width_multiplier=a.width_multiplier)[a.variant]
        widths, name = v.widths, v.id
    torch.manual_seed(0)
    model = feature_vgg(10, 3, a.input_size, widths).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch_size, 3, a.input_size, a.input_size, device=dev)
    y = torch.randint(0, 10, (a.batch_size,), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rates: dict[int, list[float]] = {k: [] for k in a.chunks}
    for k in a.chunks:  # warm-up (allocator, oneDNN / cuDNN kernels) for every micro-batch size
        accumulate_step(model, opt, F.cross_entropy, x, y, micro_for_chunks(a.batch_size, k))
    for _ in range(a.repeats):
        for k in a.chunks:
            micro = micro_for_chunks(a.batch_size, k)
            sync()
            t = time.perf_counter()
            for _ in range(a.steps):
                accumulate_step(model, opt, F.cross_entropy, x, y, micro)
            sync()
            rates[k].append(a.steps * a.batch_size / (time.perf_counter() - t))

    print(f"# machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"torch={torch.__version__} threads={torch.get_num_threads()} device={dev}")
    print(f"# model: {name} x{a.width_multiplier} widths={list(widths)} input={a.input_size}px "
          f"batch={a.batch_size} steps={a.steps} repeats={a.repeats}")
    base = statistics.median(rates[a.chunks[0]])
    print(f"{'chunks k':>8} {'micro':>6} {'img/s median':>13} {'min':>8} {'max':>8} {'ratio vs k=' + str(a.chunks[0]):>14} {'overhead':>9}")
    for k in a.chunks:
        med = statistics.median(rates[k])
        print(f"{k:>8} {micro_for_chunks(a.batch_size, k):>6} {med:>13.1f} {min(rates[k]):>8.1f} "
              f"{max(rates[k]):>8.1f} {med / base:>14.3f} {100 * (base / med - 1):>8.1f}%")

    if not a.no_probe_table:
        step_t = a.batch_size / base
        print()
        print(f"{'probe':>28} {'seconds':>8} {'chosen micro':>13} {'probes':>7} {'x one step':>11}")
        for label, limit in (("no limit", None), ("limit forcing k>=4", "quarter")):
            if limit == "quarter":
                sp0 = AutoSplitter(a.batch_size, memory_limit=2**50)
                p1 = sp0._try(model, opt, F.cross_entropy, x, y, a.batch_size, dev).peak_bytes
                p4 = sp0._try(model, opt, F.cross_entropy, x, y, micro_for_chunks(a.batch_size, 4), dev).peak_bytes
                limit = int(p4 + 0.25 * (p1 - p4) / 2)  # between the k=4 and k=2 footprints
            sp = AutoSplitter(a.batch_size, memory_limit=limit)
            t = time.perf_counter()
            d = sp.choose(model, opt, F.cross_entropy, x, y)
            sec = time.perf_counter() - t
            print(f"{label:>28} {sec:>8.2f} {d.micro_batch:>13} {len(d.probes):>7} {sec / step_t:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
