"""The engine seam and the values remote work returns or raises (all picklable: they cross processes)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class Done:
    """What a remote run's work returned, and the worker that did it (for the report)."""

    value: Any
    worker: str


class AttemptFailed(Exception):
    """One attempt at a run failed on one worker; its error is already redacted and recorded in the ledger."""

    def __init__(self, error: str, worker: str, stage: str = "") -> None:
        super().__init__(error)
        self.error, self.worker, self.stage = error, worker, stage  # stage: where a chained task failed

    def __reduce__(self) -> tuple[Any, ...]:
        return (AttemptFailed, (self.error, self.worker, self.stage))


class FailedOnWorkers(Exception):
    """Every attempt failed: `errors` is (worker, error) per attempt, in order."""

    def __init__(self, errors: list[tuple[str, str]], stage: str = "") -> None:
        super().__init__(self.describe(errors))
        self.errors, self.stage = errors, stage

    @staticmethod
    def describe(errors: list[tuple[str, str]]) -> str:
        return f"failed {len(errors)} time(s): " + "; ".join(f"on {w}: {e}" for w, e in errors)

    def __reduce__(self) -> tuple[Any, ...]:
        return (FailedOnWorkers, (self.errors, self.stage))


class Engine(Protocol):
    remote: bool  # the work runs in other processes: it must be a picklable function of picklable inputs
    address: str

    @property
    def slots(self) -> int:
        """Runs to keep in flight (a cluster: its worker threads, as many as are connected now)."""
        ...

    def submit(self, fn: Any, *args: Any) -> Future[Any]: ...

    def workers(self) -> int:
        """Worker processes connected (1 for local threads)."""
        ...

    def cancel(self) -> None:
        """Drop the work not yet started (a stop)."""
        ...

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...


def current_worker() -> str:
    """This process's name in the report: its Dask worker address, or host:pid outside a cluster."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        import os
        import socket

        return f"{socket.gethostname()}:{os.getpid()}"
