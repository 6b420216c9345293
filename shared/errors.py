"""User-facing errors.

Anything the user can fix (bad option, missing data, wrong snapshot) raises :class:`UsageError` with a one-line
message that says what is wrong and how to fix it. The CLI prints ``error: <message>`` and exits with code 2,
without a traceback.
"""
from __future__ import annotations


class UsageError(Exception):
    """A problem with the user's input; the message says what is wrong and how to fix it."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


def check(condition: bool, message: str) -> None:
    """Raise :class:`UsageError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UsageError(message)


class InvalidPoint(UsageError):
    """Options that are each valid but do not make a valid configuration together (e.g. a feature_amounts variant
    that the original's rules reject). A sweep records such a trial as invalid and samples another one: it does not
    count towards ``--n-trials`` nor as a failure."""

    def __init__(self, message: str, violation: float = 1.0):
        super().__init__(message)
        self.violation = violation  # > 0: how far from a valid point (a sweep's constraint value for its sampler)
