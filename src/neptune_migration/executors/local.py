"""The default engine: threads of this process."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class LocalThreads:
    remote = False
    address = "local"

    def __init__(self, size: int, name: str = "worker") -> None:
        self.size = max(1, size)
        self._pool = ThreadPoolExecutor(self.size, thread_name_prefix=name)

    @property
    def slots(self) -> int:
        return self.size

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        return self._pool.submit(fn, *args)

    def workers(self) -> int:
        return 1

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def cancel(self) -> None:
        """Nothing to cancel that `shutdown(cancel_futures=True)` does not."""
