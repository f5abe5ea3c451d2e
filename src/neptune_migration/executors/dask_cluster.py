"""The Dask engine: each run's work is one task on a `distributed` scheduler (`--cluster tcp://HOST:PORT`).

Dask already reschedules a task whose worker died (up to the scheduler's `distributed.scheduler.allowed-failures`,
then `KilledWorker`). A run whose work *failed* (raised `AttemptFailed`) is submitted again here, restricted to
workers that have not failed it yet while there are any, until `attempts` tries have failed: its future then fails
with `FailedOnWorkers`, naming each worker and its error.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import CancelledError, Future
from typing import Any

from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.executors.base import AttemptFailed, FailedOnWorkers

_ADDRESS = re.compile(r"^(tcp|tls|ws|wss|ucx|inproc)://\S+$")
# How long a new driver waits for the first worker to connect before it says there is none.
WORKER_WAIT_SECONDS = 30.0


class DaskEngine:
    remote = True

    def __init__(self, address: str, attempts: int = 3, connect_timeout: float = 20.0) -> None:
        if address.startswith("ray://"):
            raise UsageError("--cluster ray://... is not supported: start a Dask scheduler and pass its "
                             "tcp://HOST:PORT (see docs/cluster.md)")
        if not _ADDRESS.match(address):
            raise UsageError(f"--cluster must be a Dask scheduler address such as tcp://HOST:8786, not {address!r}")
        try:
            from distributed import Client
        except ImportError:
            raise UsageError("--cluster needs Dask: pip install 'neptune-migration[cluster]' (on the driver and "
                             "on every worker)") from None
        self.address = address
        self.attempts = max(1, attempts)
        try:
            self.client = Client(address, timeout=connect_timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise MigrationError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        self._lock = threading.Lock()
        self._inflight: dict[Future[Any], Any] = {}
        self._closed = False
        self._nthreads: dict[str, int] = {}
        self._nthreads_at = 0.0
        deadline = time.monotonic() + WORKER_WAIT_SECONDS
        while not self._threads(fresh=True):
            if time.monotonic() > deadline:
                self.client.close()
                raise MigrationError(f"no Dask worker is connected to {address} (waited "
                                     f"{WORKER_WAIT_SECONDS:.0f} s): start workers with `dask worker {address}`")
            time.sleep(0.5)

    def _threads(self, fresh: bool = False) -> dict[str, int]:
        # Asked of the scheduler at most every 2 s: the stage loop reads `slots` after every settled run.
        if fresh or time.monotonic() - self._nthreads_at > 2.0:
            self._nthreads = dict(self.client.nthreads())
            self._nthreads_at = time.monotonic()
        return self._nthreads

    @property
    def slots(self) -> int:
        # One task queued per worker beside those running: a worker never waits for the driver's next hand-out.
        threads = self._threads()
        return max(1, sum(threads.values()) + len(threads))

    def workers(self) -> int:
        return len(self._threads())

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        outer: Future[Any] = Future()
        outer.set_running_or_notify_cancel()
        self._launch(outer, fn, args, [])
        return outer

    def _launch(self, outer: Future[Any], fn: Any, args: tuple[Any, ...], tried: list[tuple[str, str]]) -> None:
        failed_on = {worker for worker, _ in tried}
        others = [w for w in self._threads(fresh=bool(tried)) if w not in failed_on]
        kwargs: dict[str, Any] = {"pure": False}
        if tried and others:
            kwargs |= {"workers": others, "allow_other_workers": False}
        task = self.client.submit(fn, *args, **kwargs)
        with self._lock:
            self._inflight[outer] = task
        task.add_done_callback(lambda done: self._settled(outer, done, fn, args, tried))

    def _settled(self, outer: Future[Any], task: Any, fn: Any, args: tuple[Any, ...],
                 tried: list[tuple[str, str]]) -> None:
        from distributed.scheduler import KilledWorker

        with self._lock:
            self._inflight.pop(outer, None)
        if outer.done():
            return
        if task.status == "cancelled":
            outer.set_exception(CancelledError())
            return
        exc = task.exception() if task.status == "error" else None
        if exc is None:
            outer.set_result(task.result())
        elif isinstance(exc, AttemptFailed):
            tried = [*tried, (exc.worker, exc.error)]
            if len(tried) < self.attempts and not self._closed:
                self._launch(outer, fn, args, tried)
            else:
                outer.set_exception(FailedOnWorkers(tried, exc.stage))
        elif isinstance(exc, KilledWorker):
            # Dask rescheduled it after each worker death already; another round would kill more workers.
            outer.set_exception(FailedOnWorkers([*tried, ("the cluster", f"every worker running it died ({exc})")]))
        else:
            outer.set_exception(exc)

    def cancel(self) -> None:
        """Stop what has not started; a task already running on a worker finishes there (its ledger row too)."""
        with self._lock:
            tasks = list(self._inflight.values())
        if tasks:
            self.client.cancel(tasks)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            self.cancel()
        self.client.close()
