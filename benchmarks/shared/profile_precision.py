"""Where a training step of an architecture spends its time, under fp32 and bf16-mixed (torch.profiler, CPU).

    python benchmarks/shared/profile_precision.py --arch vgg11 --project hyperplane_bias [--batch-size 128]
    python benchmarks/shared/profile_precision.py --arch feature_vgg --project feature_amounts --largest
    python benchmarks/shared/profile_precision.py --arch vgg11 --optimizer-only    # SGD step: reference vs fused

Prints the top operators by self CPU time for each precision, and the split of one step into forward, backward and
optimizer step (the shared loop's own ``Trainer._train_step`` on random data of the dataset's shape).
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def build(args):
    from shared.data import DataConfig, load_data
    from shared.experiment import model_for

    data = load_data(DataConfig(dataset="digits", batch_size=args.batch_size, resize=args.size,
                                channels=args.channels))
    opts = {}
    if args.largest:
        from projects.feature_amounts.variants import generate_variants

        widest = max(generate_variants(16, args.size), key=lambda v: v.parameters if hasattr(v, "parameters")
                     else sum(v.widths))
        opts = {"widths": list(widest.widths)}
        print(f"widest feature_amounts variant: {widest.id} widths {list(widest.widths)}")
    return data, (lambda: model_for(args.arch, data, args.project, **opts))


def phases(trainer, x, y, reps):
    """Median seconds of forward, backward and optimizer step of Trainer-equivalent steps."""
    from shared.train import autocast

    t = {"forward": [], "backward": [], "optimizer": []}
    for _ in range(reps):
        trainer.optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        with autocast(trainer.device, trainer.cfg.precision):
            loss, _ = trainer.loss_fn(trainer.model, x, y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        trainer.optimizer.step()
        t3 = time.perf_counter()
        for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2)):
            t[k].append(v)
    return {k: sorted(v)[len(v) // 2] for k, v in t.items()}


def optimizer_steps(model, reps: int = 3) -> None:
    """SGD step (momentum, weight decay) on the model's largest weight: PyTorch's reference kernel (what fp32 uses)
    vs the fused one (what bf16-mixed uses), alternating, medians."""
    p = max(model.parameters(), key=lambda t: t.numel())
    w = torch.nn.Parameter(p.detach().clone())
    w.grad = torch.randn_like(w)
    times = {False: [], True: []}
    for _ in range(reps):
        for fused in (False, True):
            opt = torch.optim.SGD([w], lr=0.01, momentum=0.9, weight_decay=5e-4, fused=fused)
            opt.step()
            t0 = time.perf_counter()
            opt.step()
            times[fused].append(time.perf_counter() - t0)
    ref, fused = (sorted(v)[len(v) // 2] for v in (times[False], times[True]))
    print(f"SGD step of the largest weight {tuple(w.shape)}: reference {ref:.3f} s, fused {fused:.3f} s "
          f"({ref / fused:.1f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="vgg11")
    ap.add_argument("--project", default="hyperplane_bias")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--largest", action="store_true", help="the feature_amounts variant with the most parameters")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--channels-last", action="store_true", help="also time (not profile) channels_last")
    ap.add_argument("--optimizer-only", action="store_true", help="only time the SGD step, reference vs fused")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    os.environ["GEOMLAB_NO_PROGRESS"] = "1"
    from torch.profiler import ProfilerActivity, profile

    from shared.train import TrainConfig, Trainer

    data, make = build(args)
    if args.optimizer_only:
        optimizer_steps(make(), args.reps)
        return
    x = torch.randn(args.batch_size, *data.input_shape)
    y = torch.randint(0, data.num_classes, (args.batch_size,))
    for prec in ("fp32", "bf16-mixed"):
        for cl in (False, True) if args.channels_last else (False,):
            tr = Trainer(make(), data, TrainConfig(epochs=1, precision=prec, channels_last=cl, snapshot_init=False),
                         progress=False)
            xx = x.contiguous(memory_format=torch.channels_last) if cl else x
            tr._train_step(xx, y)  # warm-up (allocations, oneDNN primitives)
            ph = phases(tr, xx, y, args.reps)
            n_params = sum(p.numel() for p in tr.model.parameters())
            print(f"\n== {args.arch} {prec} channels_last={cl}: {n_params / 1e6:.1f} M parameters; per step "
                  + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in ph.items())
                  + f"; {args.batch_size / sum(ph.values()):.0f} img/s")
            if cl:
                continue
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                tr._train_step(xx, y)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
