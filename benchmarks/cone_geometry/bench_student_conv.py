"""The fused StudentConv CPU kernel against the grouped-convolution reference, side by side in one run.

    .venv/bin/python benchmarks/cone_geometry/bench_student_conv.py                 # all three tables
    .venv/bin/python benchmarks/cone_geometry/bench_student_conv.py --repeats 3 --steps 3 --only train

Every measurement runs in its own subprocess (so that its peak RSS is its own), with ``GEOMLAB_STUDENT_CONV`` =
``reference`` (before) or ``fused`` (after); configurations alternate within each repeat and the tables give
medians over repeats of the per-process median step time, and the ratios of those medians.

1. ``layer``: one 256 -> 256 StudentConv at 8x8, batch 64, forward plus backward (the issue's micro-benchmark).
2. ``train``: training steps (forward, backward, SGD step) of Student_VGG9 and of its teacher VGG9 on the 8x8
   digits (batch 100, as ``geomlab cone-geometry train --dataset digits``), so Student vs teacher before and after.
3. ``distill``: distillation steps of Student_LeNet9 from a LeNet9 teacher on Fashion-MNIST (28x28, batch 128,
   the loss of ``cone-geometry distill``); the epoch time is the median step time x the 469 batches of an epoch.

Peak RSS is the process's maximum resident set (torch and the data included); "added" subtracts the RSS measured
just before the first step.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

IMPLS = ("reference", "fused")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def worker(kind: str, arch: str, steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from projects.cone_geometry import student_kernel
    from projects.cone_geometry.models import build
    from shared.data import DataConfig, load_data

    torch.manual_seed(0)
    if kind == "layer":
        from projects.cone_geometry.models import StudentConv

        m = StudentConv(256, 256)
        x = torch.randn(64, 256, 8, 8, requires_grad=True)

        def step():
            m.zero_grad()
            x.grad = None
            m(x).sum().backward()
    else:
        dataset, batch = ("digits", 100) if kind == "train" else ("fashion_mnist", 128)
        data = load_data(DataConfig(dataset=dataset, batch_size=batch))
        c, h, w = data.input_shape
        model = build(arch, data.num_classes, c, (h, w))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batches = iter(data.train)
        if kind == "distill":
            from projects.cone_geometry.distill import DistillLoss

            loss_fn = DistillLoss(build("LeNet9", data.num_classes, c, (h, w)), 4.0, 0.9)
        else:
            def loss_fn(model, x, y):
                return F.cross_entropy(model(x), y), None

        def step():
            nonlocal batches
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(data.train)
                x, y = next(batches)
            opt.zero_grad()
            loss_fn(model, x, y)[0].backward()
            opt.step()
    base = rss_mib()
    step()  # warm-up (oneDNN primitives, first kernel call)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {"step_s": statistics.median(times), "peak_mib": peak, "added_mib": peak - base,
            "impl": student_kernel.impl_name() if arch.startswith("Student") or kind == "layer" else "-"}


def run_one(kind: str, arch: str, impl: str, steps: int, threads: int) -> dict:
    env = {**os.environ, "GEOMLAB_STUDENT_CONV": impl, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT), "GEOMLAB_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, __file__, "--worker", kind, arch, str(steps)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker {kind} {arch} {impl} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="processes per configuration (alternating)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per process, after one warm-up step")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every worker")
    ap.add_argument("--only", choices=("layer", "train", "distill"), action="append",
                    help="run only these tables (repeatable)")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "ARCH", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        kind, arch, steps = args.worker
        print(json.dumps(worker(kind, arch, int(steps))))
        return 0
    from projects.cone_geometry import student_kernel

    if student_kernel.library() is None:
        raise SystemExit(f"the fused kernel is unavailable ({student_kernel.unavailable()}); nothing to compare")
    configs = [("layer", "StudentConv 256->256 8x8 b64", impl) for impl in IMPLS]
    configs += [("train", "Student_VGG9", impl) for impl in IMPLS] + [("train", "VGG9", "-")]
    configs += [("distill", "Student_LeNet9", impl) for impl in IMPLS]
    configs = [c for c in configs if not args.only or c[0] in args.only]
    res: dict[tuple, list[dict]] = {c: [] for c in configs}
    t_start = time.time()
    for r in range(args.repeats):
        for kind, arch, impl in configs:
            out = run_one(kind, "-" if kind == "layer" else arch, impl if impl != "-" else "auto", args.steps,
                          args.threads)
            res[(kind, arch, impl)].append(out)
            print(f"[repeat {r + 1}/{args.repeats}] {kind:7s} {arch:28s} {impl:9s} step {out['step_s']:.3f} s, "
                  f"peak {out['peak_mib']:.0f} MiB (+{out['added_mib']:.0f})", file=sys.stderr, flush=True)
    med = {c: {k: statistics.median(o[k] for o in v) for k in ("step_s", "peak_mib", "added_mib")}
           for c, v in res.items()}
    load = os.getloadavg()
    print(f"# bench_student_conv: {platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"repeats {args.repeats} x {args.steps} steps, load average {load[0]:.1f}, {time.time() - t_start:.0f} s")
    print("\n| kind | model | impl | median step s | peak RSS MiB | added MiB |\n|---|---|---|---:|---:|---:|")
    for (kind, arch, impl), m in med.items():
        print(f"| {kind} | {arch} | {impl} | {m['step_s']:.3f} | {m['peak_mib']:.0f} | {m['added_mib']:.0f} |")
    print("\n| ratio (reference / fused) | time | peak RSS | added RSS |\n|---|---:|---:|---:|")
    for kind, arch, _ in configs:
        if (kind, arch, "reference") in med and (kind, arch, "fused") in med and _ == "fused":
            a, b = med[(kind, arch, "reference")], med[(kind, arch, "fused")]
            print(f"| {kind} {arch} | {a['step_s'] / b['step_s']:.2f}x | {a['peak_mib'] / b['peak_mib']:.2f}x "
                  f"| {a['added_mib'] / max(b['added_mib'], 1.0):.2f}x |")
    if ("train", "VGG9", "-") in med:
        t = med[("train", "VGG9", "-")]["step_s"]
        for impl in IMPLS:
            if ("train", "Student_VGG9", impl) in med:
                print(f"| Student_VGG9 / VGG9 step time, {impl} | {med[('train', 'Student_VGG9', impl)]['step_s'] / t:.2f}x | | |")
    for impl in IMPLS:
        if ("distill", "Student_LeNet9", impl) in med:
            print(f"| Fashion-MNIST distillation epoch (469 x step), {impl} | "
                  f"{med[('distill', 'Student_LeNet9', impl)]['step_s'] * 469:.0f} s | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
