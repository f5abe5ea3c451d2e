"""What the W&B target's own calls to a server share (loading, verifying after a sync, the online read-back).

`wandb sync` retries its own requests; these are the calls this package makes through `wandb.Api` and plain
HTTP. Kept apart from the loader so the read-back can use them without importing the loader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from neptune_migration.retry import backoff, is_throttled_or_server_error

T = TypeVar("T")


def with_backoff(fn: Callable[[], T], *, attempts: int = 8, base: float = 0.5, cap: float = 60.0) -> T:
    """Retry `fn` on HTTP 429 / 5xx, honouring Retry-After or RateLimit-Reset when the server sends one.

    Only statuses count: wandb's errors for a missing run or a refused key must reach the caller at once.
    """
    return backoff(fn, retry_on=is_throttled_or_server_error, attempts=attempts, base=base, cap=cap)
