"""The ledger: the only memory of progress, one row per (project, run, stage, target).

`sqlite.Ledger` (a local file, one process at a time) is the default; `postgres.PostgresLedger` keeps the same rows
in PostgreSQL (`--state postgresql://...`) so several drivers and a cluster's workers share them, each run held by
one of them at a time. `open_ledger` picks the backend from `--state`.
"""

from __future__ import annotations

from pathlib import Path

from neptune_migration.ledger.postgres import PostgresLedger, RunClaimed, is_database_uri, redact_uri
from neptune_migration.ledger.sqlite import (
    DEFAULT_STATE,
    DONE,
    FAILED,
    INTERRUPTED,
    MISMATCH,
    PENDING,
    RUNNING,
    SKIPPED,
    Entry,
    Ledger,
    LedgerView,
    Loaded,
    SyncState,
    default_state_path,
)


def open_ledger(state: str | Path | None) -> Ledger:
    """The ledger `--state` names: a PostgreSQL URI, or a SQLite file (default: `default_state_path()`)."""
    if state is not None and is_database_uri(str(state)):
        return PostgresLedger(str(state))
    return Ledger(Path(state) if state is not None else default_state_path())


def open_view(state: str | Path) -> Ledger | LedgerView:
    """What `status` reads: a PostgreSQL ledger as it is (readers never wait there), a SQLite file read-only."""
    if is_database_uri(str(state)):
        return PostgresLedger(str(state))
    return LedgerView(Path(state))


__all__ = [
    "DEFAULT_STATE",
    "DONE",
    "FAILED",
    "INTERRUPTED",
    "MISMATCH",
    "PENDING",
    "RUNNING",
    "SKIPPED",
    "Entry",
    "Ledger",
    "LedgerView",
    "Loaded",
    "PostgresLedger",
    "RunClaimed",
    "SyncState",
    "default_state_path",
    "is_database_uri",
    "open_ledger",
    "open_view",
    "redact_uri",
]
