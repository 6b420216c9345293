"""Matplotlib without a display; figures saved atomically and logged as PNG artifacts."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shared.files import atomic_write  # noqa: E402


def new_figure(*args, **kwargs):
    """``plt.subplots`` with the Agg backend; returns (fig, axes)."""
    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str | os.PathLike, tracker=None, artifact_path: str = "figures", dpi: int = 120) -> Path:
    """Write ``fig`` as PNG (atomically), log it under ``artifact_path`` when a tracker is given, close it."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    plt.close(fig)
    if tracker is not None:
        tracker.log_artifact(path, artifact_path)
    return path
