"""Where per-run work runs: threads of this process (the default) or a Dask distributed cluster (`--cluster`).

An engine is a small `concurrent.futures`-like seam: `submit(fn, *args)` returns a `concurrent.futures.Future`,
`slots` says how many runs to keep in flight, `shutdown` ends it. The stages' `run_pool` hands runs to whichever
engine it is given and never knows which it is. Remote work raises `AttemptFailed` to be tried on another worker;
after `attempts` tries the future fails with `FailedOnWorkers`, which names every worker and its error.
"""

from __future__ import annotations

from neptune_migration.executors.base import AttemptFailed, Done, Engine, FailedOnWorkers, current_worker
from neptune_migration.executors.local import LocalThreads


def open_cluster(address: str, attempts: int = 3) -> Engine:
    """An engine on the Dask scheduler at `address` (tcp://HOST:PORT, tls://..., or a ray:// address, refused)."""
    from neptune_migration.executors.dask_cluster import DaskEngine

    return DaskEngine(address, attempts=attempts)


__all__ = ["AttemptFailed", "Done", "Engine", "FailedOnWorkers", "LocalThreads", "current_worker", "open_cluster"]
