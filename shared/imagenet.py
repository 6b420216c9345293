"""ImageNet, or any ImageFolder tree: streamed through a torch DataLoader with the shared data options (class
subsampling, validation split, label noise) applied to the file lists."""
from __future__ import annotations

import math
from pathlib import Path

import torch


from shared.data import Data, DataConfig, corrupt_labels, select_classes, validation_split
from shared.datasets import DATASETS, _missing
from shared.loaders import Transform, apply_pixel_permutations, pixel_permutations

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


def imagenet_stream(cfg: DataConfig, seed: int) -> Data:
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


