"""CLI options shared by the projects' commands (Typer ``Annotated`` types) and their conversion to configs.

A project command declares the options it supports with these types, keeping its own defaults (the original
code's), and builds the configs with :func:`data_config` / :func:`train_config`:

    def train(dataset: opt.Dataset = "cifar10", lr: opt.Lr = 0.1, ...):
        data_cfg = opt.data_config(locals())
"""
from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Optional

import typer

from shared.data import DataConfig
from shared.errors import check
from shared.train import TrainConfig

# data
Dataset = Annotated[str, typer.Option(help="Dataset: mnist, fashion_mnist, kmnist, cifar10, cifar100, imagenet, "
                                           "digits (embedded), sin, constant.")]
DataPath = Annotated[str, typer.Option(help="Root folder of the dataset files (torchvision layouts).")]
BatchSize = Annotated[int, typer.Option(help="Training batch size.")]
EvalBatchSize = Annotated[int, typer.Option(help="Batch size of evaluation passes.")]
Noise = Annotated[float, typer.Option(help="Fraction of training labels corrupted, in [0, 1]; a corrupted label "
                                           "always differs from the true one.")]
NoiseSeed = Annotated[int, typer.Option(help="Seed of label noise and pixel shuffle.")]
PixelShuffle = Annotated[bool, typer.Option(help="Shuffle the pixels of each training image with its own fixed "
                                                 "permutation.")]
SubsampleClasses = Annotated[int, typer.Option(help="Keep only this many classes (0: all), the same in every split.")]
ClassSampleSeed = Annotated[int, typer.Option(help="Seed choosing the subsampled classes.")]
Split = Annotated[float, typer.Option(help="Fraction of the training set held out for validation, in (0, 1); 0: none "
                                           "(evaluation uses the test set).")]
Stratified = Annotated[bool, typer.Option(help="Stratify the validation split by class.")]
SplitSeed = Annotated[int, typer.Option(help="Seed of the validation split.")]
Augmentation = Annotated[bool, typer.Option(help="Random crop (padding 4) and horizontal flip of training images.")]
Normalize = Annotated[str, typer.Option(help="Input normalization: channel (dataset mean/std), gcn (global contrast "
                                             "normalization per image) or none.")]
Shuffle = Annotated[bool, typer.Option(help="Reshuffle the training set every epoch.")]
VerifyChecksums = Annotated[bool, typer.Option(help="Check CIFAR files against torchvision's md5 sums.")]
Download = Annotated[bool, typer.Option(help="Let torchvision download missing files (needs network).")]

# training
Epochs = Annotated[int, typer.Option(help="Number of training epochs.")]
Optimizer = Annotated[str, typer.Option(help="Optimizer: sgd, adam, adamw.")]
Lr = Annotated[float, typer.Option(help="Learning rate.")]
Momentum = Annotated[float, typer.Option(help="SGD momentum.")]
WeightDecay = Annotated[float, typer.Option(help="Weight decay (L2).")]
LrStep = Annotated[int, typer.Option(help="Decay the learning rate every this many epochs (0: constant).")]
LrDecay = Annotated[float, typer.Option(help="Multiplicative learning-rate decay at each step.")]
Seed = Annotated[int, typer.Option(help="Random seed (weights, batch order, augmentation, dropout).")]
SnapshotEvery = Annotated[int, typer.Option(help="Save a snapshot every this many epochs (0: the last only).")]
SnapshotAllUntil = Annotated[int, typer.Option(help="Also save a snapshot after each of the first N epochs.")]
TrainAcc = Annotated[bool, typer.Option(help="Also evaluate accuracy on the training split at each evaluation.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
ResumeFrom = Annotated[Optional[str], typer.Option(help="Continue from a snapshot (path or runs:/<id>/snapshots/"
                                                        "epoch_NNN.pt): weights, optimizer, schedule, RNG, epoch.")]
OutDir = Annotated[Optional[str], typer.Option(help="Local folder for snapshots and results (default "
                                                    "./outputs/<project>/<run id>).")]
RunName = Annotated[Optional[str], typer.Option(help="MLflow run name.")]
Arch = Annotated[Optional[str], typer.Option(help="Architecture; run without it to list the valid ones.")]


def _pick(cls, values: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def data_config(values: dict, **overrides) -> DataConfig:
    """A DataConfig from a command's ``locals()`` (fields not given keep DataConfig's defaults)."""
    return DataConfig(**{**_pick(DataConfig, values), **overrides})


def train_config(values: dict, **overrides) -> TrainConfig:
    """A TrainConfig from a command's ``locals()``."""
    return TrainConfig(**{**_pick(TrainConfig, values), **overrides})


def on_off_auto(value, option: str = "--augmentation") -> bool | None:
    """Parse an ``auto|on|off`` option (true/false accepted too): None for auto, else the boolean."""
    table = {"auto": None, "on": True, "off": False, "true": True, "false": False}
    key = "auto" if value is None else str(value).lower()
    check(key in table, f"{option} must be auto, on or off, got {value!r}")
    return table[key]
