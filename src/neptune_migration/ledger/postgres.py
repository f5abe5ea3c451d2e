"""The ledger in PostgreSQL (`--state postgresql://USER:PASSWORD@HOST:PORT/DB`): the same rows and the same methods
as the SQLite ledger, shared by several drivers and by a cluster's workers.

Where SQLite has one owner per file (a flock), PostgreSQL has one holder per run: `start` claims the row with the
caller's id and a lease, renewed by a heartbeat while the work goes on. A row another holder took and keeps
renewing cannot be started (`RunClaimed`) nor written; once its lease ran out (the holder was killed, or its
machine died) it is free again, and the next attempt resumes from the checkpoint the dead one saved. Lease times
are the database's clock, so drivers and workers on machines with skewed clocks still agree.

The tool creates and migrates its tables itself: `neptune_migration_schema` records the version.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.ledger.sqlite import (
    RUNNING,
    Entry,
    Ledger,
    Loaded,
    SyncState,
    _entry,
    _json,
    _loaded,
    sync_entry,
)
from neptune_migration.naming import short_hash
from neptune_migration.secrets import redact, register
from neptune_migration.vocabulary import RunRef

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
SCHEMA_VERSION = 3
TABLE = "neptune_migration_progress"
SYNC_TABLE = "neptune_migration_sync_state"
LOADED_TABLE = "neptune_migration_loaded"
DEFAULT_LEASE_SECONDS = 60.0
# Taken while the schema is created or migrated, so two drivers starting at once do not both run a migration.
_SCHEMA_LOCK = 0x6E6D6967  # "nmig"
_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
_SYNC_COLUMNS = "project_id, run_id, target, archive_parts, loaded_parts, syncs, synced_at, gained, updated_at"
_COLUMNS = "project_id, run_id, stage, target, status, attempts, last_error, target_id, checkpoint, details, updated_at"

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            project_id  TEXT NOT NULL,
            run_id      TEXT NOT NULL,
            stage       TEXT NOT NULL,
            target      TEXT NOT NULL,
            status      TEXT NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            last_error  TEXT,
            target_id   TEXT,
            checkpoint  TEXT,
            details     TEXT,
            updated_at  DOUBLE PRECISION NOT NULL,
            owner       TEXT,
            lease_until DOUBLE PRECISION,
            PRIMARY KEY (project_id, run_id, stage, target)
        )""",
        f"CREATE INDEX IF NOT EXISTS {TABLE}_stage_target ON {TABLE} (stage, target)",
    ],
    # `migrate --sync`: how much of each run's archive a target holds, and what the last sync added.
    2: [
        f"""CREATE TABLE IF NOT EXISTS {SYNC_TABLE} (
            project_id    TEXT NOT NULL,
            run_id        TEXT NOT NULL,
            target        TEXT NOT NULL,
            archive_parts INTEGER NOT NULL,
            loaded_parts  INTEGER NOT NULL,
            syncs         INTEGER NOT NULL DEFAULT 0,
            synced_at     DOUBLE PRECISION,
            gained        TEXT,
            updated_at    DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (project_id, run_id, target)
        )""",
    ],
    # What each target run holds (placement, the selections that wrote it, mapping version); loads done before
    # keep their mapping version, their placement is asked of the target.
    3: [
        f"""CREATE TABLE IF NOT EXISTS {LOADED_TABLE} (
            project_id      TEXT NOT NULL,
            run_id          TEXT NOT NULL,
            target          TEXT NOT NULL,
            placement       TEXT,
            selection       TEXT,
            mapping_version INTEGER,
            updated_at      DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (project_id, run_id, target)
        )""",
        f"""INSERT INTO {LOADED_TABLE} (project_id, run_id, target, mapping_version, updated_at)
            SELECT project_id, run_id, target, COALESCE((details::json->>'mapping_version')::int, 1), updated_at
            FROM {TABLE} WHERE stage = 'load' AND status = 'done' ON CONFLICT DO NOTHING""",
    ],
}
# A row may be written by its holder, or by anyone once it is not held (settled, or its lease ran out).
_FREE = f"(status <> '{RUNNING}' OR owner = %s OR owner IS NULL OR lease_until IS NULL OR lease_until < {_NOW})"


class RunClaimed(MigrationError):
    """Another driver or worker holds this run of this stage: not a failure, the run is tried again later."""

    def __init__(self, key: str, stage: str, holder: str | None, seconds_left: float | None) -> None:
        left = f", its lease ends in {seconds_left:.0f} s unless renewed" if seconds_left is not None else ""
        super().__init__(f"run {key} ({stage}) is being worked on by {holder or 'another process'}{left}")
        self.key, self.stage, self.holder, self.seconds_left = key, stage, holder, seconds_left

    def __reduce__(self) -> tuple[Any, ...]:  # raised on a cluster worker, re-raised on the driver
        return (RunClaimed, (self.key, self.stage, self.holder, self.seconds_left))


def is_database_uri(text: str) -> bool:
    return text.split("://", 1)[0].lower() in SCHEMES and "://" in text


def redact_uri(uri: str) -> str:
    """The URI with its password replaced, for messages and `status`."""
    parts = urlsplit(uri)
    if parts.password is None:
        return redact(uri)
    host = parts.netloc.rsplit("@", 1)[1]
    return redact(urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}")))


def lease_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("NEPTUNE_MIGRATION_LEASE_SECONDS", DEFAULT_LEASE_SECONDS)))
    except ValueError:
        return DEFAULT_LEASE_SECONDS


class PostgresLedger(Ledger):
    """`Ledger` over PostgreSQL (psycopg 3). Thread-safe like the SQLite one: one connection behind the mutex."""

    def __init__(self, uri: str, lease: float | None = None, connect_timeout: float = 10.0) -> None:
        parts = urlsplit(uri)
        register(parts.password)
        self.uri = uri
        self.path = redact_uri(uri)  # type: ignore[assignment] - what messages and `status` show
        self.lease = lease or lease_seconds()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._connect_timeout = connect_timeout
        try:
            import psycopg
        except ImportError:
            raise UsageError("--state postgresql://... needs psycopg 3: pip install 'neptune-migration[postgres]'"
                             ) from None
        self._psycopg = psycopg
        self._conninfo = uri.replace("postgresql+psycopg://", "postgresql://", 1)
        self._db = self._connect()
        self._migrate()
        self._mutex = threading.Lock()
        self._running: set[tuple[str, str, str, str]] = set()
        self._frozen = False
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._stop_heartbeat = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # -- connection -------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self._conninfo, autocommit=True,
                                         connect_timeout=max(1, int(self._connect_timeout)))
        except self._psycopg.Error as exc:
            raise MigrationError(f"cannot open the ledger {self.path}: {redact(str(exc).strip())}") from None

    def _migrate(self) -> None:
        db = self._db
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS neptune_migration_schema (version INTEGER NOT NULL)")
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM neptune_migration_schema").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise MigrationError(f"the ledger {self.path} has schema version {current}, newer than this "
                                     f"neptune-migration knows ({SCHEMA_VERSION}): upgrade neptune-migration")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[version]:
                    db.execute(statement)
                db.execute("INSERT INTO neptune_migration_schema (version) VALUES (%s)", (version,))

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """One statement; a connection the server or the network dropped is opened again once."""
        try:
            return self._db.execute(sql, args)
        except self._psycopg.OperationalError:
            if not self._db.closed and not self._db.broken:
                raise
            self._db = self._connect()
            return self._db.execute(sql, args)

    # -- reads ------------------------------------------------------------------------------------------
    def get(self, ref: RunRef, stage: str, target: str) -> Entry | None:
        with self._locked():
            row = self._exec(f"SELECT {_COLUMNS} FROM {TABLE} WHERE project_id=%s AND run_id=%s AND stage=%s "
                             "AND target=%s", (ref.project_id, ref.run_id, stage, target)).fetchone()
        return _entry(row) if row else None

    def entries(self, stage: str | None = None, target: str | None = None) -> Any:
        sql, args = f"SELECT {_COLUMNS} FROM {TABLE} WHERE TRUE", []
        if stage:
            sql += " AND stage=%s"
            args.append(stage)
        if target:
            sql += " AND target=%s"
            args.append(target)
        sql += " ORDER BY project_id, run_id, stage, target"
        with self._locked():
            rows = self._exec(sql, tuple(args)).fetchall()
        for row in rows:
            yield _entry(row)

    def holder(self, ref: RunRef, stage: str, target: str) -> tuple[str | None, float | None] | None:
        """(holder, seconds its lease has left) of a running row; None when nobody holds it."""
        with self._locked():
            row = self._exec(f"SELECT owner, lease_until - {_NOW} FROM {TABLE} WHERE project_id=%s AND run_id=%s "
                             f"AND stage=%s AND target=%s AND status='{RUNNING}' AND lease_until >= {_NOW}",
                             (ref.project_id, ref.run_id, stage, target)).fetchone()
        return (row[0], row[1]) if row else None

    # -- writes -----------------------------------------------------------------------------------------
    def start(self, ref: RunRef, stage: str, target: str) -> Entry:
        """Claim the run for this stage and keep its checkpoint; `RunClaimed` while another holder's lease lives."""
        key = (ref.project_id, ref.run_id, stage, target)
        with self._locked():
            row = self._exec(
                f"""INSERT INTO {TABLE} AS p (project_id, run_id, stage, target, status, attempts, updated_at, owner,
                                              lease_until)
                    VALUES (%s, %s, %s, %s, '{RUNNING}', 1, %s, %s, {_NOW} + %s)
                    ON CONFLICT (project_id, run_id, stage, target) DO UPDATE
                    SET status=EXCLUDED.status, attempts=p.attempts+1, updated_at=EXCLUDED.updated_at,
                        owner=EXCLUDED.owner, lease_until=EXCLUDED.lease_until
                    WHERE p.status <> '{RUNNING}' OR p.owner IS NULL OR p.lease_until IS NULL OR p.lease_until < {_NOW}
                    RETURNING {", ".join("p." + c.strip() for c in _COLUMNS.split(","))}""",
                (*key, time.time(), self.owner, self.lease),
            ).fetchone()
            if row is not None:
                self._running.add(key)
        if row is None:
            held = self.holder(ref, stage, target) or (None, None)
            raise RunClaimed(ref.key, stage, *held)
        self._beat()
        return _entry(row)

    def _update(self, ref: RunRef, stage: str, target: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        settled = fields.get("status", RUNNING) != RUNNING
        assignments = ", ".join(f"{name}=%s" for name in fields)
        # Settling a row ends its lease; saving a checkpoint renews it.
        assignments += ", lease_until=NULL" if settled else f", lease_until={_NOW} + {float(self.lease)}"
        key = (ref.project_id, ref.run_id, stage, target)
        with self._locked():
            if settled:
                self._running.discard(key)
            cur = self._exec(
                f"UPDATE {TABLE} SET {assignments} WHERE project_id=%s AND run_id=%s AND stage=%s AND target=%s "
                f"AND {_FREE}", (*fields.values(), *key, self.owner))
            taken = cur.rowcount == 0 and self._exec(
                f"SELECT 1 FROM {TABLE} WHERE project_id=%s AND run_id=%s AND stage=%s AND target=%s",
                key).fetchone() is not None
        if taken:  # another holder took the run over (our lease ran out while we were stopped): stop writing
            held = self.holder(ref, stage, target) or (None, None)
            raise RunClaimed(ref.key, stage, *held)

    def _ensure(self, ref: RunRef, stage: str, target: str) -> None:
        with self._locked():
            self._exec(f"""INSERT INTO {TABLE} (project_id, run_id, stage, target, status, attempts, updated_at)
                           VALUES (%s, %s, %s, %s, 'pending', 0, %s) ON CONFLICT DO NOTHING""",
                       (ref.project_id, ref.run_id, stage, target, time.time()))

    def interrupt_running(self, timeout: float = -1) -> int:
        if not self._mutex.acquire(timeout=timeout):
            return 0
        try:
            if self._frozen:
                return 0
            rows = sorted(self._running)
            for key in rows:
                with contextlib.suppress(self._psycopg.Error):  # also called on the way out of a dying process
                    self._exec(
                        f"UPDATE {TABLE} SET status='interrupted', last_error=%s, updated_at=%s, lease_until=NULL "
                        f"WHERE project_id=%s AND run_id=%s AND stage=%s AND target=%s AND status='{RUNNING}' "
                        "AND owner=%s", ("interrupted before it finished", time.time(), *key, self.owner))
            self._running.clear()
            return len(rows)
        finally:
            self._mutex.release()

    def reset(self, ref: RunRef, stage: str, target: str) -> None:
        with self._locked():
            self._running.discard((ref.project_id, ref.run_id, stage, target))
            self._exec(f"DELETE FROM {TABLE} WHERE project_id=%s AND run_id=%s AND stage=%s AND target=%s",
                       (ref.project_id, ref.run_id, stage, target))

    # -- the lease --------------------------------------------------------------------------------------
    def _beat(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._renew, name="ledger-lease", daemon=True)
            self._heartbeat.start()

    def _renew(self) -> None:
        """Every third of the lease, the runs this holder has in flight (not any row it left `running` after a
        failed write: that one expires) are renewed."""
        while not self._stop_heartbeat.wait(self.lease / 3):
            with self._mutex:
                if self._frozen:
                    continue
                for key in sorted(self._running):
                    with contextlib.suppress(self._psycopg.Error):  # the next beat tries again; the lease lasts
                        self._exec(f"UPDATE {TABLE} SET lease_until={_NOW} + %s WHERE project_id=%s AND run_id=%s "
                                   f"AND stage=%s AND target=%s AND owner=%s AND status='{RUNNING}'",
                                   (self.lease, *key, self.owner))

    def identity(self) -> str:
        return short_hash(str(self.path), 16)  # the URI without its password

    # -- what each target run holds --------------------------------------------------------------------
    def loaded(self, ref: RunRef, target: str) -> Loaded | None:
        with self._locked():
            row = self._exec(f"SELECT placement, selection, mapping_version FROM {LOADED_TABLE} WHERE project_id=%s "
                             "AND run_id=%s AND target=%s", (ref.project_id, ref.run_id, target)).fetchone()
        return _loaded(ref, target, row) if row else None

    def record_loaded(self, ref: RunRef, target: str, placement: dict[str, Any] | None,
                      selection: dict[str, Any] | None = None, mapping_version: int | None = None) -> None:
        with self._locked():
            self._exec(
                f"""INSERT INTO {LOADED_TABLE} AS l (project_id, run_id, target, placement, selection,
                    mapping_version, updated_at) VALUES (%s, %s, %s, %s, %s, %s, {_NOW})
                    ON CONFLICT (project_id, run_id, target) DO UPDATE SET placement=EXCLUDED.placement,
                    selection=COALESCE(EXCLUDED.selection, l.selection),
                    mapping_version=COALESCE(EXCLUDED.mapping_version, l.mapping_version),
                    updated_at=EXCLUDED.updated_at""",
                (ref.project_id, ref.run_id, target, _json(placement), _json(selection), mapping_version))

    def forget_loaded(self, ref: RunRef, target: str) -> None:
        with self._locked():
            self._exec(f"DELETE FROM {LOADED_TABLE} WHERE project_id=%s AND run_id=%s AND target=%s",
                       (ref.project_id, ref.run_id, target))

    # -- sync (migrate --sync) ----------------------------------------------------------------------------
    def sync_state(self, ref: RunRef, target: str) -> SyncState | None:
        with self._locked():
            row = self._exec(f"SELECT {_SYNC_COLUMNS} FROM {SYNC_TABLE} WHERE project_id=%s AND run_id=%s AND "
                             "target=%s", (ref.project_id, ref.run_id, target)).fetchone()
        return sync_entry(row) if row else None

    def sync_states(self) -> list[SyncState]:
        with self._locked():
            rows = self._exec(f"SELECT {_SYNC_COLUMNS} FROM {SYNC_TABLE} ORDER BY project_id, run_id, target"
                              ).fetchall()
        return [sync_entry(r) for r in rows]

    def set_sync_parts(self, ref: RunRef, target: str, *, archive_parts: int, loaded_parts: int | None = None) -> None:
        with self._locked():
            self._exec(
                f"""INSERT INTO {SYNC_TABLE} (project_id, run_id, target, archive_parts, loaded_parts, syncs,
                    updated_at) VALUES (%s, %s, %s, %s, %s, 0, {_NOW})
                    ON CONFLICT (project_id, run_id, target) DO UPDATE SET archive_parts=excluded.archive_parts,
                    loaded_parts=COALESCE(%s, {SYNC_TABLE}.loaded_parts), updated_at=excluded.updated_at""",
                (ref.project_id, ref.run_id, target, archive_parts,
                 loaded_parts if loaded_parts is not None else archive_parts, loaded_parts))

    def record_sync(self, ref: RunRef, target: str, parts: int, gained: dict[str, Any]) -> None:
        with self._locked():
            self._exec(
                f"""INSERT INTO {SYNC_TABLE} (project_id, run_id, target, archive_parts, loaded_parts, syncs,
                    synced_at, gained, updated_at) VALUES (%s, %s, %s, %s, %s, 1, {_NOW}, %s, {_NOW})
                    ON CONFLICT (project_id, run_id, target) DO UPDATE SET archive_parts=excluded.archive_parts,
                    loaded_parts=excluded.loaded_parts, syncs={SYNC_TABLE}.syncs+1, synced_at=excluded.synced_at,
                    gained=excluded.gained, updated_at=excluded.updated_at""",
                (ref.project_id, ref.run_id, target, parts, parts, json.dumps(gained, sort_keys=True)))

    def close(self) -> None:
        self._stop_heartbeat.set()
        with self._mutex:
            self._frozen = True
            with contextlib.suppress(Exception):
                self._db.close()

    def __getstate__(self) -> dict[str, Any]:  # never shipped: each process opens its own by URI
        raise TypeError("a ledger is not shipped to workers; they open it from its URI")


__all__ = ["PostgresLedger", "RunClaimed", "is_database_uri", "redact_uri"]
