"""Stopping on Ctrl-C (SIGINT) or SIGTERM without losing or corrupting progress.

The first signal only asks for a stop: stage pools hand out no more runs, and runs in flight end at their next
checkpoint (`checkpoint()` raises `RunStopped` there) or are marked `interrupted` after a grace period. The
second signal ends the process at once. A stop is a property of the process (signals are), so the flag is one
process-wide event; it is cleared when the outermost `handling_signals` call begins.

Nothing happens on import: handlers are installed only for the duration of a `handling_signals` call, and only
when it runs in the main thread (the only thread Python lets install them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODE = 130
DEFAULT_GRACE_SECONDS = 5.0


class RunStopped(BaseException):
    """Raised inside a worker once a stop was requested, so the run unwinds from a safe point.

    A BaseException so that a target's or a client library's `except Exception` cannot turn it into a failure.
    """


class _Stop:
    def __init__(self) -> None:
        self._event = threading.Event()
        self.signals = 0
        # Workers still inside a run when the grace period ran out: the target and the ledger must stay usable.
        self.stragglers = False

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()
        self.signals = 0
        self.stragglers = False

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


STOP = _Stop()

# Called by the second signal before the process ends, so that no ledger row stays `running` if avoidable.
_last_words: list[Callable[[], None]] = []
_exit_at_once = False
_depth = 0


def requested() -> bool:
    """Whether a stop was asked for: stages stop handing out runs."""
    return STOP.requested


def request_stop() -> None:
    """Ask for a stop as the first Ctrl-C does (also for callers that stop a migration from another thread)."""
    STOP.request()


def checkpoint() -> None:
    """A safe point inside a run (its progress is saved): unwind with `RunStopped` if a stop was asked for."""
    if STOP.requested:
        raise RunStopped


def grace_seconds() -> float:
    """How long runs in flight get to reach a checkpoint after the first signal."""
    try:
        return max(0.0, float(os.environ.get("NEPTUNE_MIGRATION_STOP_GRACE", DEFAULT_GRACE_SECONDS)))
    except ValueError:
        return DEFAULT_GRACE_SECONDS


def exit_at_once_on_second_signal() -> None:
    """For the command line: a second signal ends the process (exit 130) instead of raising KeyboardInterrupt,
    which would wait for worker threads and for the target's uploads before the interpreter could exit."""
    global _exit_at_once
    _exit_at_once = True


def on_hard_exit(fn: Callable[[], None]) -> Callable[[], None]:
    """Register a best-effort cleanup for the second signal; returns a function that unregisters it."""
    _last_words.append(fn)
    return lambda: _last_words.remove(fn) if fn in _last_words else None


def _handle(signum: int, _frame: FrameType | None) -> None:
    STOP.signals += 1
    if STOP.signals == 1:
        STOP.request()
        sys.stderr.write("\nstopping: finishing runs in flight (press Ctrl-C again to quit at once)\n")
        sys.stderr.flush()
        return
    if not _exit_at_once:
        raise KeyboardInterrupt
    for fn in list(_last_words):
        with contextlib.suppress(BaseException):  # leaving at once: no cleanup may stop the exit
            fn()
    sys.stderr.write("interrupted: stopped at once; rerun the same command to continue\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)


@contextmanager
def handling_signals() -> Iterator[None]:
    """For one API call: SIGINT and SIGTERM request a stop instead of raising in the middle of the work.

    Nested calls share the outer installation. Outside the main thread nothing is installed (Python refuses),
    and a stop can still be asked for with `request_stop()`.
    """
    global _depth
    previous: dict[int, Any] = {}
    if _depth == 0:
        STOP.clear()
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                previous[sig] = signal.signal(sig, _handle)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        # On the command line a stopped call is followed by printing and exiting: a second Ctrl-C in that window
        # must still exit at once with 130, not die of the default handler.
        if not (_exit_at_once and STOP.signals):
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if _depth == 0 and not _exit_at_once:
            # The stop was for this call: the next call in the same process (a notebook, a test) starts afresh,
            # and so does stage code called directly, without an API call around it.
            STOP.clear()
