"""Loss-landscape render speed: many grid points per forward pass against one point at a time, in one run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/depth_limit/bench_landscape.py [--steps 10] [--repeats 3]

For each model (the depth-limit ResNet at the sizes of the seed's examples) the same steps x steps grid is rendered
three ways: `batched` (DepthLimitResNet.forward_on_plane: one batched matrix product per layer for --batch-points
grid points), `vmap` (torch.func.functional_call + vmap, the generic path used for any other model) and `pointwise`
(copy theta + a d1 + b d2 into the model and run one forward pass per point: the original's loop). All three must
give the same surface. Times are medians over --repeats renders of the process CPU time (with one torch thread: the
cost on an idle core, even on a shared machine); ratios are pointwise / method.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from projects.depth_limit import landscape as LS  # noqa: E402
from projects.depth_limit.models import DepthLimitResNet  # noqa: E402

CONFIGS = [  # (name, in_features, classes, L, dim, samples)
    ("cifar L=100 d=15", 3072, 10, 100, 15, 17),  # README example: CIFAR-10, 17 images (the original's 1/3000)
    ("cifar L=1000 d=15", 3072, 10, 1000, 15, 17),
    ("mnist L=100 d=64", 784, 10, 100, 64, 17),
    ("sin L=128 d=1", 1, 1, 128, 1, 100),  # README example: regression
    ("cifar L=100 d=15 B=1000", 3072, 10, 100, 15, 1000),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="grid points per axis")
    ap.add_argument("--batch-points", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    if torch.get_num_threads() != 1:
        print("note: set OMP_NUM_THREADS=1 for CPU times that equal wall times on an idle core")
    print(f"torch threads {torch.get_num_threads()}, grid {args.steps}x{args.steps}, float32, "
          f"{args.batch_points} points per pass, median of {args.repeats}\n")
    hdr = (f"{'model (CPU seconds)':26s} {'pointwise':>11s} {'batched':>10s} {'speed-up':>9s} {'vmap':>9s} "
           f"{'speed-up':>9s}")
    print(hdr)
    print("-" * len(hdr))
    for name, fin, out, L, dim, B in CONFIGS:
        task = "classification" if out > 1 else "regression"
        m = DepthLimitResNet(fin, out, L=L, dim=dim, alpha=0.75, gamma=1.0, init="ntrunc", seed=0)
        with torch.no_grad():
            m.W.add_(0.05 * torch.randn_like(m.W))
        x = torch.randn(B, fin)
        y = torch.randint(0, out, (B,)) if task == "classification" else torch.randn(B, 1)
        d1, d2 = LS.random_directions({"W": m.W.detach()}, seed=1234, res=0.05)
        evs = {
            "pointwise": LS.pointwise_evaluator(m, d1["W"], d2["W"], x, y, task),
            "batched": LS.depth_limit_evaluator(m, d1["W"], d2["W"], x, y, task),
            "vmap": LS.functional_evaluator(m, {"W": d1["W"].float()}, {"W": d2["W"].float()}, x, y, task),
        }
        times, surf = {}, {}
        for k, ev in evs.items():
            ts = []
            for _ in range(args.repeats):
                t0 = time.process_time()
                surf[k] = LS.render_surface(args.steps, ev, cell_size=args.steps, batch_points=args.batch_points)
                ts.append(time.process_time() - t0)
            times[k] = statistics.median(ts)
        for k in ("batched", "vmap"):
            if not np.allclose(surf[k], surf["pointwise"], rtol=2e-3, atol=1e-5):
                raise SystemExit(f"{name}: {k} surface differs from the pointwise one")
        p = times["pointwise"]
        print(f"{name:26s} {p:11.3f} {times['batched']:10.3f} {p / times['batched']:8.1f}x {times['vmap']:9.3f} "
              f"{p / times['vmap']:8.1f}x", flush=True)


if __name__ == "__main__":
    main()
