"""Retries for calls to servers: exponential backoff with jitter on throttling, 5xx and dropped connections.

The one backoff loop of the project (`backoff`); `retrying` is it with the defaults every client shares. A wait
the server asks for (Retry-After, RateLimit-Reset) is honoured, up to the cap, instead of the jittered one.
"""

from __future__ import annotations

import contextvars
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from urllib.request import getproxies, proxy_bypass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from neptune_migration.errors import MigrationError, UsageError
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
DEFAULT_CONNECT_TIMEOUT = 15.0


# Options every networked source and target has: declared here once, used by each plug-in's options dataclass.
# Sources and targets share the names, so `migrate --timeout 10` applies to both ends.
def timeout_option() -> Any:
    return option(DEFAULT_TIMEOUT, metavar="SECONDS", help="Seconds to wait for a server (Neptune, MLflow, W&B) to "
                  "connect and to answer one request before that try counts as failed.")


def retry_budget_option() -> Any:
    return option(DEFAULT_RETRY_BUDGET, metavar="SECONDS", help="Seconds a failing request keeps being retried "
                  "(all tries and waits) before the command gives up, naming the server.")


def connect_timeout_option() -> Any:
    return option(DEFAULT_CONNECT_TIMEOUT, metavar="SECONDS", help="Seconds to keep trying a server that has not "
                  "answered yet in this run (connection refused, unknown host) before giving up; once it has "
                  "answered, --retry-budget covers its restarts and overload.")


@dataclass(frozen=True)
class Patience:
    """How long to wait for a server: one try (`timeout`), all tries of one request (`budget`), and a server that
    has never answered (`connect`: a typo in a host or port should not cost the whole budget)."""

    timeout: float = DEFAULT_TIMEOUT
    budget: float = DEFAULT_RETRY_BUDGET
    connect: float = DEFAULT_CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise UsageError(f"--timeout must be more than 0 seconds, not {self.timeout:g}")
        if not self.budget > 0:
            raise UsageError(f"--retry-budget must be more than 0 seconds, not {self.budget:g}")
        if not self.connect > 0:
            raise UsageError(f"--connect-timeout must be more than 0 seconds, not {self.connect:g}")

    def describe(self) -> str:
        return f"--connect-timeout {self.connect:g}, --timeout {self.timeout:g}, --retry-budget {self.budget:g}"


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


_UNREACHABLE: tuple[tuple[str, Callable[[str, str, BaseException], bool]], ...] = (
    ("cannot resolve the host", lambda kind, text, _exc: "Name or service not known" in text
     or "CannotResolveHostname" in kind or "nodename" in text or "Temporary failure in name resolution" in text),
    # Before the timeouts: a client that retried refused connections until its own deadline reports "timed out"
    # around the refusal that was the cause.
    ("connection refused", lambda _kind, text, exc: "Connection refused" in text
     or isinstance(exc, ConnectionRefusedError)),
    ("no answer", lambda kind, text, _exc: "Timeout" in kind or "timed out" in text),
    ("connection refused", lambda kind, _text, _exc: "ConnectError" in kind),
    ("connection lost", lambda kind, text, _exc: "ConnectionError" in kind or "RemoteDisconnected" in text
     or "Connection aborted" in text),
)


def unreachable_reason(exc: BaseException) -> str | None:
    """'connection refused', 'no answer' (timed out), 'cannot resolve the host' or 'connection lost' when an error
    chain says the server was not reached or did not answer; None for every other failure."""
    chain = [(type(cur).__name__, str(cur), cur) for cur in cause_chain(exc)]
    for reason, says in _UNREACHABLE:
        if any(says(kind, text, cur) for kind, text, cur in chain):
            return reason
    return None


# -- first contact -------------------------------------------------------------------------------------------
# Servers (host, port) that accepted a connection in this process: from then on their refusals are restarts,
# covered by the retry budget, not a mistyped address.
_answered: set[tuple[str, int]] = set()


def first_contact(url: str, patience: Patience, what: str, error: type[MigrationError] = MigrationError) -> None:
    """Fail within `patience.connect` seconds (never more than the retry budget) when the server at `url` has
    never answered in this process and refuses connections or has no address: one line naming the server and
    `--connect-timeout`. A server that accepts a connection once is remembered and never probed again. Behind a
    proxy the server cannot be probed directly; the client's own retries then apply as before."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname
    if not host or parts.scheme not in ("http", "https") or _proxied(parts.scheme, host):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # a malformed port: the client's own error names it
    if (host, port) in _answered:
        return
    window = min(patience.connect, patience.budget)
    started = time.monotonic()
    pause = 0.25
    while True:
        remaining = started + window - time.monotonic()
        try:
            socket.create_connection((host, port), timeout=max(0.1, min(patience.timeout, remaining))).close()
        except OSError as exc:
            remaining = started + window - time.monotonic()
            if remaining <= 0:
                raise error(f"cannot reach the {what} at {server_name(url)}: {_refusal(exc)} for "
                            f"{time.monotonic() - started:.0f} s, and it has never answered (--connect-timeout "
                            f"SECONDS waits longer; now {patience.describe()})") from None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 2.0)
            continue
        _answered.add((host, port))
        return


def _refusal(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "no answer"
    return exc.strerror or type(exc).__name__


def _proxied(scheme: str, host: str) -> bool:
    return bool(getproxies().get(scheme)) and not proxy_bypass(host)


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
