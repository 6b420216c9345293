"""feature_amounts' options and what gets trained: the project's options with the original's defaults, its data and
training configurations, the networks (variants, the reference VGG, custom widths) and the key of a result."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any


from shared.data import DataConfig
from shared.errors import UsageError, check
from shared.files import cache_dir
from shared.train import TrainConfig

from .models import INITS
from .splitting import parse_memory
from .variants import Variant, base_widths, check_depth, generate_variants


PROJECT = "feature_amounts"
RESULT_JSON = "feature_amounts/result.json"
SWEEP_CSV = "feature_amounts/sweep.csv"
def default_split_cache() -> str:
    """``$GEOMLAB_CACHE/feature_amounts_splits.json`` (default ``~/.cache/geomlab/``): independent of the working
    folder, which ``mlflow run`` changes."""
    return str(cache_dir() / "feature_amounts_splits.json")


DEFAULT_SPLIT_CACHE = "default"
IMAGE_AUGMENTED = ("cifar10", "cifar100", "imagenet")


# ------------------------------------------------------------------------------------------------------------------
# Options


@dataclass
class FAOptions:
    """The project's own options (the original's defaults)."""

    vgg_depth: int = 16
    patch_size: int = 32
    width_multiplier: float = 1.0
    batch_norm: float = 1e-4  # BN epsilon; 0 removes BatchNorm
    dropout: float = 0.5
    weight_init: str = "kaiming-normal"
    lr_wr_epochs: int = 10
    lr_wr_mul: int = 2
    lr_wr_min: float = 1e-5
    abort_rule: bool = True
    memory_limit: str | None = None
    micro_batches: int = 0  # 0: automatic; k: force k micro-batches
    split_cache: str | None = DEFAULT_SPLIT_CACHE
    probe_steps: int = 1
    keep_snapshots: str = "last"  # last | all | none

    def validate(self) -> None:
        check_depth(self.vgg_depth)
        check(self.patch_size >= 1, f"--patch-size must be a positive number of pixels, got {self.patch_size}")
        check(self.width_multiplier > 0, f"--width-multiplier must be > 0 (e.g. 0.05 for quick runs), got "
              f"{self.width_multiplier}")
        check(self.batch_norm >= 0, f"--batch-norm is the BatchNorm epsilon (>= 0; 0 disables it), got {self.batch_norm}")
        check(0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        check(self.weight_init in INITS, f"unknown --init {self.weight_init!r}; use one of: {', '.join(INITS)}")
        check(self.lr_wr_epochs >= 1 and self.lr_wr_mul >= 1,
              f"--lr-wr-epochs and --lr-wr-mul must be >= 1, got {self.lr_wr_epochs}, {self.lr_wr_mul}")
        check(self.lr_wr_min >= 0, f"--lr-wr-min must be >= 0, got {self.lr_wr_min}")
        check(self.micro_batches >= 0, f"--micro-batches must be 0 (automatic) or a number of micro-batches, got "
              f"{self.micro_batches}")
        check(self.probe_steps >= 1, f"--probe-steps must be >= 1, got {self.probe_steps}")
        check(self.keep_snapshots in ("last", "all", "none"),
              f"unknown --keep-snapshots {self.keep_snapshots!r}; use last, all or none")
        parse_memory(self.memory_limit)

    def result_settings(self) -> dict[str, Any]:
        """The options that change what is trained (execution details such as memory and caches excluded)."""
        d = asdict(self)
        for k in ("memory_limit", "micro_batches", "split_cache", "probe_steps", "keep_snapshots"):
            d.pop(k)
        return d


def make_data_config(dataset: str, *, data_path: str = "./data", patch_size: int = 32, normalize: str = "none",
                     augmentation: bool | None = None, channels: int = 0, batch_size: int = 128, split: float = 0.0,
                     split_seed: int = 0, train_fraction: float = 1.0, subsample_classes: int = 0,
                     verify_checksums: bool = True, download: bool = False, num_workers: int = 0) -> DataConfig:
    """The original's data handling on the shared loaders: resize to the patch size, crop padding ceil(0.1 patch),
    crop + flip augmentation for CIFAR / ImageNet by default, no normalization by default; evaluation batches of
    the training batch size (as the original's loaders; wide variants would not fit 1000 images at once)."""
    check(patch_size >= 1, f"--patch-size must be positive, got {patch_size}")
    aug = dataset in IMAGE_AUGMENTED if augmentation is None else augmentation
    return DataConfig(dataset=dataset, data_path=data_path, batch_size=batch_size, eval_batch_size=batch_size,
                      normalize=normalize,
                      augmentation=aug, crop_padding=math.ceil(0.1 * patch_size), resize=patch_size,
                      channels=channels, split=split, split_seed=split_seed, train_fraction=train_fraction,
                      subsample_classes=subsample_classes, verify_checksums=verify_checksums, download=download,
                      num_workers=num_workers)


def make_train_config(*, epochs: int = 150, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                      nesterov: bool = False, seed: int = 0, device: str = "auto",
                      snapshot_every: int = 1) -> TrainConfig:
    """SGD (its SGDR schedule, the ``sgdr`` of ``SCHEDULES``, is set from the FAOptions by :func:`train_target`); a
    snapshot every epoch so that an interrupted run resumes where it stopped."""
    return TrainConfig(epochs=epochs, optimizer="sgd", lr=lr, momentum=momentum, weight_decay=weight_decay,
                       nesterov=nesterov, schedule="none", seed=seed, device=device, snapshot_every=snapshot_every,
                       snapshot_init=True)


# ------------------------------------------------------------------------------------------------------------------
# What gets trained


@dataclass(frozen=True)
class Target:
    """One network to train: a skew-normal variant, the reference VGG, or custom widths."""

    vid: str
    widths: tuple[int, ...]
    index: int | None = None
    mean: float | None = None
    scale: float | None = None
    skew: float | None = None

    @classmethod
    def of(cls, v: Variant) -> "Target":
        return cls(v.id, tuple(v.widths), v.index, v.mean, v.scale, v.skew)


def reference_target(opts: FAOptions) -> Target:
    """The unmodified VGG-D (VGG-``depth``), scaled by the width multiplier like the variants."""
    base = base_widths(opts.vgg_depth, opts.patch_size)
    widths = tuple(max(2, math.ceil(w * opts.width_multiplier)) for w in base) if opts.width_multiplier != 1 \
        else tuple(base)
    return Target(f"vgg{opts.vgg_depth}_reference", widths)


def variant_list(opts: FAOptions) -> list[Variant]:
    return list(_variants_cached(opts.vgg_depth, opts.patch_size, opts.width_multiplier))


@functools.lru_cache(maxsize=8)
def _variants_cached(depth: int, patch_size: int, multiplier: float) -> tuple[Variant, ...]:
    return tuple(generate_variants(depth, patch_size, multiplier))


def parse_widths(text: str, opts: FAOptions) -> Target:
    try:
        widths = tuple(int(w) for w in re.split(r"[,\s]+", text.strip()) if w)
    except ValueError:
        raise UsageError(f"--widths must be comma-separated integers, got {text!r}") from None
    need = opts.vgg_depth - 1
    check(len(widths) == need, f"--widths needs {need} entries for --vgg-depth {opts.vgg_depth} "
          f"({need - 2} convs + 2 hidden linear layers), got {len(widths)}")
    check(min(widths) >= 1, "every width must be >= 1")
    return Target("custom_" + hashlib.sha1(",".join(map(str, widths)).encode()).hexdigest()[:8], widths)


def _hash(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_key(data_cfg: DataConfig, train_cfg: TrainConfig, opts: FAOptions) -> str:
    """Hash of everything that determines a variant's result (not paths, devices, memory or snapshot settings)."""
    d = asdict(data_cfg)
    for k in ("data_path", "verify_checksums", "download", "num_workers", "eval_batch_size"):
        d.pop(k, None)
    t = asdict(train_cfg)
    for k in ("device", "snapshot_every", "snapshot_all_until", "snapshot_init", "eval_every", "eval_test",
              "channels_last"):
        t.pop(k, None)
    if t.get("precision") == "fp32":  # keys of sweeps started before --precision existed stay valid
        t.pop("precision")
    return _hash({"data": d, "train": t, "fa": opts.result_settings()})
