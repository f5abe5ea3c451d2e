"""The bulk path's PostgreSQL side: binary `COPY` (psycopg 3) into an MLflow `postgresql://` store.

Per transaction (at most `bulk.ROWS_PER_TRANSACTION` points): the points are copied in PostgreSQL's binary format,
encoded straight from the numpy columns, into MLflow's `metrics` table, inside a savepoint. A copy cannot skip a
row the primary key already holds (an exact repeat, which MLflow's own store drops): when one is met, the
savepoint is rolled back and from then on this session copies into a temporary table of its own (`pg_temp`,
emptied at each commit) and moves the rows with `INSERT ... SELECT ... ON CONFLICT DO NOTHING`, counting what the
key dropped. The same transaction upserts `latest_metrics` (only when strictly more recent, as MLflow does) and
the progress tag. MLflow's schema is never touched.

Each `metrics` row costs the server three index entries and the foreign-key check on `runs` (a trigger per row,
about a quarter of the insert's time, measured here). The run was created through MLflow's store just before and
no other writer is allowed, so a session whose role may set `session_replication_role` (a superuser, or a role
granted `SET` on it) sets it to `replica` for itself only, which skips that per-row trigger the way `pg_restore
--disable-triggers` does (for the session's `latest_metrics` and `tags` upserts as well, whose run is the same);
any other role keeps the check. `metrics` has no other trigger.

Every session of ours (this writer, and MLflow's own engine for runs, params and tags) carries the
application_name `neptune-migrate`, so that the sessions of anything else connected to the same database (an
MLflow server above all) can be told apart: the bulk path refuses to start, and each run refuses to write, while
one is connected, unless the user allows other writers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neptune_migration.errors import TargetError, require
from neptune_migration.secrets import redact
from neptune_migration.targets.mlflow.bulk_core import (
    PROGRESS_TAG,
    Chunk,
    check_schema,
    check_tables,
    progress_value,
)
from neptune_migration.targets.mlflow.endpoint import APPLICATION_NAME, naming_our_sessions
from neptune_migration.targets.mlflow.loader import public_uri

STAGING_TABLE = "neptune_bulk_points"
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"
_CREATE_STAGING = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGING_TABLE} (code int4, value float8, timestamp int8, step int8, "
    "is_nan bool) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY {STAGING_TABLE} (code, value, timestamp, step, is_nan) FROM STDIN (FORMAT BINARY)"
_COPY_METRICS = "COPY metrics (key, value, timestamp, step, is_nan, run_uuid) FROM STDIN (FORMAT BINARY)"
_MOVE = (
    "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) "
    f"SELECT (%s::text[])[code + 1], value, timestamp, step, is_nan, %s FROM {STAGING_TABLE} ON CONFLICT DO NOTHING"
)
# Same rule as SqlAlchemyStore._update_latest_metrics_if_necessary: replace only when strictly more recent.
_UPSERT_LATEST = (
    "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (%s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp, "
    "step = excluded.step, is_nan = excluded.is_nan "
    "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
    "(latest_metrics.step, latest_metrics.timestamp, latest_metrics.value)"
)
_UPSERT_PROGRESS = (
    "INSERT INTO tags (key, value, run_uuid) VALUES (%s, %s, %s) ON CONFLICT (key, run_uuid) DO UPDATE SET "
    "value = excluded.value"
)
# Client sessions on this database that are not ours (nor another neptune-migrate's, which claim experiments).
_OTHER_SESSIONS = (
    "SELECT coalesce(nullif(application_name, ''), '(no application name)'), count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
    "AND application_name NOT LIKE %s GROUP BY 1 ORDER BY 2 DESC, 1"
)


def binary_tuples(columns: list[tuple[str, str, Any]]) -> bytes:
    """Rows in PostgreSQL's binary COPY format (without header and trailer) from columns of equal length, each
    (name, numpy big-endian type, values or one value for every row): per row the field count, then each field's
    byte length (its type's size) and value. No Python object per row."""
    n = next(len(v) for _, _, v in columns if isinstance(v, np.ndarray))
    rows = np.empty(n, np.dtype([("fields", ">i2")] + [x for name, kind, _ in columns
                                                       for x in ((f"{name}_len", ">i4"), (name, kind))]))
    rows["fields"] = len(columns)
    for name, kind, values in columns:
        rows[f"{name}_len"] = np.dtype(kind).itemsize
        rows[name] = values
    return rows.tobytes()


def encode_metrics_copy(chunk: Chunk) -> bytes:
    """The chunk's rows as `metrics` rows. The key is text of its own length, so the rows go one series at a time,
    each with a record type fixed by its key's length (row order does not matter to a table)."""
    part = slice(chunk.start, chunk.stop)
    codes = chunk.cols.codes[part]
    by_series = np.argsort(codes, kind="stable")
    sorted_codes, order = codes[by_series], by_series + chunk.start
    starts = np.flatnonzero(np.diff(sorted_codes, prepend=-1)).tolist()  # where each series' rows begin
    run = chunk.run_id.encode()
    pieces = [_COPY_HEADER]
    for lo, hi in zip(starts, [*starts[1:], len(order)], strict=True):
        rows = order[lo:hi]
        key = chunk.cols.series_keys[int(sorted_codes[lo])].encode()
        pieces.append(binary_tuples([
            ("key", f"S{len(key)}", key), ("value", ">f8", chunk.value[rows]),
            ("timestamp", ">i8", chunk.cols.timestamps[rows]), ("step", ">i8", chunk.cols.steps[rows]),
            ("is_nan", "u1", chunk.is_nan[rows]), ("run", f"S{len(run)}", run),
        ]))
    pieces.append(_COPY_TRAILER)
    return b"".join(pieces)


def encode_copy(chunk: Chunk) -> bytes:
    """The chunk's rows for the staging table: the key as its code in `series_keys`."""
    part = slice(chunk.start, chunk.stop)
    return _COPY_HEADER + binary_tuples([
        ("code", ">i4", chunk.cols.codes[part]), ("value", ">f8", chunk.value[part]),
        ("timestamp", ">i8", chunk.cols.timestamps[part]), ("step", ">i8", chunk.cols.steps[part]),
        ("is_nan", "u1", chunk.is_nan[part]),
    ]) + _COPY_TRAILER


class PostgresBulkStore:
    def __init__(self, tracking_uri: str, allow_other_writers: bool = False) -> None:
        from sqlalchemy.engine import make_url

        require("psycopg", "postgres", "--mlflow-bulk with a postgresql:// tracking URI")
        self.uri = tracking_uri
        self.allow_other_writers = allow_other_writers
        self.client_uri = naming_our_sessions(tracking_uri)
        try:
            named = make_url(self.client_uri)
        except Exception:
            raise TargetError(f"not a database URL: {public_uri(tracking_uri)}") from None
        self._connect_args: dict[str, Any] = {
            key: value for key, value in (("host", named.host), ("port", named.port), ("user", named.username),
                                          ("password", named.password), ("dbname", named.database))
            if value is not None
        }
        for key, value in named.query.items():
            self._connect_args[key] = value if isinstance(value, str) else value[-1]

    def connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(autocommit=True, connect_timeout=30, **self._connect_args)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            raise TargetError(f"cannot open the PostgreSQL store {public_uri(self.uri)}: {redact(reason)[:300]}") \
                from None

    def _revision(self, conn: Any) -> tuple[bool, str | None]:
        """(whether MLflow's tables exist, the alembic revision if recorded)."""
        versioned, mlflow = conn.execute(
            "SELECT to_regclass('alembic_version') IS NOT NULL, to_regclass('metrics') IS NOT NULL"
        ).fetchone()
        if not versioned:
            return bool(mlflow), None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return True, row[0] if row else None

    def check_before_open(self) -> None:
        with self.connect() as conn:
            exists, found = self._revision(conn)
            if exists:
                check_schema(public_uri(self.uri), found)
            self._check_writers(conn)

    def check_opened(self) -> None:
        with self.connect() as conn:
            found = self._revision(conn)[1]
        check_schema(public_uri(self.uri), found)
        check_tables(self.client_uri, public_uri(self.uri))

    def _check_writers(self, conn: Any) -> None:
        if self.allow_other_writers:
            return
        others = conn.execute(_OTHER_SESSIONS, (APPLICATION_NAME + "%",)).fetchall()
        if others:
            who = ", ".join(f"{n} x {name!r}" for name, n in others[:5])
            raise TargetError(
                f"MLflow bulk path refused: {sum(n for _, n in others)} other session(s) are connected to "
                f"{public_uri(self.uri)} ({who}), such as an MLflow server writing the same store; stop them, or "
                "pass --mlflow-bulk-allow-writers if they never write the runs being loaded"
            )

    def session(self) -> PostgresBulkSession:
        conn = self.connect()
        try:
            # Again before each run's points: a server may have connected since the load started.
            self._check_writers(conn)
            return PostgresBulkSession(conn)
        except BaseException:
            conn.close()
            raise


class PostgresBulkSession:
    def __init__(self, conn: Any) -> None:
        # autocommit: reads take no snapshot for longer than a statement; writes use explicit transactions.
        import psycopg

        self.conn = conn
        conn.execute(_CREATE_STAGING)
        try:
            conn.execute("SET session_replication_role = replica")
            self.triggers_skipped = True
        except psycopg.errors.InsufficientPrivilege:
            self.triggers_skipped = False
        # A copy straight into `metrics` costs the server less than ON CONFLICT's speculative insertion from the
        # staging table; it is tried first, inside a savepoint, until a chunk holds a row already stored (an exact
        # repeat): from then on this session takes the ON CONFLICT path.
        self._plain = True

    def progress(self, run_id: str) -> str | None:
        row = self.conn.execute("SELECT value FROM tags WHERE run_uuid = %s AND key = %s",
                                (run_id, PROGRESS_TAG)).fetchone()
        return row[0] if row else None

    def has_points(self, run_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM metrics WHERE run_uuid = %s LIMIT 1", (run_id,)).fetchone() is not None

    def write(self, chunk: Chunk, progress: tuple[int, int] | None) -> int:
        run_id = chunk.run_id
        with self.conn.transaction(), self.conn.cursor() as cur:
            dropped = self._store(cur, chunk)
            cur.executemany(_UPSERT_LATEST, [(k, v, t, s, bool(n), run_id) for k, (s, t, v, n) in chunk.latest.items()])
            if progress is not None:
                cur.execute(_UPSERT_PROGRESS, (PROGRESS_TAG, progress_value(progress, dropped), run_id))
        return dropped

    def _store(self, cur: Any, chunk: Chunk) -> int:
        """The chunk's rows into `metrics`; returns how many the primary key dropped."""
        import psycopg

        if self._plain:
            try:
                with self.conn.transaction(), cur.copy(_COPY_METRICS) as copy:
                    copy.write(encode_metrics_copy(chunk))
                return 0
            except psycopg.errors.UniqueViolation:
                self._plain = False
        with cur.copy(_COPY) as copy:
            copy.write(encode_copy(chunk))
        cur.execute(_MOVE, (chunk.cols.series_keys, chunk.run_id))
        return chunk.size - cur.rowcount

    def stored_counts(self, run_id: str) -> dict[str, int]:
        rows = self.conn.execute("SELECT key, COUNT(*) FROM metrics WHERE run_uuid = %s GROUP BY key", (run_id,))
        return dict(rows.fetchall())

    def latest_stored(self, run_id: str) -> dict[str, tuple[int, int]]:
        rows = self.conn.execute("SELECT key, step, timestamp FROM latest_metrics WHERE run_uuid = %s", (run_id,))
        return {key: (step, timestamp) for key, step, timestamp in rows.fetchall()}

    def close(self) -> None:
        self.conn.close()
