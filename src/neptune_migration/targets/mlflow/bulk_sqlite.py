"""The bulk path's SQLite side: `executemany` into an MLflow `sqlite:///` store (the rules are in `bulk`).

SQLite has no sessions to list, so another writer is not detected: MLflow's own writers and other runs share the
file through SQLite's lock; transactions are short and our connection waits up to 300 s for it.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from neptune_migration.errors import TargetError
from neptune_migration.targets.mlflow.bulk_core import (
    PROGRESS_TAG,
    Chunk,
    check_tables,
    progress_value,
)
from neptune_migration.targets.mlflow.bulk_core import check_schema as check_revision
from neptune_migration.targets.mlflow.loader import public_uri

_INSERT_METRICS = (
    "INSERT OR IGNORE INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_PROGRESS = (
    "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET value = "
    "excluded.value"
)
# Same rule as SqlAlchemyStore._update_latest_metrics_if_necessary: replace only when strictly more recent.
_UPSERT_LATEST = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
    "step = excluded.step, is_nan = excluded.is_nan "
    "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
    "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)


def sqlite_path(tracking_uri: str) -> Path:
    if not tracking_uri.startswith("sqlite:///"):
        raise TargetError(f"not a sqlite:/// tracking URI: {public_uri(tracking_uri)}")
    return Path(tracking_uri[len("sqlite:///") :])


def schema_revision(db: Path) -> str | None:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.DatabaseError:
            return None
    return row[0] if row else None


def check_schema(db: Path) -> None:
    check_revision(str(db), schema_revision(db))


class SqliteBulkStore:
    def __init__(self, tracking_uri: str) -> None:
        self.uri = self.client_uri = tracking_uri
        self.db = sqlite_path(tracking_uri)

    def check_before_open(self) -> None:
        if self.db.exists() and self.db.stat().st_size > 0:
            check_schema(self.db)

    def check_opened(self) -> None:
        check_schema(self.db)
        check_tables(self.client_uri, str(self.db))

    def session(self) -> SqliteBulkSession:
        # No other writer to look for: SQLite lists no connections (see the module's note).
        return SqliteBulkSession(self.db)


class SqliteBulkSession:
    def __init__(self, db: Path) -> None:
        # Used from the run's writer thread as well as the loading thread, never by both at once.
        self.conn = sqlite3.connect(db, timeout=300, isolation_level=None, check_same_thread=False)

    def progress(self, run_id: str) -> str | None:
        row = self.conn.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = ?", (run_id, PROGRESS_TAG))
        found = row.fetchone()
        return found[0] if found else None

    def has_points(self, run_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM metrics WHERE run_uuid = ? LIMIT 1", (run_id,)).fetchone() is not None

    def write(self, chunk: Chunk, progress: tuple[int, int] | None) -> int:
        """`INSERT OR IGNORE` drops exact repeats (the primary key spans every column). Short transactions keep
        MLflow's own writers (tags, other runs) from waiting long."""
        conn, run_id = self.conn, chunk.run_id
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            conn.executemany(_INSERT_METRICS, _rows(chunk))
            dropped = chunk.size - (conn.total_changes - before)
            conn.executemany(_UPSERT_LATEST, [(k, v, t, s, n, run_id) for k, (s, t, v, n) in chunk.latest.items()])
            if progress is not None:
                conn.execute(_UPSERT_PROGRESS, (PROGRESS_TAG, progress_value(progress, dropped), run_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return dropped

    def stored_counts(self, run_id: str) -> dict[str, int]:
        return dict(
            self.conn.execute("SELECT key, COUNT(*) FROM metrics WHERE run_uuid = ? GROUP BY key", (run_id,))
        )

    def latest_stored(self, run_id: str) -> dict[str, tuple[int, int]]:
        rows = self.conn.execute("SELECT key, step, timestamp FROM latest_metrics WHERE run_uuid = ?", (run_id,))
        return {key: (step, timestamp) for key, step, timestamp in rows}

    def close(self) -> None:
        self.conn.close()


def _rows(chunk: Chunk) -> Iterator[tuple[Any, ...]]:
    """Rows for executemany, made one at a time as SQLite consumes them (no list of tuples)."""
    part = slice(chunk.start, chunk.stop)
    cols = chunk.cols
    keys = np.array(cols.series_keys, dtype=object)[cols.codes[part]]
    return zip(
        keys.tolist(),
        chunk.value[part].tolist(),
        cols.timestamps[part].tolist(),
        cols.steps[part].tolist(),
        chunk.is_nan[part].tolist(),
        itertools.repeat(chunk.run_id),
    )
