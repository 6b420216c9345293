"""`make demo` step of hyperplane_bias: on the embedded digits data, train LeNet with a snapshot every epoch, compute
the projection statistics over training (metrics with step = epoch), the re-initialization heatmap (every snapshot
plus a fresh draw) and the projection-bias / robustness rank correlation. About 30 s on 2 cores."""
from __future__ import annotations

from pathlib import Path

import torch

from shared.data import DataConfig
from shared.train import TrainConfig

from . import runner


def run_demo(out_dir: Path) -> None:
    # LeNet on 28x28 digits gains nothing from a second thread, and a busy machine makes two threads many times
    # slower (measured: 82 s instead of 13 s for this step); run it on one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _steps(Path(out_dir))
    finally:
        torch.set_num_threads(threads)


def _steps(out_dir: Path) -> None:
    tr = runner.train("lenet", DataConfig(dataset="digits", batch_size=64),
                      TrainConfig(epochs=6, lr=0.01, momentum=0.9, weight_decay=1e-4, snapshot_every=1, seed=0),
                      out_dir=str(out_dir / "train"), run_name="demo-hb-train", progress=False)
    print(f"  lenet on digits: {tr['epochs']} epochs, test accuracy {tr['final']['test_acc']:.3f} "
          f"(run {tr['run_id']}, {tr['epochs'] + 1} snapshots)")
    pr = runner.projections(run=tr["run_id"], normalize=True, results=str(out_dir), run_name="demo-hb-projections")
    last = pr["documents"][-1]
    print(f"  projections over training: run {pr['run_id']} (net mass {pr['documents'][0]['net']['mass']:.2f} at "
          f"init -> {last['net']['mass']:.2f} at epoch {last['epoch']})")
    ri = runner.reinit(run=tr["run_id"], rand=True, results=str(out_dir), run_name="demo-hb-reinit")
    doc = ri["document"]
    print(f"  re-initialization heatmap: run {ri['run_id']} ({len(doc['layers'])} layers x "
          f"{len(doc['init_from_epoch'])} checkpoints, top-1 {doc['top1_test']:.1f}%)")
    co = runner.correlate(reinit_src=ri["run_id"], normalize=True, results=str(out_dir),
                          run_name="demo-hb-correlate")
    rho = co["result"]["spearman"]["bias"]["rho"]
    print(f"  correlate: run {co['run_id']}, Spearman rho(|mass-0.5|, drop@0) = "
          f"{'undefined' if rho is None else f'{rho:+.2f}'}")
