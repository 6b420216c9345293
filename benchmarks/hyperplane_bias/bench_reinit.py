"""Benchmark: the re-initialization sweep (layers x checkpoints) against a naive loop, in one run.

    .venv/bin/python benchmarks/hyperplane_bias/bench_reinit.py [--arch lenet] [--n-test 2000] [--checkpoints 4]
                                                                 [--repeats 3] [--input-size 32] [--channels 3]

Methods (all compute the same numbers; the script checks that they agree):
* ``naive``    : the baseline. For every (checkpoint, layer): build the model, load the trained weights, copy the
                 layer, build a test DataLoader the way the original does (uint8 images, per-sample ToTensor +
                 Normalize, batch 128, ``--workers 1``) and evaluate under no_grad;
* ``naive-t``  : the same loop with a generous DataLoader: pre-normalized tensors, no worker process;
* ``inplace``  : one model, tensors swapped in place and restored, data as tensors, inference_mode;
* ``sequence`` : the default (``reinit_sweep``): activations entering each layer computed once per batch and shared
                 by all checkpoints, several checkpoints per forward pass.
Data are synthetic (random uint8 images, labels = the trained model's own predictions after centring its last
bias), so nothing is downloaded; the time of a sweep does not depend on the pixel values.
Prints a table of median seconds and speed-ups against ``naive`` measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "hyperplane_bias"))  # the test oracles

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from projects.hyperplane_bias.models import build_model  # noqa: E402
from hyper_reference import reinit_sweep_naive, tensor_loader  # noqa: E402
from projects.hyperplane_bias.reinit import (fresh_layer_tensors, layer_tensors, reinit_layers_for,  # noqa: E402
                                             reinit_sweep)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # the original's CIFAR-10 normalization


class ImageSet(Dataset):
    """uint8 HWC images with the original's per-sample test transforms (PIL -> ToTensor -> Normalize)."""

    def __init__(self, images: np.ndarray, labels: list[int], channels: int):
        self.images, self.labels = images, labels
        mean, std = (MEAN, STD) if channels == 3 else ((MEAN[0],) * channels, (STD[0],) * channels)
        self.tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
        self.mode = "RGB" if channels == 3 else "L"

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = self.images[i] if self.mode == "RGB" else self.images[i][:, :, 0]
        return self.tf(Image.fromarray(img, mode=self.mode)), self.labels[i]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="lenet")
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--checkpoints", type=int, default=4, help="checkpoints besides 'rand'")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=128, help="evaluation batch of the fast methods")
    ap.add_argument("--naive-batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the naive baseline (original: 1)")
    ap.add_argument("--with-linear", action="store_true")
    ap.add_argument("--bn", default="keep", choices=["keep", "reestimate"], help="BatchNorm statistics after a reset")
    ap.add_argument("--bn-samples", type=int, default=512, help="training inputs for --bn reestimate")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    def factory(seed=None):
        return build_model(a.arch, a.classes, a.channels, a.input_size, seed=seed).eval()

    model = factory(0)
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (a.n_test, a.input_size, a.input_size, a.channels), dtype=np.uint8)
    probe = ImageSet(u8, [0] * a.n_test, a.channels)
    X = torch.stack([probe[i][0] for i in range(a.n_test)])
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.bias -= model(X[:512]).mean(0)
        y = model(X).argmax(1)
    layers = reinit_layers_for(model, with_linear=a.with_linear)
    cks = {str(e): layer_tensors(factory(100 + e).state_dict(), model, layers) for e in range(a.checkpoints)}
    cks["rand"] = fresh_layer_tensors(lambda: factory(None), layers, seed=7, like=model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    X_bn = torch.from_numpy(rng.standard_normal((a.bn_samples, a.channels, a.input_size, a.input_size),
                                                 dtype=np.float32)) if a.bn == "reestimate" else None
    bn = {"bn": a.bn, "X_bn": X_bn}
    labels = y.tolist()
    original_loader = lambda: DataLoader(ImageSet(u8, labels, a.channels), batch_size=a.naive_batch_size,  # noqa
                                         shuffle=False, num_workers=a.workers)
    methods = {
        "naive": lambda: reinit_sweep_naive(lambda: factory(None), trained, layers, cks, X, y,
                                            make_loader=original_loader, **bn),
        "naive-t": lambda: reinit_sweep_naive(lambda: factory(None), trained, layers, cks, X, y,
                                              make_loader=lambda: tensor_loader(X, y, a.naive_batch_size), **bn),
        "inplace": lambda: reinit_sweep(model, layers, cks, X, y, a.batch_size, strategy="inplace", **bn).top1,
        "sequence": lambda: reinit_sweep(model, layers, cks, X, y, a.batch_size, strategy="sequence", **bn).top1,
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    results = {}
    for _ in range(a.repeats):
        for name, fn in methods.items():
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    for name, r in results.items():
        diff = max(abs(p - q) for k in r for p, q in zip(r[k], results["naive"][k]))
        assert diff <= 100.0 / a.n_test + 1e-9, f"{name} disagrees with naive by {diff} points"

    evals = len(layers) * len(cks)
    print(f"# reinit sweep (bn {a.bn}): {a.arch}, {len(layers)} layers x {len(cks)} checkpoints = {evals} evaluations of "
          f"{a.n_test} images {a.channels}x{a.input_size}x{a.input_size}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, {platform.processor() or platform.machine()}")
    print(f"{'method':<10} {'median s':>9} {'runs':>24} {'speed-up vs naive':>18}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in methods:
        runs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<10} {med[name]:>9.3f} {runs:>24} {med['naive'] / med[name]:>17.2f}x")
    return med


if __name__ == "__main__":
    main()
