"""Retries for calls to servers: exponential backoff with jitter on throttling, 5xx and dropped connections.

The one backoff loop of the project (`backoff`); `retrying` is it with the defaults every client shares. A wait
the server asks for (Retry-After, RateLimit-Reset) is honoured, up to the cap, instead of the jittered one.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from neptune_migration.errors import UsageError
from neptune_migration.options import option

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
    budget: float | None = None,
) -> T:
    """Call `fn`, retrying errors `retry_on` accepts, at most `attempts` calls in all (default: the
    NEPTUNE_MIGRATION_RETRIES setting) and no new call once `budget` seconds have passed since the first. Between
    calls: the server's requested wait, else full-jitter exponential backoff from `base` seconds; either way at
    most `cap` seconds, and never past the budget."""
    jittered = wait_random_exponential(multiplier=base, max=cap)
    started = time.monotonic()

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = server_wait(exc) if exc is not None else None
        chosen = min(cap, max(0.0, asked)) if asked is not None else jittered(state)
        if budget is not None:
            chosen = min(chosen, max(0.0, started + budget - time.monotonic()))
        return chosen

    stop = stop_after_attempt(attempts if attempts is not None else _configured_attempts())
    if budget is not None:
        stop = stop | stop_after_delay(budget)
    for attempt in Retrying(
        retry=retry_if_exception(retry_on),
        stop=stop,
        wait=wait,
        reraise=True,
    ):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover


def retrying(fn: Callable[[], T], max_wait: float = 30.0, budget: float | None = None) -> T:
    """Call `fn`, retrying transient failures with exponential backoff and full jitter."""
    return backoff(fn, cap=max_wait, budget=budget)


# -- dead and slow servers ---------------------------------------------------------------------------------
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRY_BUDGET = 300.0


# Options every networked source and target has: declared here once, used by each plug-in's options dataclass.
# Sources and targets share the names, so `migrate --timeout 10` applies to both ends.
def timeout_option() -> Any:
    return option(DEFAULT_TIMEOUT, metavar="SECONDS", help="Seconds to wait for a server (Neptune, MLflow, W&B) to "
                  "connect and to answer one request before that try counts as failed.")


def retry_budget_option() -> Any:
    return option(DEFAULT_RETRY_BUDGET, metavar="SECONDS", help="Seconds a failing request keeps being retried "
                  "(all tries and waits) before the command gives up, naming the server.")


@dataclass(frozen=True)
class Patience:
    """How long to wait for a server: one try (`timeout`) and all tries of one request (`budget`)."""

    timeout: float = DEFAULT_TIMEOUT
    budget: float = DEFAULT_RETRY_BUDGET

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise UsageError(f"--timeout must be more than 0 seconds, not {self.timeout:g}")
        if not self.budget > 0:
            raise UsageError(f"--retry-budget must be more than 0 seconds, not {self.budget:g}")

    def describe(self) -> str:
        return f"--timeout {self.timeout:g}, --retry-budget {self.budget:g}"


def server_name(url: str) -> str:
    """A server's URL without credentials or path, for messages."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", "")) if parts.scheme else host


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def unreachable_reason(exc: BaseException) -> str | None:
    """'connection refused', 'no answer' (timed out) or 'cannot resolve' when an error chain says the server was
    not reached or did not answer; None for every other failure."""
    for cur in cause_chain(exc):
        kind, text = type(cur).__name__, str(cur)
        if "Timeout" in kind or "timed out" in text or "TimeoutError" in kind:
            return "no answer"
        if "Name or service not known" in text or "CannotResolveHostname" in kind or "nodename" in text:
            return "cannot resolve the host"
        if "Connection refused" in text or "ConnectError" in kind or isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        if "ConnectionError" in kind or "RemoteDisconnected" in text or "Connection aborted" in text:
            return "connection lost"
    return None


# A client library's settings, answered by our values inside `scoped_settings` and by the library's own value
# elsewhere: two sources in one process, or a user's own neptune-query calls next to ours, do not see each other's
# timeouts. A context variable, so each thread (and each copied context) has its own.
_scoped: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("neptune_migration_scoped",
                                                                                default=None)
_install_lock = threading.Lock()


@contextmanager
def scoped_settings(values: dict[str, Any]) -> Iterator[None]:
    token = _scoped.set({**(_scoped.get() or {}), **values})
    try:
        yield
    finally:
        _scoped.reset(token)


# Values held for the whole process while an object that cannot scope its calls (a target whose calls come from
# the stages' worker threads) is open; `hold_settings` returns the release. The context's values win.
_held: dict[str, list[Any]] = {}


def hold_settings(values: dict[str, Any]) -> Callable[[], None]:
    with _install_lock:
        for name, value in values.items():
            _held.setdefault(name, []).append(value)

    def release() -> None:
        with _install_lock:
            for name, value in values.items():
                stack = _held.get(name, [])
                if value in stack:
                    stack.remove(value)
                if not stack:
                    _held.pop(name, None)

    return release


def scoped_value(name: str, own: Callable[[], Any]) -> Any:
    values = _scoped.get() or {}
    if name in values:
        return values[name]
    held = _held.get(name)
    return held[-1] if held else own()


def scope_getter(setting: Any) -> None:
    """Make `setting.get()` (an object with `.name` and `.get()`, as neptune-query and MLflow have for their
    environment variables) answer the scoped value of its name; installed once, harmless outside a scope."""
    with _install_lock:
        if getattr(setting, "_neptune_migration_scoped", False):
            return
        own = setting.get
        setting.get = lambda: scoped_value(setting.name, own)
        setting._neptune_migration_scoped = True


class ScopedNumber:
    """A number a library keeps in a module global and compares against (`elapsed > limit`): our scoped value
    inside `scoped_settings`, the library's own value elsewhere."""

    def __init__(self, name: str, own: float) -> None:
        self.name = name
        self.own = own

    def value(self) -> float:
        return float(scoped_value(self.name, lambda: self.own))

    def __float__(self) -> float:
        return self.value()

    def __int__(self) -> int:
        return int(self.value())

    def __lt__(self, other: float) -> bool:
        return self.value() < other

    def __gt__(self, other: float) -> bool:
        return self.value() > other

    def __le__(self, other: float) -> bool:
        return self.value() <= other

    def __ge__(self, other: float) -> bool:
        return self.value() >= other

    def __repr__(self) -> str:
        return repr(self.value())
