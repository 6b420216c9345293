"""Progress bars (rich) for long loops; silent when disabled or when GEOMLAB_NO_PROGRESS is set."""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class _Silent:
    def add_task(self, *a, **k) -> int:
        return 0

    def advance(self, *a, **k) -> None: ...

    def update(self, *a, **k) -> None: ...

    def reset(self, *a, **k) -> None: ...


def enabled(flag: bool = True) -> bool:
    return flag and not os.environ.get("GEOMLAB_NO_PROGRESS")


@contextlib.contextmanager
def progress_bar(show: bool = True) -> Iterator:
    """A rich Progress (or a silent stand-in) with the usual columns; ``add_task``/``advance``/``update``."""
    if not enabled(show):
        yield _Silent()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), transient=True, refresh_per_second=4) as p:
        yield p


def track(items: Iterable[T], description: str, total: int | None = None, show: bool = True) -> Iterator[T]:
    """Iterate with a progress bar."""
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    with progress_bar(show) as bar:
        task = bar.add_task(description, total=total if total is not None else len(items))  # type: ignore[arg-type]
        for it in items:
            yield it
            bar.advance(task)
