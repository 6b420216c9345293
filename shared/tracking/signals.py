"""Signals: SIGTERM (schedulers, preemption) is handled like Ctrl-C, so that runs end KILLED (exit code 143)."""
from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM; ends runs KILLED like Ctrl-C, exit code 143."""

    exit_code = 143


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def install_sigterm_handler() -> None:
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread; installed once, and only where
    nobody installed another handler."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _on_sigterm)
