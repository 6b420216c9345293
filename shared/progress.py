"""Messages and progress, all on stderr (stdout stays free for results).

- :func:`say`: one message line.
- :func:`progress_bar`: Rich bars when stderr is a terminal; when it is not (a cluster job's log, a pipe), one line
  per finished unit of work (epoch, trial, variant, landscape cell) so that the log shows where a job is; nothing
  when disabled (``show=False`` or ``GEOMLAB_NO_PROGRESS`` set).

A bar has ``add_task(description, total=, completed=, quiet=)`` (a ``quiet`` task, such as the batches inside an
epoch, moves the terminal bar but prints no lines), ``advance(task)``, ``update(task, detail=, description=,
total=, completed=)`` and ``reset(task, total=)``. ``detail`` is free text shown after the counts (metrics).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator


def say(msg: str) -> None:
    """One message line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def enabled(flag: bool = True) -> bool:
    return flag and not os.environ.get("GEOMLAB_NO_PROGRESS")


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Silent:
    def add_task(self, *a, **k) -> int:
        return 0

    def advance(self, *a, **k) -> None: ...

    def update(self, *a, **k) -> None: ...

    def reset(self, *a, **k) -> None: ...


class _Lines:
    """The log form of a bar: a line on stderr each time a (non-quiet) task advances."""

    def __init__(self) -> None:
        self.tasks: list[dict] = []

    def add_task(self, description: str, total: int | None = None, completed: int = 0, quiet: bool = False,
                 detail: str = "") -> int:
        self.tasks.append({"description": description, "total": total, "completed": completed, "quiet": quiet,
                           "detail": detail, "t0": time.perf_counter()})
        return len(self.tasks) - 1

    def update(self, task: int, **fields) -> None:
        self.tasks[task].update({k: v for k, v in fields.items() if v is not None})

    def reset(self, task: int, total: int | None = None, **fields) -> None:
        self.update(task, total=total, completed=0, **fields)

    def advance(self, task: int, advance: int = 1) -> None:
        t = self.tasks[task]
        t["completed"] += advance
        if t["quiet"]:
            return
        count = f"{t['completed']}/{t['total']}" if t["total"] is not None else str(t["completed"])
        detail = f" {t['detail']}" if t["detail"] else ""
        say(f"{t['description']} {count}{detail} ({time.perf_counter() - t['t0']:.1f} s)")


class _Rich:
    """Rich bars on stderr, with the same calls as :class:`_Lines`."""

    def __init__(self, progress) -> None:
        self.p = progress

    def add_task(self, description: str, total: int | None = None, completed: int = 0, quiet: bool = False,
                 detail: str = "") -> int:
        return self.p.add_task(description, total=total, completed=completed, detail=detail)

    def update(self, task: int, **fields) -> None:
        known = {k: v for k, v in fields.items() if k in ("description", "total", "completed") and v is not None}
        extra = {k: v for k, v in fields.items() if k not in known and v is not None}
        self.p.update(task, **known, **extra)

    def reset(self, task: int, total: int | None = None, **fields) -> None:
        self.p.reset(task, total=total, **fields)

    def advance(self, task: int, advance: int = 1) -> None:
        self.p.advance(task, advance)


@contextlib.contextmanager
def progress_bar(show: bool = True) -> Iterator:
    """A progress display for the current stderr (see the module docstring)."""
    if not enabled(show):
        yield _Silent()
        return
    if not stderr_is_terminal():
        yield _Lines()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[detail]}"), console=Console(stderr=True),
                  transient=True, refresh_per_second=4) as p:
        yield _Rich(p)
