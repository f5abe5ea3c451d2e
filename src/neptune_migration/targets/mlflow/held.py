"""The points an MLflow run already holds, so a resumed or repeated load never sends one again.

Servers before MLflow PR #24683 (up to at least 3.10.1) fail a whole batch holding a NaN point they already hold:
their duplicate check compares values and NaN never equals itself, so the insert hits the metrics table's UNIQUE
key. Sending only what is missing is exact on every server version, and faster on all of them (a batch of repeats
costs a server ~8x a batch of new points).

What is read back is limited to what is in doubt: only the keys of the batches a load is about to send, only the
keys the run holds any point of (one `get_run`), each key's history read once, when its first batch comes up.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

# What a server stores for +-inf (docs/mlflow.md, "Limits").
MAX_DOUBLE = 1.7976931348623157e308

Point = tuple[int, int, float | str]


def identity(step: int, timestamp: int, value: float) -> Point:
    """A point as the server's metrics key sees it: NaN as one marker, +-inf as the server stores them."""
    if math.isnan(value):
        return step, timestamp, "nan"
    if math.isinf(value):
        value = math.copysign(MAX_DOUBLE, value)
    return step, timestamp, value + 0.0  # -0.0 and 0.0 are one value to SQLite and MySQL; equal either way


class HeldPoints:
    """The held points of one run, read per key on first use."""

    def __init__(self, client: Any, run_id: str, keys_held: Iterable[str],
                 retry: Callable[[Callable[[], Any]], Any]) -> None:
        self.client = client
        self.run_id = run_id
        self.retry = retry
        self._unread = set(keys_held)
        self._points: dict[str, set[Point]] = {}
        self.skipped = 0

    @classmethod
    def of(cls, client: Any, run_id: str, retry: Callable[[Callable[[], Any]], Any]) -> HeldPoints:
        """Every key the run holds a point of, from its latest values (one request)."""
        run = retry(lambda: client.get_run(run_id))
        return cls(client, run_id, run.data.metrics.keys(), retry)

    def _read(self, key: str) -> set[Point]:
        if key in self._unread:
            self._unread.discard(key)
            history = self.retry(lambda: self.client.get_metric_history(self.run_id, key))
            self._points[key] = {identity(m.step, m.timestamp, m.value) for m in history}
        return self._points.get(key, set())

    def missing(self, metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The points of `metrics` the run does not hold yet, in their order."""
        keep = [m for m in metrics
                if identity(m["step"], m["timestamp"], m["value"]) not in self._read(m["key"])]
        self.skipped += len(metrics) - len(keep)
        return keep
