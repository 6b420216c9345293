"""Comma-separated option values, parsed once for every command (``--epochs 0,10,20``, ``--steps a,b``)."""
from __future__ import annotations

from typing import Iterable

from shared.errors import UsageError


def split_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``; None or "" -> []."""
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def parse_int_list(text: str | None, option: str, example: str = "0,10,20") -> list[int] | None:
    """Comma-separated integers (None when nothing is given); anything else is a one-line error naming ``option``."""
    items = split_list(text)
    if not items:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers such as {example}; got {text!r}") from None


def parse_choices(text: str | None, choices: Iterable[str], what: str) -> list[str]:
    """Comma-separated names, each one of ``choices``; an unknown name is an error that lists the valid ones."""
    choices = list(choices)
    items = split_list(text)
    unknown = [v for v in items if v not in choices]
    if unknown:
        raise UsageError(f"unknown {what}(s) {', '.join(unknown)}; use: {', '.join(choices)}")
    return items
