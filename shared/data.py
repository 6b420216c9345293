"""Datasets by name, one registry, and the dataset options every project shares.

Datasets that fit in memory (MNIST, Fashion-MNIST, CIFAR-10/100, KMNIST, digits, sin, constant) are read once
through torchvision's real loaders (or scikit-learn / the synthetic generators), held as tensors, and batched by
index in the training process: no worker processes, no per-sample Python.  ImageNet is an ImageFolder tree and is
streamed through a torch DataLoader.

Shared options (:class:`DataConfig`), applied in this order:

1. class subsampling (``subsample_classes``): the same ``n`` classes in every split, chosen by ``class_sample_seed``
   from the sorted class list and relabelled ``0..n-1`` in the chosen order;
2. validation split (``split`` in (0, 1)): a seeded random split of the training set (``stratified`` keeps class
   proportions); the validation part is evaluated with test-time transforms and clean labels;
3. label noise (``noise`` in [0, 1]): each training-split label is corrupted with probability ``noise`` (seeded by
   ``noise_seed``); a corrupted label always differs from the true one: (y + k) mod K, k uniform in 1..K-1;
4. pixel shuffle (``pixel_shuffle``): each training-split sample gets its own fixed permutation of pixel positions
   (any image size), applied after augmentation and normalization, identically across channels;
5. augmentation (random crop with padding, horizontal flip) on training batches, as batched tensor ops;
6. normalization: ``channel`` (per-channel mean/std of the dataset, or ``mean``/``std`` overrides), ``gcn``
   (global contrast normalization per image), or ``none``.
"""
from __future__ import annotations

import gzip
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import UsageError, check
from shared.registry import Registry

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


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
# Raw arrays and the registry


@dataclass
class RawSplit:
    """Un-normalized data of one split: images as uint8 (N, C, H, W) or float features, integer or float targets."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass
class DatasetSpec:
    name: str
    num_classes: int  # output size (1 for the synthetic regression sets)
    task: str  # classification | regression
    mean: tuple[float, ...]
    std: tuple[float, ...]
    load: Callable[[DataConfig], tuple[RawSplit, RawSplit, list[str]]] | None = None  # in-memory loader
    stream: Callable[[DataConfig], tuple] | None = None  # streaming loader (ImageNet)
    provide_hint: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.register(spec.name, spec, task=spec.task)


def _missing(name: str, where: Path | str, hint: str) -> UsageError:
    return UsageError(f"dataset {name} not found under {where}; {hint}")


def _torchvision_split(cls, name: str, hint: str, root: Path, cfg: DataConfig, **kw):
    try:
        tr = cls(str(root), train=True, download=cfg.download, **kw)
        te = cls(str(root), train=False, download=cfg.download, **kw)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise _missing(name, root, hint) from e
    except OSError as e:  # download attempted without network
        raise UsageError(f"dataset {name} could not be downloaded ({type(e).__name__}); {hint}") from e
    return tr, te


def _mnist_like(cls_name: str, name: str, hint: str, system_dir: Path | None = None):
    def load(cfg: DataConfig):
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        root = Path(cfg.data_path).expanduser()
        raw = root / cls_name / "raw"
        if system_dir is not None and not (raw / "t10k-labels-idx1-ubyte").exists() and system_dir.is_dir():
            root = _unpack_idx_gz(system_dir, cls_name)
        tr, te = _torchvision_split(cls, name, hint, root, cfg)
        x_tr, x_te = tr.data.unsqueeze(1).contiguous(), te.data.unsqueeze(1).contiguous()
        return RawSplit(x_tr, tr.targets.long()), RawSplit(x_te, te.targets.long()), list(tr.classes)

    return load


def _cache_dir() -> Path:
    return Path(os.environ.get("GEOMLAB_CACHE", Path.home() / ".cache" / "geomlab"))


def _unpack_idx_gz(src: Path, cls_name: str) -> Path:
    """Decompress a directory of ``*-idx?-ubyte.gz`` files into the layout torchvision reads (root/<Class>/raw)."""
    root = _cache_dir() / "torchvision"
    raw = root / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in src.glob("*-ubyte.gz"):
        dst = raw / gz.name[:-3]
        if not dst.exists():
            tmp = dst.with_suffix(".tmp")
            with gzip.open(gz, "rb") as fi, open(tmp, "wb") as fo:
                shutil.copyfileobj(fi, fo)
            os.replace(tmp, dst)
    return root


def _cifar(cls_name: str, name: str, hint: str):
    def load(cfg: DataConfig):
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        if not cfg.verify_checksums:
            # Same reader, without the md5 checks: for re-packed or sub-sampled files in the exact CIFAR format.
            cls = type(cls_name + "Unverified", (cls,), {
                "train_list": [[n, None] for n, _ in cls.train_list],
                "test_list": [[n, None] for n, _ in cls.test_list],
                "meta": {**cls.meta, "md5": None},
            })
        root = Path(cfg.data_path).expanduser()
        try:
            tr, te = _torchvision_split(cls, name, hint, root, cfg)
        except UsageError:
            folder = root / cls.base_folder
            if folder.is_dir() and cfg.verify_checksums and any(folder.iterdir()):
                raise UsageError(f"dataset {name}: files under {folder} fail torchvision's md5 check (corrupted, or "
                                 "not the official files); re-download them, or pass --no-verify-checksums to read "
                                 "them anyway") from None
            raise
        to_t = lambda d: torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2)))
        return (RawSplit(to_t(tr), torch.as_tensor(tr.targets).long()),
                RawSplit(to_t(te), torch.as_tensor(te.targets).long()), list(tr.classes))

    return load


def _load_digits(cfg: DataConfig):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0, 1)
    x = (x * 255).round_().to(torch.uint8)
    y = torch.from_numpy(d.target).long()
    i_tr, i_te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    return RawSplit(x[i_tr], y[i_tr]), RawSplit(x[i_te], y[i_te]), [str(i) for i in range(10)]


def sin_dataset(n: int, c: float, max_rounds: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-D 'sin' regression set of the depth-limit thesis: x in [-sqrt(K), sqrt(K)], y = sin(pi x / sqrt(K)).

    K = exp(-4c) / (8 n). Points start at 1 and are resampled uniformly in [-sqrt(K), sqrt(K)] while they are
    'outliers' (|x| > sqrt(K), or x_i x_j >= K for some j, j = i included), at most ``max_rounds`` times; the
    survivors form the data set (so it can hold fewer than ``n`` points, exactly as the original).
    """
    g = torch.Generator().manual_seed(seed)
    k = math.exp(-4 * c) / (8 * n)
    r = math.sqrt(k)
    x = torch.ones(n, dtype=torch.float64)
    out = torch.ones(n, dtype=torch.bool)
    for _ in range(max_rounds):
        if not out.any():
            break
        x[out] = (torch.rand(int(out.sum()), generator=g, dtype=torch.float64) * 2 - 1) * r
        # x_i * x_j >= K for some j  <=>  x_i * max_j x_j >= K (x_i > 0) or x_i * min_j x_j >= K (x_i < 0)
        prod_max = torch.maximum(x * x.max(), x * x.min())
        out = (x.abs() > r) | (prod_max >= k)
    keep = ~out
    xs = x[keep].float().unsqueeze(1)
    return xs, torch.sin(math.pi * xs / r)


def _load_sin(cfg: DataConfig):
    x, y = sin_dataset(cfg.num_samples, cfg.synthetic_c, seed=cfg.split_seed)
    return _synthetic_split(x, y, cfg)


def _load_constant(cfg: DataConfig):
    g = torch.Generator().manual_seed(cfg.split_seed)
    x = torch.rand(cfg.num_samples, 1, generator=g) * 2 - 1
    return _synthetic_split(x, torch.full_like(x, cfg.synthetic_c), cfg)


def _synthetic_split(x, y, cfg: DataConfig):
    """The original's 90/10 random split of the synthetic sets (seeded by ``split_seed``)."""
    g = torch.Generator().manual_seed(cfg.split_seed)
    perm = torch.randperm(len(x), generator=g)
    n_tr = int(round(0.9 * len(x)))
    return RawSplit(x[perm[:n_tr]], y[perm[:n_tr]]), RawSplit(x[perm[n_tr:]], y[perm[n_tr:]]), []


_GET = "download the files on a machine with network, or pass --download"
register_dataset(DatasetSpec("mnist", 10, "classification", (0.1307,), (0.3081,),
                             load=_mnist_like("MNIST", "mnist", f"put the four idx files under <data-path>/MNIST/raw/ "
                                              f"(uncompressed); {_GET}")))
register_dataset(DatasetSpec("fashion_mnist", 10, "classification", (0.2860,), (0.3530,),
                             load=_mnist_like("FashionMNIST", "fashion_mnist",
                                              "put the four idx files under <data-path>/FashionMNIST/raw/, or install "
                                              f"Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist); {_GET}",
                                              system_dir=FASHION_MNIST_SYSTEM_DIR)))
register_dataset(DatasetSpec("kmnist", 10, "classification", (0.1904,), (0.3475,),
                             load=_mnist_like("KMNIST", "kmnist", f"put the four idx files under <data-path>/KMNIST/raw/; {_GET}")))
register_dataset(DatasetSpec("cifar10", 10, "classification", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                             load=_cifar("CIFAR10", "cifar10", "extract cifar-10-python.tar.gz into <data-path> "
                                         f"(giving <data-path>/cifar-10-batches-py/); {_GET}")))
register_dataset(DatasetSpec("cifar100", 100, "classification", (0.5071, 0.4865, 0.4409), (0.2009, 0.1984, 0.2023),
                             load=_cifar("CIFAR100", "cifar100", "extract cifar-100-python.tar.gz into <data-path> "
                                         f"(giving <data-path>/cifar-100-python/); {_GET}")))
register_dataset(DatasetSpec("digits", 10, "classification", (0.3054,), (0.3247,), load=_load_digits))  # train-split stats
register_dataset(DatasetSpec("sin", 1, "regression", (0.0,), (1.0,), load=_load_sin))
register_dataset(DatasetSpec("constant", 1, "regression", (0.0,), (1.0,), load=_load_constant))


# --------------------------------------------------------------------------------------------------------------
# Batched transforms


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """Per-sample random crop (zero padding ``padding``) and horizontal flip of a batch, as tensor ops."""
    b, c, h, w = x.shape
    if padding > 0:
        xp = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen)
        rows = (oy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, None, :]
        x = xp[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        m = torch.rand(b, generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x


def gcn(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Global contrast normalization per image: zero mean, unit standard deviation over all its values."""
    flat = x.reshape(x.shape[0], -1)
    mu = flat.mean(1, keepdim=True)
    sd = flat.std(1, unbiased=False, keepdim=True).clamp_min(eps)
    return ((flat - mu) / sd).reshape(x.shape)


@dataclass
class Transform:
    """What turns stored samples into model inputs; identical for a batch of any size."""

    normalize: str
    mean: torch.Tensor | None
    std: torch.Tensor | None
    augment: bool = False
    padding: int = 4
    flip: bool = True

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if self.augment and x.dim() == 4:
            x = random_crop_flip(x, gen, self.padding, self.flip)
        if self.normalize == "channel" and self.mean is not None:
            x = (x - self.mean) / self.std
        elif self.normalize == "gcn":
            x = gcn(x)
        return x


# --------------------------------------------------------------------------------------------------------------
# Loaders


class TensorLoader:
    """Batches of an in-memory split, drawn by index. Iterating yields ``(x, y)``; ``indices`` yields with index.

    The permutation, augmentation and nothing else use ``self.generator``; its state is saved in snapshots so that a
    resumed run draws exactly the batches the uninterrupted run would have drawn.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, transform: Transform, *,
                 shuffle: bool = False, seed: int = 0, perms: torch.Tensor | None = None, drop_last: bool = False):
        self.x, self.y, self.batch_size, self.transform = x, y, batch_size, transform
        self.shuffle, self.perms, self.drop_last = shuffle, perms, drop_last
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, _ in self.with_indices():
            yield x, y

    def with_indices(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for s in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[s:s + self.batch_size]
            x = self.transform(self.x[idx], self.generator)
            if self.perms is not None:
                x = apply_pixel_permutations(x, self.perms[idx])
            yield x, self.y[idx], idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def apply_pixel_permutations(x: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """out[b, c, p] = x[b, c, perms[b, p]] over flattened pixel positions p (the same for every channel)."""
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)
    idx = perms.long()[:, None, :].expand(b, c, flat.shape[-1])
    return flat.gather(2, idx).reshape(x.shape)


def pixel_permutations(n: int, num_pixels: int, seed: int) -> torch.Tensor:
    """One fixed random permutation of ``num_pixels`` positions per sample (int16 when it fits)."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.int16 if num_pixels <= 32767 else torch.int32
    out = torch.empty(n, num_pixels, dtype=dtype)
    for s in range(0, n, 4096):  # chunked: bounded temporary memory
        m = min(4096, n - s)
        out[s:s + m] = torch.rand(m, num_pixels, generator=g).argsort(1).to(dtype)
    return out


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
    elif cfg.noise or cfg.subsample_classes or cfg.pixel_shuffle:
        raise UsageError(f"--noise, --pixel-shuffle and --subsample-classes apply to classification sets, "
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


# --------------------------------------------------------------------------------------------------------------
# ImageNet: an ImageFolder tree, streamed


class StreamLoader:
    """A torch DataLoader over an indexable dataset, with the same interface as :class:`TensorLoader`."""

    def __init__(self, dataset, batch_size: int, *, shuffle: bool, seed: int, num_workers: int, labels=None,
                 perms=None, normalize: Transform | None = None):
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.num_workers, self.labels, self.perms, self.transform = num_workers, labels, perms, normalize
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        for x, y, _ in self.with_indices():
            yield x, y

    def with_indices(self):
        from torch.utils.data import DataLoader

        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        batches = [order[s:s + self.batch_size].tolist() for s in range(0, n, self.batch_size)]
        dl = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers)
        for (x, y), idx in zip(dl, batches):
            idx = torch.tensor(idx)
            if self.labels is not None:
                y = self.labels[idx]
            if self.transform is not None:
                x = self.transform(x, None)
            if self.perms is not None:
                x = apply_pixel_permutations(x, self.perms[idx])
            yield x, y, idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def _imagenet_stream(cfg: DataConfig, seed: int) -> Data:
    from torch.utils.data import Subset
    from torchvision import datasets, transforms as T

    root = Path(cfg.data_path).expanduser()
    train_dir, val_dir = root / "train", root / "val"
    if not (train_dir.is_dir() and val_dir.is_dir()):
        raise _missing("imagenet", root, "ImageNet is read as an ImageFolder tree: put the class folders under "
                       "<data-path>/train/ and <data-path>/val/ (torchvision does not download ImageNet)")
    size = cfg.resize or 224
    mean, std = cfg.mean or (0.485, 0.456, 0.406), cfg.std or (0.229, 0.224, 0.225)
    aug = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()] if cfg.augmentation else \
        [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
    ev = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
    tr_ds = datasets.ImageFolder(str(train_dir), T.Compose(aug + [T.ToTensor()]))
    tr_eval_ds = datasets.ImageFolder(str(train_dir), T.Compose(ev + [T.ToTensor()]))
    te_ds = datasets.ImageFolder(str(val_dir), T.Compose(ev + [T.ToTensor()]))
    num_classes = len(tr_ds.classes)
    names = list(tr_ds.classes)
    info: dict = {}

    def targets(ds):
        return torch.tensor(ds.targets, dtype=torch.long)

    y_tr, y_te = targets(tr_ds), targets(te_ds)
    idx_tr, idx_te = torch.arange(len(y_tr)), torch.arange(len(y_te))
    relabel = None
    if cfg.subsample_classes:
        keep = select_classes(num_classes, cfg.subsample_classes, cfg.class_sample_seed)
        relabel = torch.full((num_classes,), -1, dtype=torch.long)
        relabel[torch.tensor(keep)] = torch.arange(len(keep))
        idx_tr, idx_te = idx_tr[relabel[y_tr] >= 0], idx_te[relabel[y_te] >= 0]
        names, num_classes = [names[k] for k in keep], len(keep)
        info["classes_kept"] = keep
    lab_tr = (relabel[y_tr] if relabel is not None else y_tr)[idx_tr]
    lab_te = (relabel[y_te] if relabel is not None else y_te)[idx_te]
    val = None
    if cfg.split:
        i_tr, i_va = validation_split(lab_tr, cfg.split, cfg.split_seed, cfg.stratified)
        val = StreamLoader(Subset(tr_eval_ds, idx_tr[i_va].tolist()), cfg.eval_batch_size, shuffle=False, seed=0,
                           num_workers=cfg.num_workers, labels=lab_tr[i_va])
        idx_tr, lab_tr = idx_tr[i_tr], lab_tr[i_tr]
    if cfg.noise > 0:
        lab_tr, mask = corrupt_labels(lab_tr, num_classes, cfg.noise, cfg.noise_seed)
        info["noisy_labels"] = int(mask.sum())
    perms = pixel_permutations(len(lab_tr), size * size, cfg.noise_seed) if cfg.pixel_shuffle else None
    norm = Transform(cfg.normalize, torch.tensor(mean).reshape(-1, 1, 1), torch.tensor(std).reshape(-1, 1, 1))
    if val is not None:
        val.transform = norm
    mk = lambda ds, idx, labels, bs, sh, p=None: StreamLoader(Subset(ds, idx.tolist()), bs, shuffle=sh, seed=seed,
                                                              num_workers=cfg.num_workers, labels=labels, perms=p,
                                                              normalize=norm)
    train = mk(tr_ds, idx_tr, lab_tr, cfg.batch_size, cfg.shuffle, perms)
    train_eval = mk(tr_eval_ds, idx_tr, lab_tr, cfg.eval_batch_size, False, perms)
    test = mk(te_ds, idx_te, lab_te, cfg.eval_batch_size, False)
    info.update(train_size=len(lab_tr), test_size=len(lab_te), val_size=0 if val is None else len(val.dataset))
    return Data(cfg, DATASETS.get("imagenet"), num_classes, (3, size, size), train, test, val, train_eval, names, info)


register_dataset(DatasetSpec("imagenet", 1000, "classification", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                             stream=_imagenet_stream))
