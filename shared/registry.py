"""One small registry class, used for every kind of pluggable thing (datasets, models, optimizers, schedules, ...)."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from shared.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table whose lookups fail with a one-line error listing what exists."""

    def __init__(self, kind: str, option: str | None = None):
        self.kind = kind
        self.option = option or f"--{kind}"
        self._items: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, obj: T | None = None, **meta: Any):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = o
            self._meta[name] = meta
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str | None) -> T:
        if not name:
            raise UsageError(f"no {self.kind} given; pass {self.option} with one of: {self.choices()}")
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"unknown {self.kind} {name!r}{hint}; pass {self.option} with one of: {self.choices()}")
        return self._items[name]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return self._meta[name]

    def names(self, **where: Any) -> list[str]:
        return [n for n in self._items if all(self._meta[n].get(k) == v for k, v in where.items())]

    def choices(self, **where: Any) -> str:
        return ", ".join(self.names(**where)) or "(none registered)"

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
