"""Shared training loop (MLflow tracking on) vs a minimal hand-written PyTorch loop: images/s, same model and data.

Both train lenet_small with SGD on the same in-memory tensors and evaluate the test set once per epoch; the shared
loop also logs params/metrics to MLflow (a temporary SQLite store) and writes its initial and final snapshots.
Runs alternate (bare, shared, bare, shared, ...) so that machine noise hits both alike; medians are reported.

    python benchmarks/shared/bench_train_throughput.py [--dataset fashion_mnist] [--epochs 2] [--repeats 3]
    python benchmarks/shared/bench_train_throughput.py --precision bf16-mixed --channels-last   # shared loop in bf16

``--precision`` / ``--channels-last`` apply to the shared loop only: the bare loop stays fp32, so the ratio is what
the shared loop at that precision gains over a hand-written fp32 loop.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


def bare_loop(model, x, y, xt, yt, epochs, batch_size, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    n = len(y)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            correct = sum(int((model(xt[s:s + 1000]).argmax(1) == yt[s:s + 1000]).sum()) for s in range(0, len(yt), 1000))
    return correct / len(yt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--train-fraction", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", default="fp32", help="the shared loop's --precision (fp32, bf16-mixed)")
    ap.add_argument("--channels-last", action="store_true", help="the shared loop's --channels-last")
    args = ap.parse_args()
    os.environ["GEOMLAB_NO_PROGRESS"] = "1"
    tmp = tempfile.mkdtemp(prefix="bench-")
    os.chdir(tmp)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    from shared.data import DataConfig, load_data
    from shared.experiment import model_for, run_training
    from shared.train import TrainConfig

    cfg = DataConfig(dataset=args.dataset, batch_size=args.batch_size, train_fraction=args.train_fraction)
    try:
        data = load_data(cfg)
    except Exception as e:  # fall back to the embedded set when the files are absent
        print(f"({e}); using digits", file=sys.stderr)
        cfg.dataset, cfg.train_fraction = "digits", 1.0
        data = load_data(cfg)
    # the bare loop gets the same data, pre-transformed once (the most favourable case for it)
    x = data.train.transform(data.train.x, None)
    y = data.train.y
    xt, yt = data.test.transform(data.test.x, None), data.test.y
    n_img = len(y) * args.epochs
    tcfg = TrainConfig(epochs=args.epochs, lr=0.05, seed=0, precision=args.precision,
                       channels_last=args.channels_last)
    run_training(project="bench", entry_point="warmup", arch="lenet_small", data_cfg=cfg, train_cfg=TrainConfig(epochs=1),
                 progress=False)  # creates the store, warms up MLflow
    bare, shared = [], []
    for r in range(args.repeats):
        torch.manual_seed(r)
        m = model_for("lenet_small", data)
        t0 = time.perf_counter()
        bare_loop(m, x, y, xt, yt, args.epochs, args.batch_size, 0.05)
        bare.append(n_img / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        run_training(project="bench", entry_point="train", arch="lenet_small", data_cfg=cfg, train_cfg=tcfg,
                     progress=False)
        shared.append(n_img / (time.perf_counter() - t0))
    mb, ms = statistics.median(bare), statistics.median(shared)
    print(f"dataset={cfg.dataset} train_images={len(y)} epochs={args.epochs} repeats={args.repeats} "
          f"threads={torch.get_num_threads()}")
    print(f"{'loop':28s} {'median img/s':>12s}  runs")
    print(f"{'bare PyTorch loop':28s} {mb:12.0f}  {' '.join(f'{v:.0f}' for v in bare)}")
    print(f"{'shared loop + MLflow ' + args.precision + (' CL' if args.channels_last else ''):28s} {ms:12.0f}  {' '.join(f'{v:.0f}' for v in shared)}")
    pair = statistics.median(s / b for s, b in zip(shared, bare))
    print(f"ratio of medians shared/bare = {ms / mb:.3f}; median of per-pair ratios = {pair:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
