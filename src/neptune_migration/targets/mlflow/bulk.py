"""Opt-in bulk path into an MLflow `sqlite:///` store that the user owns (docs/performance.md).

Runs, params, tags, artifacts and termination go through MLflow's API exactly as in `MlflowTarget`; only the
metric points are written with plain `executemany` into `metrics` and `latest_metrics`. MLflow's own store spends
most of its time building SQLAlchemy objects per point, while the insert itself is cheap.

Writing another program's tables is only safe for the schema we read: the store's `alembic_version` must be the
revision this module was written for (MLflow 3.17.2), otherwise the target refuses to start. Every row follows
`SqlAlchemyStore`: NaN is stored as value 0 with `is_nan` set, +-inf as +-max double, and `latest_metrics` keeps
the point with the greatest (step, timestamp, value), the first one on a tie. After each run the points per key and
the latest values are read back (latest values through `MlflowClient.get_run`) and compared.

Resuming: each transaction also writes the run's tag `neptune.bulk_rows` = "<archive rows committed>:<rows ignored
as exact repeats>", so progress and data commit together and a rerun starts exactly after the committed rows.
`metrics`' primary key covers every column, so `INSERT OR IGNORE` drops a point the archive holds twice; the
running count of those is what lets the check after the run tell them from lost points, however many attempts
the run took.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import to_ms
from neptune_migration.errors import TargetError
from neptune_migration.retry import Patience
from neptune_migration.targets.base import LoadContext, LoadResult
from neptune_migration.targets.mlflow.loader import MetricColumns, MlflowTarget, public_uri

# alembic head of MLflow 3.17.2 (mlflow/store/db_migrations/versions); the only schema the inserts were checked on.
SCHEMA_REVISION = "dc11669786a5"
MAX_DOUBLE = 1.7976931348623157e308
CHECKPOINT_KEY = "bulk_rows_done"
PROGRESS_TAG = "neptune.bulk_rows"
ROWS_PER_TRANSACTION = 20_000

_INSERT_METRICS = (
    "INSERT OR IGNORE INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)"
)
# Same rule as SqlAlchemyStore._update_latest_metrics_if_necessary: replace only when strictly more recent.
_UPSERT_PROGRESS = (
    "INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?) ON CONFLICT (key, run_uuid) DO UPDATE SET value = "
    "excluded.value"
)
_UPSERT_LATEST = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
    "step = excluded.step, is_nan = excluded.is_nan "
    "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
    "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)


def sqlite_path(tracking_uri: str) -> Path:
    if not tracking_uri.startswith("sqlite:///"):
        raise TargetError(
            f"the MLflow bulk path needs a sqlite:/// tracking URI (a database you own), not {public_uri(tracking_uri)}"
        )
    return Path(tracking_uri[len("sqlite:///") :])


def schema_revision(db: Path) -> str | None:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as conn:
        try:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.DatabaseError:
            return None
    return row[0] if row else None


def check_schema(db: Path) -> None:
    found = schema_revision(db)
    if found != SCHEMA_REVISION:
        raise TargetError(
            f"MLflow bulk path refused: {db} has schema version {found or 'none'}, this tool writes only "
            f"{SCHEMA_REVISION} (MLflow 3.17.2); load without the bulk option"
        )


class MlflowBulkTarget(MlflowTarget):
    """`MlflowTarget` whose metric points go straight into the `sqlite:///` store's tables."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_by: str = "project",
        experiment_prefix: str = "",
        upload_workers: int = 4,
        patience: Patience | None = None,
        writer: str | None = None,
    ) -> None:
        if tracking_uri is not None:
            db = sqlite_path(tracking_uri)
            # A store at another version must be refused before MLflow's client opens (and might migrate) it.
            if db.exists() and db.stat().st_size > 0:
                check_schema(db)
        super().__init__(tracking_uri, experiment_by, experiment_prefix, upload_workers, patience=patience,
                         writer=writer)
        self.db = sqlite_path(self.tracking_uri)
        check_schema(self.db)

    def _log_metrics(
        self,
        run_id: str,
        run: ArchivedRun,
        ctx: LoadContext,
        checkpoint: dict[str, Any],
        result: LoadResult,
        staging: Path,
        uploads: list[Future[None]],
    ) -> None:
        plan, names = self._prepare_metrics(run_id, run, ctx, result)
        if not plan:
            return
        fallback_ts = to_ms(run.atom_value("sys/creation_time")) or 0
        counts: dict[str, int] = {}
        latest: dict[str, tuple[int, int, float, int]] = {}
        offset = 0
        with closing(sqlite3.connect(self.db, timeout=300, isolation_level=None)) as conn:
            progress = conn.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = ?",
                                    (run_id, PROGRESS_TAG)).fetchone()
            if progress is not None:
                done, ignored = (int(x) for x in progress[0].split(":"))
            else:
                # No progress tag: a fresh run, or points an earlier attempt sent another way (REST, log_batch),
                # whose exact repeats cannot be told from the archive's own.
                done = int(checkpoint.get(CHECKPOINT_KEY, 0))
                fresh = conn.execute("SELECT 1 FROM metrics WHERE run_uuid = ? LIMIT 1", (run_id,)).fetchone() is None
                ignored = 0 if fresh else None
            for cols in self._metric_columns(run, plan, names, fallback_ts, result):
                value, is_nan = _stored_values(cols.values)
                _count(cols, counts)
                _merge_latest(cols, value, is_nan, latest)
                skip = min(max(done - offset, 0), cols.size)
                result.points += skip
                for start in range(skip, cols.size, ROWS_PER_TRANSACTION):
                    stop = min(cols.size, start + ROWS_PER_TRANSACTION)
                    dropped = self._insert(conn, run_id, cols, value, is_nan, start, stop, offset, ignored)
                    ignored = None if ignored is None else ignored + dropped
                    result.points += stop - start
                    ctx.on_points(stop - start)
                    checkpoint[CHECKPOINT_KEY] = offset + stop
                    ctx.save_checkpoint(dict(checkpoint))
                offset += cols.size
            stored = dict(
                conn.execute("SELECT key, COUNT(*) FROM metrics WHERE run_uuid = ? GROUP BY key", (run_id,)).fetchall()
            )
            latest_stored = {
                key: (step, timestamp)
                for key, step, timestamp in conn.execute(
                    "SELECT key, step, timestamp FROM latest_metrics WHERE run_uuid = ?", (run_id,)
                )
            }
        self._verify(run, run_id, counts, latest, stored, ignored, latest_stored)

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        run_id: str,
        cols: MetricColumns,
        value: np.ndarray,
        is_nan: np.ndarray,
        start: int,
        stop: int,
        offset: int,
        ignored: int | None,
    ) -> int:
        """Rows [start:stop) of a batch that begins at archive row `offset`, their effect on latest_metrics and the
        progress tag, in one transaction; returns rows ignored as exact repeats. Short transactions keep MLflow's
        own writers (tags, other runs) from waiting long."""
        batch_latest: dict[str, tuple[int, int, float, int]] = {}
        _merge_latest(cols, value, is_nan, batch_latest, start, stop)
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = conn.total_changes
            conn.executemany(_INSERT_METRICS, _rows(run_id, cols, value, is_nan, start, stop))
            dropped = (stop - start) - (conn.total_changes - before)
            conn.executemany(_UPSERT_LATEST, [(k, v, t, s, n, run_id) for k, (s, t, v, n) in batch_latest.items()])
            if ignored is not None:
                conn.execute(_UPSERT_PROGRESS, (PROGRESS_TAG, f"{offset + stop}:{ignored + dropped}", run_id))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return dropped

    def _verify(
        self,
        run: ArchivedRun,
        run_id: str,
        counts: dict[str, int],
        latest: dict[str, tuple[int, int, float, int]],
        stored: dict[str, int],
        ignored: int | None,
        latest_stored: dict[str, tuple[int, int]],
    ) -> None:
        """Points per key, and the latest point per key (its value as `MlflowClient.get_run` reports it, its step
        and timestamp from `latest_metrics`, which MLflow's API serves), against what the archive holds."""
        wrong = {k: (n, stored.get(k, 0)) for k, n in counts.items() if stored.get(k, 0) != n}
        extra = sorted(set(stored) - set(counts))
        if wrong and not extra and ignored is not None:
            # Exact repeats inside the archive are dropped by the primary key, as they are over REST; every row
            # ignored since the run's first point is such a repeat, so a shortfall of exactly that many is expected.
            shortfall = sum(n - got for n, got in wrong.values())
            if all(got < n for n, got in wrong.values()) and shortfall == ignored:
                wrong = {}
        if wrong or extra:
            detail = ", ".join(f"{k}: {got} stored, {n} in the archive" for k, (n, got) in sorted(wrong.items())[:5])
            if extra:
                detail += f"; keys not in the archive: {extra[:5]}"
            raise TargetError(f"run {run.ref.key}: bulk metric check failed ({detail})")
        reported = self.client.get_run(run_id).data.metrics
        for key, (step, timestamp, value, is_nan) in latest.items():
            got = reported.get(key)
            got_nan = isinstance(got, float) and math.isnan(got)
            if (
                got is None
                or latest_stored.get(key) != (step, timestamp)
                or got_nan != bool(is_nan)
                or (not is_nan and got != value)
            ):
                raise TargetError(
                    f"run {run.ref.key}: MLflow reports latest {key!r} as {got!r} at (step, timestamp) "
                    f"{latest_stored.get(key)}, expected {math.nan if is_nan else value!r} at {(step, timestamp)}"
                )


def _stored_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values as SqlAlchemyStore.sanitize_metric_value stores them: NaN as 0 with is_nan, +-inf as +-max double."""
    nan = np.isnan(values)
    stored = np.clip(values, -MAX_DOUBLE, MAX_DOUBLE)
    stored[nan] = 0.0
    return stored, nan.astype(np.int8)


def _rows(
    run_id: str, cols: MetricColumns, value: np.ndarray, is_nan: np.ndarray, start: int, stop: int
) -> Iterator[tuple[Any, ...]]:
    """Rows for executemany, made one at a time as SQLite consumes them (no list of tuples)."""
    part = slice(start, stop)
    keys = np.array(cols.series_keys, dtype=object)[cols.codes[part]]
    return zip(
        keys.tolist(),
        value[part].tolist(),
        cols.timestamps[part].tolist(),
        cols.steps[part].tolist(),
        is_nan[part].tolist(),
        itertools.repeat(run_id),
    )


def _count(cols: MetricColumns, counts: dict[str, int]) -> None:
    per_code = np.bincount(cols.codes, minlength=len(cols.series_keys))
    for key, n in zip(cols.series_keys, per_code.tolist(), strict=True):
        if n:
            counts[key] = counts.get(key, 0) + n


def _merge_latest(
    cols: MetricColumns,
    value: np.ndarray,
    is_nan: np.ndarray,
    latest: dict[str, tuple[int, int, float, int]],
    start: int = 0,
    stop: int | None = None,
) -> None:
    """Fold rows [start:stop) into `latest` {key: (step, timestamp, value, is_nan)}, the way MLflow does in order:
    the greatest (step, timestamp, value) wins and, among equals, the earliest row."""
    codes, steps, ts, vals, nans = (a[start:stop] for a in (cols.codes, cols.steps, cols.timestamps, value, is_nan))
    if len(codes) == 0:
        return
    # Sorting the reversed rows stably puts the earliest of equal rows last in each group.
    rev = slice(None, None, -1)
    order = np.lexsort((vals[rev], ts[rev], steps[rev], codes[rev]))
    sorted_codes = codes[rev][order]
    last = np.flatnonzero(np.append(sorted_codes[1:] != sorted_codes[:-1], True))
    picks = (len(codes) - 1) - order[last]
    for i in picks.tolist():
        key = cols.series_keys[codes[i]]
        candidate = (int(steps[i]), int(ts[i]), float(vals[i]), int(nans[i]))
        current = latest.get(key)
        if current is None or candidate[:3] > current[:3]:
            latest[key] = candidate
