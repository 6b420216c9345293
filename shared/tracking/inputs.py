"""Datasets as MLflow entities: one MLflow dataset per split of a :class:`shared.data.Data` (``mlflow.log_inputs``),
its digest computed from the arrays (or files) it holds, and the input example of a logged model."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any


DATA_OPTIONS = ("noise", "noise_seed", "pixel_shuffle", "subsample_classes", "class_sample_seed", "split",
                "stratified", "split_seed", "train_fraction", "resize", "channels", "normalize", "augmentation")
EMBEDDED = ("digits", "sin", "constant")


def _split_digest(loader) -> str:
    """sha256 of a split's actual arrays (images, labels, pixel permutations), or of its file list when streamed."""
    h = hashlib.sha256()
    x, y = getattr(loader, "x", None), getattr(loader, "y", None)
    if x is not None and y is not None:
        for t in (x, y, getattr(loader, "perms", None)):
            if t is not None:
                h.update(str((tuple(t.shape), str(t.dtype))).encode())
                h.update(t.contiguous().cpu().numpy().tobytes())
    else:  # streamed (ImageFolder subset): the files and labels it reads
        ds = getattr(loader, "dataset", None)
        base = getattr(ds, "dataset", ds)
        idx = getattr(ds, "indices", range(len(getattr(base, "samples", []))))
        samples = getattr(base, "samples", [])
        for i in idx:
            path, _ = samples[i]
            with contextlib.suppress(OSError):
                h.update(f"{path}:{os.path.getsize(path)}".encode())
        if getattr(loader, "labels", None) is not None:
            h.update(loader.labels.numpy().tobytes())
    return h.hexdigest()[:16]


def data_inputs(data) -> list[tuple[Any, str, dict]]:
    """The MLflow datasets (one per split: training, validation, test) of a :class:`shared.data.Data`, with their
    context and input tags; digests are cached on the object (a sweep reuses it)."""
    cached = getattr(data, "_mlflow_inputs", None)
    if cached is not None:
        return cached
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset import Dataset
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    cfg = data.config
    if cfg.dataset in EMBEDDED:
        source = CodeDatasetSource({"mlflow.source.name": f"shared.data:{cfg.dataset}", "embedded": "true"})
    else:
        source = resolve_dataset_source(str(Path(cfg.data_path).expanduser().resolve()))

    class SplitDataset(Dataset):
        """One split of a geomlab dataset: the digest is computed from the arrays it holds."""

        def __init__(self, name, digest, profile):
            self._profile = profile
            super().__init__(source=source, name=name, digest=digest)

        def _compute_digest(self) -> str:  # always given
            return self._digest

        @property
        def profile(self):
            return self._profile

        @property
        def schema(self):
            return None

        def to_dict(self) -> dict:
            d = super().to_dict()
            d["profile"] = json.dumps(self._profile)
            return d

    options = {f"data.{k}": str(getattr(cfg, k)) for k in DATA_OPTIONS if hasattr(cfg, k)}
    out = []
    for context, loader in (("training", data.train), ("validation", data.val), ("test", data.test)):
        if loader is None:
            continue
        n = int(getattr(loader, "num_samples", 0))
        profile = {"num_rows": n, "input_shape": "x".join(map(str, data.input_shape)),
                   "num_classes": data.num_classes, **{k: v for k, v in data.info.items() if k.endswith("_size")}}
        ds = SplitDataset(cfg.dataset, _split_digest(loader), profile)
        out.append((ds, context, {"split_size": str(n), **options}))
    data._mlflow_inputs = out
    return out


def example_batch(data, n: int = 2):
    """``n`` inputs of the test split (test-time transforms): the input example of a logged model."""
    x, _ = next(iter(data.test))
    return x[:n]
