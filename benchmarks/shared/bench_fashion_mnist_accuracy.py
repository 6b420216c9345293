"""Accuracy check on the real Fashion-MNIST: lenet_small with the shared loop, 10 epochs, CPU.

    python benchmarks/shared/bench_fashion_mnist_accuracy.py [--epochs 10]

Target: test accuracy >= 0.90 within 10 epochs (published 2-conv baseline: 0.916).
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
    args = ap.parse_args()
    os.environ.setdefault("GEOMLAB_NO_PROGRESS", "1")
    tmp = tempfile.mkdtemp(prefix="bench-")
    os.chdir(tmp)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    from shared.data import DataConfig
    from shared.experiment import run_training
    from shared.train import TrainConfig

    t0 = time.perf_counter()
    out = run_training(project="bench", entry_point="fashion", arch="lenet_small",
                       data_cfg=DataConfig(dataset="fashion_mnist", batch_size=128, augmentation=False),
                       train_cfg=TrainConfig(epochs=args.epochs, lr=args.lr, lr_step=max(1, args.epochs // 2 + 2),
                                             lr_decay=0.1, weight_decay=5e-4, seed=0),
                       progress=False)
    accs = [h["test_acc"] for h in out.result.history]
    print("epoch test_acc: " + " ".join(f"{a:.4f}" for a in accs))
    print(f"final test accuracy {accs[-1]:.4f}, best {max(accs):.4f}, first epoch >= 0.90: "
          f"{next((i + 1 for i, a in enumerate(accs) if a >= 0.90), None)}; wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
