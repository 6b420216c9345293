"""Disk use of the `paper` presets' snapshots: every snapshot with its resume state (optimizer state) as before,
against the weights only in all but the newest one (shared/train.py), for the models and optimizers the presets use.

    python benchmarks/shared/bench_snapshot_disk.py

Sizes are of the real models' state dicts saved with torch.save after one optimizer step (which fills Adam's and
momentum's buffers); the run metadata a snapshot also holds is a few kB and left out.
"""
from __future__ import annotations

import io

import torch

from shared.models import build_model, load_project_models

# (project, architecture, optimizer, trainings, snapshots per training: epochs + the initialization)
PRESETS = [("hyperplane_bias paper", "vgg11", "adam", 3 * 3, 20 + 1),
           ("cone_geometry paper (teachers)", "LeNet9", "sgd", 3, 75 + 1)]


def _bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.tell()


def main() -> None:
    load_project_models()
    print(f"{'preset':32} {'weights MB':>10} {'+resume MB':>10} {'before GB':>10} {'now GB':>8} {'ratio':>6}")
    for name, arch, opt, runs, snaps in PRESETS:
        model = build_model(arch, 10, 3, 32)
        params = model.parameters()
        optim = torch.optim.Adam(params, 1e-3) if opt == "adam" else torch.optim.SGD(params, 0.1, momentum=0.9)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optim.step()
        w = _bytes({"model_state_dict": model.state_dict()})
        full = _bytes({"model_state_dict": model.state_dict(), "optimizer_state_dict": optim.state_dict()})
        before, now = runs * snaps * full, runs * ((snaps - 1) * w + full)
        print(f"{name:32} {w / 1e6:10.1f} {full / 1e6:10.1f} {before / 1e9:10.2f} {now / 1e9:8.2f} "
              f"{before / now:6.2f}")


if __name__ == "__main__":
    main()
