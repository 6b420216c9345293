"""Accuracy check on the real Fashion-MNIST: lenet_small with the shared loop, 10 epochs, CPU, per precision.

    python benchmarks/shared/bench_fashion_mnist_accuracy.py [--epochs 10] [--precisions fp32,bf16-mixed]

Targets: test accuracy >= 0.90 within 10 epochs (published 2-conv baseline: 0.916); bf16-mixed (with channels_last)
within 0.5 points of fp32. Both runs use the same seed, data order and options; only the compute precision differs.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--precisions", default="fp32,bf16-mixed")
    args = ap.parse_args()
    os.environ.setdefault("GEOMLAB_NO_PROGRESS", "1")
    tmp = tempfile.mkdtemp(prefix="bench-")
    os.chdir(tmp)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    from shared.data import DataConfig
    from shared.experiment import run_training
    from shared.train import TrainConfig

    final = {}
    for prec in args.precisions.split(","):
        t0 = time.perf_counter()
        out = run_training(project="bench", entry_point="fashion", arch="lenet_small",
                           data_cfg=DataConfig(dataset="fashion_mnist", batch_size=128, augmentation=False),
                           train_cfg=TrainConfig(epochs=args.epochs, lr=args.lr, lr_step=max(1, args.epochs // 2 + 2),
                                                 lr_decay=0.1, weight_decay=5e-4, seed=0, precision=prec,
                                                 channels_last=prec != "fp32"),
                           progress=False)
        accs = [h["test_acc"] for h in out.result.history]
        final[prec] = accs[-1]
        print(f"{prec}: epoch test_acc: " + " ".join(f"{a:.4f}" for a in accs))
        print(f"{prec}: final test accuracy {accs[-1]:.4f}, best {max(accs):.4f}, first epoch >= 0.90: "
              f"{next((i + 1 for i, a in enumerate(accs) if a >= 0.90), None)}; wall {time.perf_counter() - t0:.0f} s",
              flush=True)
    if "fp32" in final:
        for prec, acc in final.items():
            if prec != "fp32":
                print(f"{prec} - fp32 = {100 * (acc - final['fp32']):+.2f} points (target within 0.5)")


if __name__ == "__main__":
    main()
