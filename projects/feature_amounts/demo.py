"""`make demo` step of feature_amounts: a three-variant sweep on digits (narrow widths, one epoch each) and its plot.

For speed the demo departs from the defaults: budget x0.1, 16-px patches (digits are 8x8 images upscaled) and
batches of 32 (so that one epoch has 45 SGDR steps); everything else is the original's setting.
"""
from __future__ import annotations

from pathlib import Path

#: Three variants spread over the list: features early (0), in the middle (96) and late (192).
DEMO_IDS = (0, 96, 192)


def run_demo(out_dir: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these networks are tiny: one thread avoids OpenMP overhead (restored below)
    try:
        _run(Path(out_dir))
    finally:
        torch.set_num_threads(threads)


def _run(out_dir: Path) -> None:
    from projects.feature_amounts.config import FAOptions, Target, make_data_config, make_train_config, variant_list
    from projects.feature_amounts.sweep_runs import plot, sweep

    opts = FAOptions(patch_size=16, width_multiplier=0.1, split_cache=str(out_dir / "splits.json"))
    targets = [Target.of(v) for v in variant_list(opts) if v.index in DEMO_IDS]
    data_cfg = make_data_config("digits", patch_size=16, batch_size=32)
    train_cfg = make_train_config(epochs=1, lr=0.01)
    res = sweep(targets, data_cfg, train_cfg, opts, out_dir=out_dir / "sweep", run_name="demo-feature-amounts-sweep",
                fresh=True, progress=False, echo=lambda s: print("  " + s))
    run_id, paths = plot(res.parent_run_id, out_dir=out_dir / "plots", run_name="demo-feature-amounts-plot")
    print(f"  sweep run {res.parent_run_id}: {len(res.records)} variants, CSV {res.csv_path}; plot run {run_id}: "
          + ", ".join(p.name for p in paths))
