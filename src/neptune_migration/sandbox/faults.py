"""Fault injection per route: rate limits, server errors, slow replies and dropped connections."""

from __future__ import annotations

import random
import re
import threading
from dataclasses import dataclass, field

FAULT_KINDS = ("429", "500", "503", "slow", "drop")


@dataclass
class Fault:
    route: re.Pattern[str]
    kind: str
    every: int | None = None  # every Nth matching call (N, 2N, ...)
    nth: int | None = None  # exactly the Nth matching call
    rate: float | None = None  # each matching call with this probability
    times: int | None = None  # stop after injecting this many times
    retry_after: float | None = 1.0  # seconds, sent with 429 (and 503 when set)
    delay: float = 2.0  # seconds, for "slow"
    method: str | None = None
    seen: int = 0  # matching calls so far
    served: int = 0  # faults actually injected

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.route.search(path) is not None


@dataclass
class Faults:
    """The fault table of one sandbox. Thread-safe; the first fault that fires wins."""

    seed: int = 0
    _faults: list[Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(
        self,
        route_regex: str,
        kind: str,
        *,
        every: int | None = None,
        nth: int | None = None,
        rate: float | None = None,
        times: int | None = None,
        retry_after: float | None = 1.0,
        delay: float = 2.0,
        method: str | None = None,
    ) -> Fault:
        """Inject ``kind`` on requests whose path matches ``route_regex``.

        Without ``every``, ``nth`` or ``rate`` the fault fires on every matching call (bounded by ``times``).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, not {kind!r}")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        fault = Fault(re.compile(route_regex), kind, every, nth, rate, times, retry_after, delay, method)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def __iter__(self):  # type: ignore[no-untyped-def]
        with self._lock:
            return iter(list(self._faults))

    def pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            chosen = None
            for fault in self._faults:
                if not fault.matches(method, path):
                    continue
                fault.seen += 1
                if chosen is not None or (fault.times is not None and fault.served >= fault.times):
                    continue
                if fault.nth is not None:
                    fire = fault.seen == fault.nth
                elif fault.every is not None:
                    fire = fault.seen % fault.every == 0
                elif fault.rate is not None:
                    fire = self._rng.random() < fault.rate
                else:
                    fire = True
                if fire:
                    fault.served += 1
                    chosen = fault
            return chosen
