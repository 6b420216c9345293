"""Interrupts: SIGINT (Ctrl-C) and SIGTERM (schedulers, preemption) request a stop; the work stops at a safe point.

The one home of signal handling in geomlab. Every long-running command (training, distillation, the analyses,
landscape renders, sweeps, studies, MPI ranks) runs under :func:`install`:

- A signal only records that a stop was requested (and says so on stderr). The handler raises nothing, so a signal
  can never cut a ``torch.save``, an MLflow batch, an Optuna state change or a garbage-collection callback.
- The work calls :func:`check` at its safe points: between batches, nesting pairs, landscape cells, snapshots,
  trials and study children. There the request becomes :class:`Interrupted` (a ``KeyboardInterrupt``), which ends
  runs KILLED and the process with 130 (SIGINT) or 143 (SIGTERM). With an MPI communicator every rank stops at the
  same safe point (the request is shared by an allreduce), so no rank is left waiting in a collective.
- :func:`critical` marks work that is never cut: a check inside it waits for the section's end.
- A second signal within :data:`GRACE_S` seconds of the first stops at once: the handler raises there, unless a
  critical section is open, in which case the section's end raises. The first signal never raises in the handler.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Any, Iterator

#: A repeated signal within this many seconds of the previous one stops at once (outside critical sections).
GRACE_S = 5.0

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class Interrupted(KeyboardInterrupt):
    """A requested stop reached a safe point. ``exit_code`` is 128 + the signal number (130 SIGINT, 143 SIGTERM)."""

    signum: int = signal.SIGINT

    def __init__(self, signum: int | None = None):
        super().__init__()
        if signum is not None:
            self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    @property
    def signal_name(self) -> str:
        return _NAMES.get(self.signum, f"signal {self.signum}")


class Terminated(Interrupted):
    """The stop that SIGTERM requested (exit code 143)."""

    signum = signal.SIGTERM


def interrupted(signum: int) -> Interrupted:
    return Terminated() if signum == signal.SIGTERM else Interrupted(signum)


def signal_name(e: BaseException) -> str:
    """SIGINT or SIGTERM: which signal a KeyboardInterrupt stands for (a plain one is Ctrl-C)."""
    return e.signal_name if isinstance(e, Interrupted) else "SIGINT"


def exit_code(e: BaseException) -> int:
    return e.exit_code if isinstance(e, Interrupted) else 130


class _State:
    """The process's stop request (signals are process state: one instance, :data:`_state`)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal of the request
        self.last = 0.0  # monotonic time of the latest signal
        self.urgent = False  # a repeated signal arrived inside a critical section: its end raises
        self.depth = 0  # open critical sections (main thread)
        self.installed = False


_state = _State()


def _write(msg: str) -> None:
    # os.write, not print: the handler may run while the main thread is inside a print to stderr
    with contextlib.suppress(OSError):
        os.write(2, (msg + "\n").encode())


def _handler(signum, frame) -> None:  # noqa: ARG001
    now = time.monotonic()
    st = _state
    name = _NAMES.get(signum, str(signum))
    if st.signum is None:
        st.signum, st.last = signum, now
        _write(f"stop requested ({name}): stopping at the next safe point (finished work is kept); "
               f"send it again within {GRACE_S:g} s to stop at once")
        return
    again, st.last = now - st.last <= GRACE_S, now
    if not again:
        _write(f"stop already requested ({_NAMES.get(st.signum, st.signum)}): stopping at the next safe point; "
               f"send it twice within {GRACE_S:g} s to stop at once")
        return
    if st.depth > 0:
        st.urgent = True  # never inside a critical section: the section's end raises
        return
    raise interrupted(st.signum)  # the escalation the user asked for, outside every critical section


def install() -> None:
    """Handle SIGINT and SIGTERM as stop requests in this process (main thread only; idempotent). A signal that the
    process was started with ignored (``nohup``) stays ignored, and a handler that someone else installed is kept."""
    if _state.installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in _SIGNALS:
        current = signal.getsignal(sig)
        if current in (signal.SIG_DFL, signal.default_int_handler, None):
            signal.signal(sig, _handler)
    _state.installed = True


def uninstall() -> None:
    """Restore the default dispositions (tests and embedding programs); clears any pending request."""
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            if signal.getsignal(sig) is _handler:
                signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)
    reset()
    _state.installed = False


def reset() -> None:
    """Forget a pending stop request (a new piece of work in the same process, e.g. an in-process test)."""
    _state.signum, _state.urgent, _state.last = None, False, 0.0


def request(signum: int = signal.SIGINT) -> None:
    """Request a stop as a signal would (used by code that learns of a stop otherwise, and by tests)."""
    if _state.signum is None:
        _state.signum, _state.last = signum, time.monotonic()


def requested() -> int | None:
    """The signal number of a pending stop request, else None."""
    return _state.signum


def check(comm: Any = None) -> None:
    """A safe point: raise :class:`Interrupted` if a stop was requested (not inside a critical section).

    With an MPI communicator of several ranks this is a collective (every rank must call it the same number of
    times): the request of any rank stops all of them here."""
    signum = _state.signum
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        signum = comm.allreduce(signum or 0, op=MPI.MAX) or None
        if signum is not None:
            request(signum)
    if signum is not None and _state.depth == 0:
        raise interrupted(signum)


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """Work that a signal never cuts (a snapshot or JSON write, an MLflow batch, an Optuna state change). Checks
    inside wait for its end; a repeated signal that asks to stop at once raises when the outermost section ends."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        _state.depth += 1
    try:
        yield
    finally:
        if main:
            _state.depth -= 1
            if _state.depth == 0 and _state.urgent:
                _state.urgent = False
                if sys.exc_info()[1] is None:  # not while another exception is on its way out
                    raise interrupted(_state.signum or signal.SIGINT)
