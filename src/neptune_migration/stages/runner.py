"""The bookkeeping every per-run stage shares: start in the ledger, do the work, and on failure record the
one-line (redacted) reason, so that every run ends done, failed or mismatched, never silently."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from neptune_migration.errors import describe
from neptune_migration.ledger import Entry, Ledger
from neptune_migration.secrets import redact
from neptune_migration.vocabulary import RunRef

log = logging.getLogger("neptune_migration")
T = TypeVar("T")


@dataclass
class Attempt(Generic[T]):
    value: T | None
    error: str | None  # redacted, one line; None when the work returned
    seconds: float


def attempt(ledger: Ledger, ref: RunRef, stage: str, target: str, work: Callable[[Entry], T], verb: str,
            record_failure: bool = True) -> Attempt[T]:
    """Run `work(entry)` for one run of one stage. A failure is logged and, unless the caller records it its own
    way (`record_failure=False`), stored as `failed` in the ledger; the next invocation retries the run."""
    started = time.monotonic()
    entry = ledger.start(ref, stage, target)
    try:
        value = work(entry)
    except Exception as exc:  # every failure is recorded; one bad run never stops the others
        message = redact(describe(exc))
        log.error("run %s failed to %s: %s", ref.key, verb, message)
        log.debug("details", exc_info=True)
        if record_failure:
            ledger.fail(ref, stage, target, message)
        return Attempt(None, message, time.monotonic() - started)
    return Attempt(value, None, time.monotonic() - started)
