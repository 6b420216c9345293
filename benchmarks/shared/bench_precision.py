"""bf16-mixed and channels_last vs fp32, per architecture: training images/s of the shared loop's own step.

    python benchmarks/shared/bench_precision.py [--archs lenet_small,VGG9,vgg11,fa_largest] [--repeats 5]

Each architecture is trained with ``Trainer._train_step`` (forward under autocast, backward, optimizer step) on
random data of its dataset's shape, batch 128, under the four settings fp32, fp32 + channels_last, bf16-mixed,
bf16-mixed + channels_last. The settings alternate within every repeat (so machine noise hits them alike); the table
gives median images/s and the ratio of medians against fp32 in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

SETTINGS = [("fp32", False), ("fp32", True), ("bf16-mixed", False), ("bf16-mixed", True)]
# name -> (registered arch, project, input channels, size, model options)
ARCHS = {
    "lenet_small": ("lenet_small", None, 1, 28, {}),
    "VGG9": ("VGG9", "cone_geometry", 3, 32, {}),
    "vgg11": ("vgg11", "hyperplane_bias", 3, 32, {}),
    "fa_largest": ("feature_vgg", "feature_amounts", 3, 32, None),  # the variant with the most parameters
}


def make(name: str, batch_size: int):
    from shared.data import DataConfig, load_data
    from shared.experiment import model_for

    arch, project, ch, size, opts = ARCHS[name]
    data = load_data(DataConfig(dataset="digits", batch_size=batch_size, resize=size, channels=ch if ch > 1 else 0))
    if opts is None:
        from projects.feature_amounts.variants import capacity, generate_variants

        v = max(generate_variants(16, size), key=lambda v: capacity(v.widths, data.num_classes))
        opts = {"widths": list(v.widths)}
    return data, lambda: model_for(arch, data, project, **opts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", default="lenet_small,VGG9,vgg11,fa_largest")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per measurement (after one warm-up step)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["GEOMLAB_NO_PROGRESS"] = "1"
    from shared.train import TrainConfig, Trainer

    print(f"threads={torch.get_num_threads()} batch={args.batch_size} steps={args.steps} repeats={args.repeats}")
    print(f"{'arch':12s} {'setting':24s} {'median img/s':>12s} {'vs fp32':>8s}  runs")
    for name in args.archs.split(","):
        data, build = make(name, args.batch_size)
        x = torch.randn(args.batch_size, *data.input_shape)
        y = torch.randint(0, data.num_classes, (args.batch_size,))
        trainers = {}
        for prec, cl in SETTINGS:
            torch.manual_seed(0)
            trainers[prec, cl] = Trainer(build(), data, TrainConfig(epochs=1, lr=0.01, precision=prec,
                                                                    channels_last=cl, snapshot_init=False),
                                         progress=False)
        runs = {s: [] for s in SETTINGS}
        for r in range(args.repeats):
            for s in SETTINGS:
                tr = trainers[s]
                xx = x.contiguous(memory_format=torch.channels_last) if s[1] else x
                tr._train_step(xx, y)  # warm-up: oneDNN primitives for this setting
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    tr._train_step(xx, y)
                runs[s].append(args.steps * args.batch_size / (time.perf_counter() - t0))
        base = statistics.median(runs["fp32", False])
        for s in SETTINGS:
            med = statistics.median(runs[s])
            label = s[0] + (" + channels_last" if s[1] else "")
            print(f"{name:12s} {label:24s} {med:12.0f} {med / base:8.2f}x  {' '.join(f'{v:.0f}' for v in runs[s])}",
                  flush=True)
        del trainers


if __name__ == "__main__":
    main()
