"""Generic commands on the root app: train a registered architecture, evaluate a snapshot."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from shared import options as opt


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        arch: opt.Arch = None,
        dataset: opt.Dataset = "digits",
        data_path: opt.DataPath = "./data",
        batch_size: opt.BatchSize = 128,
        noise: opt.Noise = 0.0,
        noise_seed: opt.NoiseSeed = 0,
        pixel_shuffle: opt.PixelShuffle = False,
        subsample_classes: opt.SubsampleClasses = 0,
        class_sample_seed: opt.ClassSampleSeed = 42,
        split: opt.Split = 0.0,
        stratified: opt.Stratified = False,
        split_seed: opt.SplitSeed = 0,
        augmentation: opt.Augmentation = False,
        normalize: opt.Normalize = "channel",
        shuffle: opt.Shuffle = True,
        verify_checksums: opt.VerifyChecksums = True,
        epochs: opt.Epochs = 10,
        optimizer: opt.Optimizer = "sgd",
        lr: opt.Lr = 0.05,
        momentum: opt.Momentum = 0.9,
        weight_decay: opt.WeightDecay = 5e-4,
        lr_step: opt.LrStep = 0,
        lr_decay: opt.LrDecay = 0.1,
        seed: opt.Seed = 0,
        snapshot_every: opt.SnapshotEvery = 0,
        snapshot_all_until: opt.SnapshotAllUntil = 0,
        train_acc: opt.TrainAcc = False,
        device: opt.Device = "auto",
        resume_from: opt.ResumeFrom = None,
        out_dir: opt.OutDir = None,
        run_name: opt.RunName = None,
        width: Annotated[Optional[int], typer.Option(help="Width option of the generic baselines (lenet_small, mlp).")] = None,
    ) -> None:
        """Train any registered architecture with the shared loop (generic baselines: lenet_small, mlp)."""
        from shared.experiment import run_training

        model_options = {"width": width} if width is not None and arch == "lenet_small" else \
            ({"hidden": width} if width is not None and arch == "mlp" else {})
        out = run_training(project="shared", entry_point="train", arch=arch, data_cfg=opt.data_config(locals()),
                           train_cfg=opt.train_config(locals()), model_options=model_options, out_dir=out_dir,
                           resume_from=resume_from, run_name=run_name)
        final = out.result.final
        typer.echo(f"run {out.run_id}: " + ", ".join(f"{k}={v:.4f}" for k, v in final.items()
                                                     if k.endswith(("acc", "loss"))))

    @app.command("evaluate")
    def evaluate_cmd(
        snapshot: Annotated[str, typer.Argument(help="Snapshot path or MLflow URI (runs:/<id>/snapshots/epoch_NNN.pt).")],
        dataset: opt.Dataset = "digits",
        data_path: opt.DataPath = "./data",
        split: Annotated[str, typer.Option(help="Which split: test or train.")] = "test",
        arch: opt.Arch = None,
        device: opt.Device = "auto",
    ) -> None:
        """Evaluate a snapshot: loss, top-1 and top-5 accuracy."""
        from shared.data import DataConfig, load_data
        from shared.experiment import load_model_from
        from shared.train import evaluate, resolve_device

        data = load_data(DataConfig(dataset=dataset, data_path=data_path))
        model, _, _ = load_model_from(snapshot, arch=arch, data=data)
        loader = data.test if split == "test" else data.train_eval
        dev = resolve_device(device)
        res = evaluate(model.to(dev), loader, dev, data.task)
        typer.echo(" ".join(f"{k}={v:.4f}" for k, v in res.items()))
