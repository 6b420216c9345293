"""The dataset registry: every dataset by name, read from its real on-disk format (torchvision's loaders, scikit-learn's
digits, the synthetic sets of the depth-limit thesis) into raw tensors, with one-line errors that say where the files
go. ImageNet (an ImageFolder tree) is streamed instead: see :mod:`shared.imagenet`."""
from __future__ import annotations

import gzip
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import UsageError
from shared.files import atomic_write, cache_dir
from shared.registry import Registry

if TYPE_CHECKING:
    from shared.data import DataConfig

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


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


def _unpack_idx_gz(src: Path, cls_name: str) -> Path:
    """Decompress a directory of ``*-idx?-ubyte.gz`` files into the layout torchvision reads (root/<Class>/raw)."""
    root = cache_dir() / "torchvision"
    raw = root / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in src.glob("*-ubyte.gz"):
        dst = raw / gz.name[:-3]
        if not dst.exists():
            tmp = dst.with_suffix(f".{os.getpid()}.tmp")  # processes starting together on a fresh cache
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
    tr, te = load_digits_split()
    return tr, te, [str(i) for i in range(10)]


def digits_cache_file() -> Path:
    from importlib.metadata import version

    return cache_dir() / f"digits-sklearn-{version('scikit-learn')}.pt"


def load_digits_split() -> tuple[RawSplit, RawSplit]:
    """scikit-learn's 8x8 digits, upsampled to 28x28 uint8, in a stratified 80/20 split (seed 0).

    Importing scikit-learn costs a process about 2 s, so the split is computed once per scikit-learn version and
    kept in the cache folder (a read of a few ms after that); a cache that cannot be read or written is ignored."""
    cached = digits_cache_file()
    try:
        t = torch.load(cached, weights_only=True)
        return RawSplit(t["x_tr"], t["y_tr"]), RawSplit(t["x_te"], t["y_te"])
    except Exception:  # noqa: BLE001 - missing, unreadable or damaged: rebuilt below
        pass
    tr, te = _digits_split()
    try:
        atomic_write(cached, lambda tmp: torch.save({"x_tr": tr.x, "y_tr": tr.y, "x_te": te.x, "y_te": te.y}, tmp))
    except OSError:
        pass
    return tr, te


def _digits_split() -> tuple[RawSplit, RawSplit]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0, 1)
    x = (x * 255).round_().to(torch.uint8)
    y = torch.from_numpy(d.target).long()
    i_tr, i_te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=d.target)
    return RawSplit(x[i_tr], y[i_tr]), RawSplit(x[i_te], y[i_te])


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




def _imagenet(cfg, seed):
    from shared.imagenet import imagenet_stream

    return imagenet_stream(cfg, seed)


register_dataset(DatasetSpec("imagenet", 1000, "classification", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                             stream=_imagenet))

