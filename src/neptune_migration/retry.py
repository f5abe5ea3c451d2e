"""Retries for calls to servers: exponential backoff with jitter on throttling, 5xx and dropped connections."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

T = TypeVar("T")

_TRANSIENT_WORDS = (
    "429",
    "500",
    "502",
    "503",
    "504",
    "Too Many Requests",
    "TEMPORARILY_UNAVAILABLE",
    "Connection aborted",
    "Connection refused",
    "Connection reset",
    "RemoteDisconnected",
    "Max retries exceeded",
    "timed out",
)


def is_transient(exc: BaseException) -> bool:
    """Errors worth another try. Client libraries wrap HTTP failures differently, so look at the text too."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    try:
        import requests

        if isinstance(exc, requests.ConnectionError | requests.Timeout):
            return True
    except ImportError:  # pragma: no cover - requests comes with every client we use
        pass
    status = getattr(exc, "status_code", None) or getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    text = str(exc)
    return any(word in text for word in _TRANSIENT_WORDS)


def attempts() -> int:
    return int(os.environ.get("NEPTUNE_MIGRATION_RETRIES", "6"))


def retrying(fn: Callable[[], T], max_wait: float = 30.0) -> T:
    """Call `fn`, retrying transient failures with exponential backoff and full jitter."""
    for attempt in Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts()),
        wait=wait_random_exponential(multiplier=0.5, max=max_wait),
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover
