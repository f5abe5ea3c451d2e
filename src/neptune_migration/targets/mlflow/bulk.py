"""Opt-in bulk path into an MLflow store the user owns: `sqlite:///` or `postgresql://` (docs/mlflow.md).

Runs, params, tags, artifacts and termination go through MLflow's API exactly as in `MlflowTarget`; only the
metric points are written straight into `metrics` and `latest_metrics`. MLflow's own store spends most of its time
building SQLAlchemy objects per point, while the insert itself is cheap. This module is the part both databases
share (the order of the rows, the transactions, the resume rule and the check after each run; the pieces the
writers see are in `bulk_core`); how rows reach a database is `bulk_sqlite` (`executemany`) and `bulk_postgres`
(binary `COPY`).

Writing another program's tables is only safe for the schema we read: the store's `alembic_version` must be one of
the revisions the tests ran this module on (`SCHEMA_REVISIONS`, MLflow 3.17.2 and 3.18.0), and the tables it writes
must have the columns and keys it expects, otherwise the target refuses to start. Every row follows
`SqlAlchemyStore`: NaN is stored as value 0 with `is_nan` set, +-inf as +-max double, and `latest_metrics` keeps
the point with the greatest (step, timestamp, value), the first one on a tie. After each run the points per key and
the latest values are read back (latest values through `MlflowClient.get_run`) and compared.

Resuming: each transaction also writes the run's tag `neptune.bulk_rows` = "<archive rows committed>:<rows ignored
as exact repeats>", so progress and data commit together and a rerun starts exactly after the committed rows.
`metrics`' primary key covers every column, so a point the archive holds twice is dropped by the key; the
running count of those is what lets the check after the run tell them from lost points, however many attempts
the run took.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import to_ms
from neptune_migration.errors import TargetError
from neptune_migration.retry import Patience
from neptune_migration.targets.base import LoadContext, LoadResult
from neptune_migration.targets.mlflow.bulk_core import (
    CHECKPOINT_KEY,
    MAX_DOUBLE,
    PROGRESS_TAG,
    SCHEMA_REVISIONS,
    BulkSession,
    BulkStore,
    Chunk,
)
from neptune_migration.targets.mlflow.bulk_postgres import PostgresBulkStore
from neptune_migration.targets.mlflow.bulk_sqlite import SqliteBulkStore
from neptune_migration.targets.mlflow.endpoint import database_of
from neptune_migration.targets.mlflow.loader import MetricColumns, MlflowTarget, default_tracking_uri, public_uri
from neptune_migration.targets.mlflow.scales import StepPlan
from neptune_migration.targets.mlflow.store_schema import check_store_schema

__all__ = ["CHECKPOINT_KEY", "PROGRESS_TAG", "ROWS_PER_TRANSACTION", "SCHEMA_REVISIONS", "MlflowBulkTarget"]

ROWS_PER_TRANSACTION = 20_000


def open_store(tracking_uri: str, allow_other_writers: bool = False) -> BulkStore:
    if tracking_uri.startswith("sqlite:///"):
        return SqliteBulkStore(tracking_uri)
    if database_of(tracking_uri) == "postgresql":
        return PostgresBulkStore(tracking_uri, allow_other_writers)
    raise TargetError(
        "the MLflow bulk path needs a sqlite:/// or postgresql:// tracking URI (a database you own), not "
        f"{public_uri(tracking_uri)}"
    )


class MlflowBulkTarget(MlflowTarget):
    """`MlflowTarget` whose metric points go straight into the store's tables."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_by: str = "project",
        experiment_prefix: str = "",
        upload_workers: int = 4,
        patience: Patience | None = None,
        allow_other_writers: bool = False,
        writer: str | None = None,
    ) -> None:
        self.store = open_store(tracking_uri or default_tracking_uri(), allow_other_writers)
        # A store at another version must be refused before MLflow's client opens (and might migrate) it: first
        # one our client would upgrade (whose way forward is not a load without the bulk option), then one at our
        # client's schema that the bulk path was never tested on.
        check_store_schema(self.store.client_uri, public_uri(self.store.uri))
        self.store.check_before_open()
        super().__init__(self.store.client_uri, experiment_by, experiment_prefix, upload_workers, patience=patience,
                         writer=writer)
        # The ledger key and every message name the store as the user gave it.
        self.tracking_uri = self.store.uri
        self.store.check_opened()

    @property
    def db(self) -> Path | None:
        """The SQLite file, for callers that read it directly; None for a database server."""
        return getattr(self.store, "db", None)

    def _log_metrics(
        self,
        run_id: str,
        run: ArchivedRun,
        ctx: LoadContext,
        checkpoint: dict[str, Any],
        result: LoadResult,
        staging: Path,
        uploads: list[Future[None]],
        steps: StepPlan,
        held: Any = None,  # unused: the rows counted in the run's own tag resume a bulk load exactly
    ) -> None:
        if any(ctx.held(path) for path in steps.decimals):
            # A wider load into a run that holds some series: the row counts the bulk resume and check rest on
            # are the whole run's, so the added series go through MLflow's store like any other load.
            super()._log_metrics(run_id, run, ctx, checkpoint, result, staging, uploads, steps, held)
            return
        plan, names = self._prepare_metrics(run_id, run, ctx, result, steps)
        if not plan:
            return
        fallback_ts = to_ms(run.atom_value("sys/creation_time")) or 0
        counts: dict[str, int] = {}
        latest: dict[str, tuple[int, int, float, int]] = {}
        offset = 0
        # One writer thread per run: the next chunk is read and encoded while the database stores this one.
        with closing(self.store.session()) as session, ThreadPoolExecutor(1, "mlflow-bulk") as writer:
            progress = session.progress(run_id)
            if progress is not None:
                done, ignored = (int(x) for x in progress.split(":"))
            else:
                # No progress tag: a fresh run, or points an earlier attempt sent another way (REST, log_batch),
                # whose exact repeats cannot be told from the archive's own.
                done = int(checkpoint.get(CHECKPOINT_KEY, 0))
                ignored = 0 if not session.has_points(run_id) else None
            state: dict[str, Any] = {"ignored": ignored, "failed": False}
            pending: tuple[Future[int], int, int] | None = None
            for cols in self._metric_columns(run, plan, names, fallback_ts, result):
                value, is_nan = _stored_values(cols.values)
                _count(cols, counts)
                _merge_latest(cols, value, is_nan, latest)
                skip = min(max(done - offset, 0), cols.size)
                result.points += skip
                for start in range(skip, cols.size, ROWS_PER_TRANSACTION):
                    stop = min(cols.size, start + ROWS_PER_TRANSACTION)
                    batch_latest: dict[str, tuple[int, int, float, int]] = {}
                    _merge_latest(cols, value, is_nan, batch_latest, start, stop)
                    chunk = Chunk(run_id, cols, value, is_nan, start, stop, batch_latest)
                    submitted = writer.submit(_write_chunk, session, chunk, offset + stop, state)
                    if pending is not None:
                        self._settle_chunk(pending, ctx, checkpoint, result)
                    pending = (submitted, chunk.size, offset + stop)
                offset += cols.size
            if pending is not None:
                self._settle_chunk(pending, ctx, checkpoint, result)
            stored = session.stored_counts(run_id)
            latest_stored = session.latest_stored(run_id)
        self._verify(run, run_id, counts, latest, stored, state["ignored"], latest_stored)

    @staticmethod
    def _settle_chunk(pending: tuple[Future[int], int, int], ctx: LoadContext, checkpoint: dict[str, Any],
                      result: LoadResult) -> None:
        future, size, rows_done = pending
        future.result()
        result.points += size
        ctx.on_points(size)
        checkpoint[CHECKPOINT_KEY] = rows_done
        ctx.save_checkpoint(dict(checkpoint))

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


def _write_chunk(session: BulkSession, chunk: Chunk, rows_done: int, state: dict[str, Any]) -> int:
    """One chunk on the writer thread. Chunks run one after another, so the running count of dropped repeats is
    that of every earlier chunk; the progress tag also needs this chunk's own count, which the session learns
    inside the transaction."""
    if state.get("failed"):
        # The loading thread hands out the next chunk before it learns that this one failed: writing it would move
        # the progress tag past rows that were never stored.
        raise TargetError("an earlier chunk of this run failed; nothing after it is written")
    before = state["ignored"]
    try:
        dropped = session.write(chunk, None if before is None else (rows_done, before))
    except BaseException:
        state["failed"] = True
        raise
    if before is not None:
        state["ignored"] = before + dropped
    return dropped


def _stored_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values as SqlAlchemyStore.sanitize_metric_value stores them: NaN as 0 with is_nan, +-inf as +-max double."""
    nan = np.isnan(values)
    stored = np.clip(values, -MAX_DOUBLE, MAX_DOUBLE)
    stored[nan] = 0.0
    return stored, nan.astype(np.int8)


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
