"""Writers of tiny datasets in the exact on-disk formats that torchvision's real loaders read; a callback that
counts training steps; copies of the session's migrated MLflow store."""
from __future__ import annotations

import contextlib
import pickle
import shutil
import sqlite3
import struct
from pathlib import Path

import numpy as np


def _idx(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim  # ubyte data, ndim dimensions
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in arr.shape:
            f.write(struct.pack(">I", d))
        f.write(arr.tobytes())


def write_mnist_like(root: Path, cls_name: str = "MNIST", n_train: int = 200, n_test: int = 50, size: int = 28,
                     num_classes: int = 10, seed: int = 0) -> Path:
    """Write root/<cls_name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed idx files).

    Images carry a class-dependent bright square so that a model can learn them."""
    rng = np.random.RandomState(seed)
    raw = Path(root) / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.randint(0, num_classes, size=n).astype(np.uint8)
        x = rng.randint(0, 60, size=(n, size, size)).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 4)
            x[i, 2 + 6 * r: 6 + 6 * r, 2 + 6 * col: 6 + 6 * col] = 250
        _idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
    return Path(root)


def write_cifar_like(root: Path, n_per_batch: int = 20, n_test: int = 40, seed: int = 0, num_classes: int = 10) -> Path:
    """Write root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} as CIFAR pickles."""
    rng = np.random.RandomState(seed)
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)

    def batch(n):
        y = rng.randint(0, num_classes, size=n)
        x = rng.randint(0, 60, size=(n, 3, 32, 32)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, c % 3, 4 * (c // 3): 4 * (c // 3) + 6, :] = 240
        return {"data": x.reshape(n, 3072), "labels": [int(v) for v in y], "batch_label": "synthetic"}

    for i in range(1, 6):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_per_batch), f)
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_per_batch}, f)
    return Path(root)


def step_counter():
    """A shared.train Callback counting the optimizer steps of every training loop it is attached to."""
    from shared.train import Callback

    class StepCounter(Callback):
        def __init__(self):
            self.steps = 0

        def on_step_end(self, trainer, loss, output, y):
            self.steps += 1

    return StepCounter()


def copy_store(template: Path, db: Path) -> Path:
    """A copy of the session's migrated SQLite store at ``db``. The Default experiment's artifact root is fixed when
    a store is created (./mlruns of that process): the copy's is ``db``'s folder's mlruns/0, not a folder every test
    shares (or the checkout, where pytest starts)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, db)
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    (str(db.parent / "mlruns" / "0"),))
        con.commit()
    return db


def store_runs(db: Path) -> list[tuple]:
    """(run id, status, name) of every run in a SQLite MLflow store, read directly (no MLflow client to start)."""
    con = sqlite3.connect(db)
    try:
        return con.execute("select run_uuid, status, name from runs").fetchall()
    finally:
        con.close()


def store_steps(db: Path, run_id: str, key: str = "train_loss") -> list[int]:
    """The sorted steps at which ``run_id`` logged ``key`` (repeats kept: a step logged twice shows twice)."""
    con = sqlite3.connect(db)
    try:
        return sorted(s for (s,) in con.execute("select step from metrics where run_uuid=? and key=?", (run_id, key)))
    finally:
        con.close()
