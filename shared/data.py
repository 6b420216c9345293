"""Datasets by name, one registry, and the dataset options every project shares.

Datasets that fit in memory (MNIST, Fashion-MNIST, CIFAR-10/100, KMNIST, digits, sin, constant) are read once
through torchvision's real loaders (or scikit-learn / the synthetic generators), held as tensors, and batched by
index in the training process: no worker processes, no per-sample Python.  ImageNet is an ImageFolder tree and is
streamed through a torch DataLoader (:mod:`shared.imagenet`). The registry is :mod:`shared.datasets`, the batched
transforms and the in-memory loader :mod:`shared.loaders`.

Shared options (:class:`DataConfig`), applied in this order:

1. class subsampling (``subsample_classes``): the same ``n`` classes in every split, chosen by ``class_sample_seed``
   from the sorted class list and relabelled ``0..n-1`` in the chosen order;
2. validation split (``split`` in (0, 1)): a seeded random split of the training set (``stratified`` keeps class
   proportions); the validation part is evaluated with test-time transforms and clean labels;
3. label noise (``noise`` in [0, 1]): each training-split label is corrupted with probability ``noise`` (seeded by
   ``noise_seed``); a corrupted label always differs from the true one: (y + k) mod K, k uniform in 1..K-1;
   random labels (``random_labels``): every training-split label is replaced by one drawn uniformly from the K
   classes, independent of the image (Zhang et al.'s control: no learnable signal is left), seeded by ``noise_seed``;
4. pixel shuffle (``pixel_shuffle``): each training-split sample gets its own fixed permutation of pixel positions
   (any image size), applied after augmentation and normalization, identically across channels;
5. augmentation (random crop with padding, horizontal flip) on training batches, as batched tensor ops;
6. normalization: ``channel`` (per-channel mean/std of the dataset, or ``mean``/``std`` overrides), ``gcn``
   (global contrast normalization per image), or ``none``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from shared.datasets import DATASETS, DatasetSpec, RawSplit
from shared.errors import UsageError, check
from shared.loaders import TensorLoader, Transform, pixel_permutations


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class DataConfig:
    """Options that select and transform a dataset. Field names are the CLI option names (with dashes)."""

    dataset: str = "digits"
    data_path: str = "./data"
    batch_size: int = 128
    eval_batch_size: int = 1000
    noise: float = 0.0
    noise_seed: int = 0
    random_labels: bool = False
    pixel_shuffle: bool = False
    subsample_classes: int = 0
    class_sample_seed: int = 42
    split: float = 0.0
    stratified: bool = False
    split_seed: int = 0
    augmentation: bool = False
    normalize: str = "channel"  # channel | gcn | none
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    shuffle: bool = True  # reshuffle the training batches every epoch
    resize: int = 0  # 0: native size
    channels: int = 0  # 0: native; 3 repeats a gray channel
    train_fraction: float = 1.0  # keep this fraction of the training set (seeded by split_seed)
    verify_checksums: bool = True  # torchvision's md5 checks of CIFAR files
    download: bool = False  # allow torchvision to download when files are missing (needs network)
    num_samples: int = 1000  # synthetic sets (sin, constant)
    synthetic_c: float = 0.01  # synthetic sets: the constant c
    crop_padding: int = 4
    flip: bool = True
    num_workers: int = 0  # streamed datasets only (ImageNet)

    def validate(self) -> None:
        check(0.0 <= self.noise <= 1.0, f"--noise must be a fraction in [0, 1], got {self.noise}; "
              "use e.g. --noise 0.2 for 20% corrupted labels (and --pixel-shuffle for shuffled pixels)")
        check(self.split == 0.0 or 0.0 < self.split < 1.0,
              f"--split must be in (0, 1) (or 0 for no validation split), got {self.split}")
        check(0.0 < self.train_fraction <= 1.0, f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        check(self.subsample_classes >= 0, f"--subsample-classes must be >= 0, got {self.subsample_classes}")
        check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        check(self.normalize in ("channel", "gcn", "none"),
              f"unknown normalization {self.normalize!r}; use one of: channel, gcn, none")


# --------------------------------------------------------------------------------------------------------------
# The bundle a project trains on


@dataclass
class Data:
    """Everything a training or analysis run needs from the data: loaders plus metadata for the model."""

    config: DataConfig
    spec: DatasetSpec
    num_classes: int
    input_shape: tuple[int, ...]
    train: object
    test: object
    val: object | None
    train_eval: object  # the training split with test-time transforms and the training labels (for train accuracy)
    class_names: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def eval_loader(self):
        """The split used for per-epoch evaluation: validation when a split exists, else test."""
        return self.val if self.val is not None else self.test


def select_classes(num_classes: int, n: int, seed: int) -> list[int]:
    """The ``n`` classes kept by class subsampling, in their new label order."""
    check(n <= num_classes, f"--subsample-classes {n} asks for more classes than the dataset has ({num_classes}); "
          f"use a value between 1 and {num_classes} (0 keeps all)")
    rng = np.random.RandomState(seed)
    return [int(c) for c in rng.permutation(num_classes)[:n]]


def _subsample(raw: RawSplit, keep: list[int]) -> RawSplit:
    table = torch.full((int(raw.y.max()) + 1 if len(raw.y) else 1,), -1, dtype=torch.long)
    for new, old in enumerate(keep):
        if old < len(table):
            table[old] = new
    mask = table[raw.y] >= 0
    return RawSplit(raw.x[mask], table[raw.y[mask]])


def validation_split(y: torch.Tensor, fraction: float, seed: int, stratified: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of a seeded random split; ``stratified`` keeps each class's proportion."""
    idx = np.arange(len(y))
    if stratified:
        from sklearn.model_selection import train_test_split

        try:
            tr, va = train_test_split(idx, test_size=fraction, random_state=seed, shuffle=True, stratify=y.numpy())
        except ValueError as e:
            raise UsageError(f"stratified split impossible: {e}; use a larger --split or drop --stratified") from None
        return np.sort(tr), np.sort(va)
    perm = np.random.RandomState(seed).permutation(len(y))
    n_val = int(math.floor(len(y) * fraction))
    check(0 < n_val < len(y), f"--split {fraction} leaves an empty training or validation set ({len(y)} samples)")
    return np.sort(perm[:-n_val]), np.sort(perm[-n_val:])


def corrupt_labels(y: torch.Tensor, num_classes: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt each label with probability ``fraction``; a corrupted label always differs. Returns (labels, mask)."""
    rng = np.random.RandomState(seed)
    mask = torch.from_numpy(rng.uniform(size=len(y)) < fraction)
    shift = torch.from_numpy(rng.randint(1, max(num_classes, 2), size=len(y)))
    noisy = torch.where(mask, (y + shift) % num_classes, y)
    return noisy, mask


def random_labels(n: int, num_classes: int, seed: int) -> torch.Tensor:
    """``n`` labels drawn uniformly from ``0..num_classes-1``, independent of anything else (seeded)."""
    return torch.from_numpy(np.random.RandomState(seed).randint(0, num_classes, size=n)).long()


def _prepare_images(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    if x.dim() != 4:
        return x
    if cfg.resize and x.shape[-1] != cfg.resize:
        x = F.interpolate(x.float() / 255.0 if x.dtype == torch.uint8 else x, size=(cfg.resize, cfg.resize),
                          mode="bilinear", align_corners=False)
        x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    if cfg.channels and x.shape[1] != cfg.channels:
        check(x.shape[1] == 1, f"cannot turn {x.shape[1]} channels into {cfg.channels}; --channels only repeats gray images")
        x = x.expand(-1, cfg.channels, -1, -1).contiguous()
    return x


def load_data(cfg: DataConfig, seed: int = 0) -> Data:
    """Build the :class:`Data` bundle for ``cfg``; ``seed`` seeds the training batch order and augmentation."""
    cfg.validate()
    spec = DATASETS.get(cfg.dataset)
    if spec.stream is not None:
        return spec.stream(cfg, seed)
    tr, te, names = spec.load(cfg)
    num_classes = spec.num_classes
    info: dict = {}
    if spec.task == "classification":
        if cfg.subsample_classes:
            keep = select_classes(num_classes, cfg.subsample_classes, cfg.class_sample_seed)
            tr, te = _subsample(tr, keep), _subsample(te, keep)
            names = [names[k] for k in keep] if names else names
            num_classes = len(keep)
            info["classes_kept"] = keep
    elif cfg.noise or cfg.subsample_classes or cfg.pixel_shuffle or cfg.random_labels:
        raise UsageError(f"--noise, --random-labels, --pixel-shuffle and --subsample-classes apply to classification sets, "
                         f"not to the regression set {cfg.dataset}")
    if cfg.train_fraction < 1.0:
        keep_n = max(1, int(round(len(tr.y) * cfg.train_fraction)))
        sel = torch.from_numpy(np.sort(np.random.RandomState(cfg.split_seed).permutation(len(tr.y))[:keep_n]))
        tr = RawSplit(tr.x[sel], tr.y[sel])
    x_tr, x_te = _prepare_images(tr.x, cfg), _prepare_images(te.x, cfg)
    y_tr = tr.y
    val_raw = None
    if cfg.split:
        i_tr, i_va = validation_split(y_tr, cfg.split, cfg.split_seed, cfg.stratified)
        val_raw = (x_tr[i_va], y_tr[i_va])
        x_tr, y_tr = x_tr[i_tr], y_tr[i_tr]
    clean_y = y_tr
    if cfg.noise > 0:
        y_tr, mask = corrupt_labels(y_tr, num_classes, cfg.noise, cfg.noise_seed)
        info["noisy_labels"] = int(mask.sum())
    if cfg.random_labels:
        y_tr = random_labels(len(y_tr), num_classes, cfg.noise_seed)
    perms = None
    if cfg.pixel_shuffle:
        check(x_tr.dim() == 4, "--pixel-shuffle needs image data")
        perms = pixel_permutations(len(y_tr), x_tr.shape[-1] * x_tr.shape[-2], cfg.noise_seed)
    c = x_tr.shape[1] if x_tr.dim() == 4 else 1
    mean = cfg.mean or (spec.mean if len(spec.mean) == c else spec.mean * c if len(spec.mean) == 1 else spec.mean[:1])
    std = cfg.std or (spec.std if len(spec.std) == c else spec.std * c if len(spec.std) == 1 else spec.std[:1])
    shape = (-1, 1, 1) if x_tr.dim() == 4 else (-1,)
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(shape)
    std_t = torch.tensor(std, dtype=torch.float32).reshape(shape)
    norm = cfg.normalize if x_tr.dim() == 4 else "none"
    t_eval = Transform(norm, mean_t, std_t)
    t_train = replace(t_eval, augment=cfg.augmentation, padding=cfg.crop_padding, flip=cfg.flip)
    ebs = cfg.eval_batch_size
    train = TensorLoader(x_tr, y_tr, cfg.batch_size, t_train, shuffle=cfg.shuffle, seed=seed, perms=perms)
    train_eval = TensorLoader(x_tr, y_tr, ebs, t_eval, perms=perms)
    test = TensorLoader(x_te, te.y, ebs, t_eval)
    val = TensorLoader(val_raw[0], val_raw[1], ebs, t_eval) if val_raw is not None else None
    info.update(train_size=len(y_tr), test_size=len(te.y), val_size=0 if val_raw is None else len(val_raw[1]))
    input_shape = tuple(x_tr.shape[1:])
    data = Data(cfg, spec, num_classes, input_shape, train, test, val, train_eval, names, info)
    data.clean_train_labels = clean_y  # type: ignore[attr-defined]
    return data


def data_params(cfg: DataConfig) -> dict:
    """The data options as flat MLflow params."""
    out = {}
    for k, v in vars(cfg).items():
        out[f"data.{k}"] = ",".join(map(str, v)) if isinstance(v, (tuple, list)) else v
    return out
