"""Batched tensor transforms (crop + flip augmentation, normalization, pixel permutations) and the in-memory loader
that batches a dataset by index in the training process (no worker processes, no per-sample Python)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F



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


