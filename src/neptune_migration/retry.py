"""Retries for calls to servers: exponential backoff with jitter on throttling, 5xx and dropped connections.

The one backoff loop of the project (`backoff`); `retrying` is it with the defaults every client shares. A wait
the server asks for (Retry-After, RateLimit-Reset) is honoured, up to the cap, instead of the jittered one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

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
_WAIT_HEADERS = ("Retry-After", "RateLimit-Reset")


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


def _response(exc: BaseException) -> Any:
    """The HTTP response behind an error, also when a client library re-raised it as its own exception."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        resp = getattr(cur, "response", None)
        if resp is not None:
            return resp
        cur = cur.__cause__ or cur.__context__
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status the server answered with, or None when the error carries no response."""
    status = getattr(_response(exc), "status_code", None)
    return int(status) if status is not None else None


def server_wait(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait before the next try, when it said."""
    headers = getattr(_response(exc), "headers", None) or {}
    for name in _WAIT_HEADERS:
        value = headers.get(name)
        if value is not None:
            try:
                return float(value)
            except ValueError:
                pass  # an HTTP date or garbage: fall back to our own backoff
    return None


def is_throttled_or_server_error(exc: BaseException) -> bool:
    """HTTP 429 or 5xx, judged by the response only: for callers whose other errors must surface at once."""
    status = http_status(exc)
    return status is not None and (status == 429 or status >= 500)


def attempts() -> int:
    return int(os.environ.get("NEPTUNE_MIGRATION_RETRIES", "6"))


_configured_attempts = attempts  # `backoff`'s parameter of the same name shadows it there


def backoff(
    fn: Callable[[], T],
    *,
    retry_on: Callable[[BaseException], bool] = is_transient,
    attempts: int | None = None,
    base: float = 0.5,
    cap: float = 30.0,
) -> T:
    """Call `fn`, retrying errors `retry_on` accepts, at most `attempts` calls in all (default: the
    NEPTUNE_MIGRATION_RETRIES setting). Between calls: the server's requested wait, else full-jitter exponential
    backoff from `base` seconds; either way at most `cap` seconds."""
    jittered = wait_random_exponential(multiplier=base, max=cap)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = server_wait(exc) if exc is not None else None
        return min(cap, max(0.0, asked)) if asked is not None else jittered(state)

    for attempt in Retrying(
        retry=retry_if_exception(retry_on),
        stop=stop_after_attempt(attempts if attempts is not None else _configured_attempts()),
        wait=wait,
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover


def retrying(fn: Callable[[], T], max_wait: float = 30.0) -> T:
    """Call `fn`, retrying transient failures with exponential backoff and full jitter."""
    return backoff(fn, cap=max_wait)
