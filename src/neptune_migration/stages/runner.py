"""The bookkeeping every per-run stage shares: start in the ledger, do the work, and on failure record the
one-line (redacted) reason, so that every run ends done, failed or mismatched, never silently; and the worker
pool every stage hands its runs to (local threads, or a cluster's engine), which stops cleanly on Ctrl-C or
SIGTERM (runs then end `interrupted`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from neptune_migration import interrupt
from neptune_migration.errors import describe
from neptune_migration.executors import Engine, LocalThreads
from neptune_migration.interrupt import RunStopped
from neptune_migration.ledger import Entry, Ledger, RunClaimed
from neptune_migration.secrets import redact
from neptune_migration.vocabulary import RunRef

log = logging.getLogger("neptune_migration")
T = TypeVar("T")
R = TypeVar("R")

# How often a waiting coordinator looks at the stop flag: a signal handler cannot wake a blocked wait().
POLL_SECONDS = 0.2


@dataclass
class Attempt(Generic[T]):
    value: T | None
    error: str | None  # redacted, one line; None when the work returned
    seconds: float


def attempt(ledger: Ledger, ref: RunRef, stage: str, target: str, work: Callable[[Entry], T], verb: str,
            record_failure: bool = True) -> Attempt[T]:
    """Run `work(entry)` for one run of one stage. A failure is logged and, unless the caller records it its own
    way (`record_failure=False`), stored as `failed` in the ledger; the next invocation retries the run."""
    interrupt.checkpoint()  # a run handed out just before a stop is not started at all
    started = time.monotonic()
    entry = ledger.start(ref, stage, target)
    try:
        value = work(entry)
    except RunStopped:
        # Stopped at a checkpoint the work had just saved: resumable, and never a failure.
        log.info("run %s: interrupted, it continues on the next call", ref.key)
        with contextlib.suppress(RunStopped):  # a frozen ledger: the stage has marked the run already
            ledger.interrupt(ref, stage, target)
        raise
    except Exception as exc:  # every failure is recorded; one bad run never stops the others
        message = redact(describe(exc))
        log.error("run %s failed to %s: %s", ref.key, verb, message)
        log.debug("details", exc_info=True)
        if record_failure:
            ledger.fail(ref, stage, target, message)
        return Attempt(None, message, time.monotonic() - started)
    return Attempt(value, None, time.monotonic() - started)


class Stopped(Exception):  # not a failure: the stage turns it into errors.Interrupted with its counts
    """A stage pool stopped on request; runs still in flight are `interrupted` in the ledger, which is frozen."""


def run_pool(items: Iterable[T], work: Callable[[T], R], workers: int, name: str, ledger: Ledger,
             engine: Engine | None = None, on_error: Callable[[T, BaseException], R] | None = None) -> Iterator[R]:
    """`work(item)` for every item on `workers` threads, or on `engine` (a cluster); yields results as they complete.

    Items are handed out only while the engine has a free slot, so after a stop request nothing new starts. The runs
    in flight then get `interrupt.grace_seconds()` to finish or reach a checkpoint (their results are still
    yielded); what is left is marked `interrupted`, the ledger frozen, and `Stopped` raised. After a stop the
    pool never waits for a stuck worker. A run another driver or worker holds (`RunClaimed`, a shared ledger) is
    handed out again later. `on_error(item, exc)` turns a work that raised (a remote run that failed on every
    worker it was tried on) into a result; without it the exception propagates.
    """
    pending = deque(items)
    own = engine is None
    pool: Engine = LocalThreads(workers, name) if engine is None else engine
    running: dict[Future[R], T] = {}
    later: list[tuple[float, T]] = []  # claimed elsewhere: (not before, item)
    unregister = interrupt.on_hard_exit(lambda: ledger.interrupt_running(timeout=1.0))
    wait_on_exit = True
    try:
        while True:
            now = time.monotonic()
            due = [item for at, item in later if at <= now]
            later = [(at, item) for at, item in later if at > now]
            pending.extend(due)
            while pending and not interrupt.requested() and len(running) < pool.slots:
                item = pending.popleft()
                running[pool.submit(work, item)] = item
            if interrupt.requested() and (running or pending or later):  # a stop after the last run is no stop
                wait_on_exit = False
                for fut in settle_after_stop(running, ledger):
                    yield fut.result()
                raise Stopped
            if not running:
                if not later:
                    break
                time.sleep(min(POLL_SECONDS, max(0.0, min(at for at, _ in later) - now)))
                continue
            done, _ = wait(running, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
            for fut in done:
                item = running.pop(fut)
                exc = fut.exception()
                if isinstance(exc, RunStopped):  # stopped ones are counted by the stage
                    continue
                if isinstance(exc, RunClaimed):
                    later.append((time.monotonic() + claimed_delay(exc), item))
                    continue
                if exc is not None and on_error is not None:
                    yield on_error(item, exc)
                    continue
                yield fut.result()
    except (KeyboardInterrupt, GeneratorExit):
        # A second Ctrl-C when the caller is not the command line (a notebook): still no row left `running`.
        wait_on_exit = False
        abandon(running, ledger)
        raise
    finally:
        unregister()
        if own:
            pool.shutdown(wait=wait_on_exit, cancel_futures=True)
        elif not wait_on_exit:
            pool.cancel()


def claimed_delay(exc: RunClaimed) -> float:
    """When to look again at a run another holder has: soon, but without polling the ledger in a tight loop."""
    return min(5.0, max(0.5, exc.seconds_left or 1.0))


def settle_after_stop(running: Iterable[Future[Any]], ledger: Ledger) -> list[Future[Any]]:
    """Give the runs in flight the grace period to finish or reach a checkpoint, then mark what did not end as
    `interrupted` and freeze the ledger so late workers cannot write. Returns the futures that ended with a
    result (not the ones that stopped at a checkpoint)."""
    left = set(running)
    finished: list[Future[Any]] = []
    deadline = time.monotonic() + interrupt.grace_seconds()
    while left and time.monotonic() < deadline:
        done, left = wait(left, timeout=min(deadline - time.monotonic(), POLL_SECONDS), return_when=FIRST_COMPLETED)
        finished += [fut for fut in done if not isinstance(fut.exception(), RunStopped)]
    abandon(left, ledger)
    return finished


def abandon(left: Iterable[Future[Any]], ledger: Ledger) -> None:
    """Mark every run the ledger still shows `running` for this process as `interrupted`, then freeze it."""
    left = [fut for fut in left if not fut.done()]
    ledger.interrupt_running(timeout=1.0)
    ledger.freeze()
    if left:
        interrupt.STOP.stragglers = True
        log.warning("%d run(s) did not reach a checkpoint in time; marked interrupted", len(left))
