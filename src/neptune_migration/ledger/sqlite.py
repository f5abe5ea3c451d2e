"""The only memory of progress: one SQLite row per (project, run, stage, target). (`postgres.py` is the same
ledger in PostgreSQL, shared by several drivers and a cluster's workers.)

Stages are `export`, `load` and `validate`. A row records status, attempts, the last error, the id the
run has in the target, and an opaque checkpoint that lets an interrupted stage resume exactly.
One process owns a ledger at a time; a second one waits briefly, then refuses with a clear message.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from neptune_migration.errors import LedgerBusyError, MigrationError, UsageError
from neptune_migration.interrupt import RunStopped
from neptune_migration.naming import short_hash
from neptune_migration.secrets import redact
from neptune_migration.vocabulary import RunRef

DEFAULT_STATE = Path(".neptune-migration") / "state.db"

PENDING, RUNNING, DONE, FAILED, SKIPPED, MISMATCH = "pending", "running", "done", "failed", "skipped", "mismatch"
# Stopped on request (Ctrl-C, SIGTERM) before it finished: not done, not failed; the next call continues it.
INTERRUPTED = "interrupted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    project_id TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    stage      TEXT NOT NULL,
    target     TEXT NOT NULL,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    target_id  TEXT,
    checkpoint TEXT,
    details    TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (project_id, run_id, stage, target)
);
"""
# PRAGMA user_version: 0 is a ledger from before versions were kept (progress, sync_state made on first use).
SCHEMA_VERSION = 2
# What each target run holds, kept apart from the attempts (a failed or interrupted attempt leaves it as it was):
# where the run was placed, what the selections of the loads that wrote it let through, the mapping version.
_LOADED_SCHEMA = """
CREATE TABLE IF NOT EXISTS loaded (
    project_id      TEXT NOT NULL,
    run_id          TEXT NOT NULL,
    target          TEXT NOT NULL,
    placement       TEXT,
    selection       TEXT,
    mapping_version INTEGER,
    updated_at      REAL NOT NULL,
    PRIMARY KEY (project_id, run_id, target)
);
"""
# Loads done before version 2 recorded their mapping version in the progress row; their placement and selection
# are unknown (NULL): the load stage asks the target where such a run is.
_LOADED_FROM_PROGRESS = """
INSERT OR IGNORE INTO loaded (project_id, run_id, target, mapping_version, updated_at)
SELECT project_id, run_id, target, COALESCE(CAST(json_extract(details, '$.mapping_version') AS INTEGER), 1),
       updated_at FROM progress WHERE stage = 'load' AND status = 'done'
"""


@dataclass
class Loaded:
    """What one target run holds, as the loads that wrote it recorded (None: not known, an older ledger)."""

    ref: RunRef
    target: str
    placement: dict[str, Any] | None
    selection: dict[str, Any] | None
    mapping_version: int | None


@dataclass
class Entry:
    ref: RunRef
    stage: str
    target: str
    status: str
    attempts: int
    last_error: str | None
    target_id: str | None
    checkpoint: dict[str, Any] | None
    details: dict[str, Any] | None
    updated_at: float


class Ledger:
    def __init__(self, path: Path | str = DEFAULT_STATE, wait_seconds: float = 5.0) -> None:
        if str(path).split(":", 1)[0].lower() in ("s3", "gs", "gcs") and ":/" in str(path):
            # Path() has already folded `s3://` to `s3:/`; SQLite needs a local file it can lock.
            raise UsageError("--state must be a local file: the ledger never lives on object storage "
                             "(the archive can; see docs/object-storage.md)")
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fh = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115
        except OSError as exc:
            raise MigrationError(f"cannot open the state file {self.path}: {exc.strerror}") from None
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._lock_fh.close()
                    raise LedgerBusyError(
                        f"another neptune-migrate process is using {self.path}; wait for it to finish "
                        "or pass a different --state"
                    ) from None
                time.sleep(0.2)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise MigrationError(f"the state file {self.path} is not a usable ledger: {exc}") from None
        self._mutex = threading.Lock()
        # Rows this process set `running` and has not settled: what an interruption must mark `interrupted`.
        self._running: set[tuple[str, str, str, str]] = set()
        # After an interruption, workers that outlived the grace period must not write (nor find a closed db).
        self._frozen = False
        # What the ledger cost (the scale benchmark's overhead): seconds held, and CPU seconds used.
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise MigrationError(f"the ledger {self.path} has schema version {version}, newer than this "
                                 f"neptune-migration knows ({SCHEMA_VERSION}): upgrade neptune-migration")
        if version < 2:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(_LOADED_SCHEMA)
            self._db.execute(_LOADED_FROM_PROGRESS)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            if self._frozen:
                raise RunStopped
            # Held wall time, and the CPU time the calls used. With many busy threads the first is mostly the
            # holder waiting to get the interpreter lock back after SQLite released it; the second is the work.
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                yield
            finally:
                self.seconds += time.perf_counter() - started
                self.cpu_seconds += time.thread_time() - cpu

    # -- reads ------------------------------------------------------------------------------------------
    def get(self, ref: RunRef, stage: str, target: str) -> Entry | None:
        with self._locked():
            row = self._db.execute(
                "SELECT * FROM progress WHERE project_id=? AND run_id=? AND stage=? AND target=?",
                (ref.project_id, ref.run_id, stage, target),
            ).fetchone()
        return _entry(row) if row else None

    def entries(self, stage: str | None = None, target: str | None = None) -> Iterator[Entry]:
        with self._locked():
            rows = _select_entries(self._db, stage, target)
        for row in rows:
            yield _entry(row)

    def is_done(self, ref: RunRef, stage: str, target: str) -> bool:
        entry = self.get(ref, stage, target)
        return entry is not None and entry.status == DONE

    # -- writes -----------------------------------------------------------------------------------------
    def start(self, ref: RunRef, stage: str, target: str) -> Entry:
        """Mark an attempt as begun; keeps the previous checkpoint so the attempt can resume from it."""
        now = time.time()
        with self._locked():
            row = self._db.execute(
                """INSERT INTO progress (project_id, run_id, stage, target, status, attempts, updated_at)
                   VALUES (?, ?, ?, ?, ?, 1, ?)
                   ON CONFLICT (project_id, run_id, stage, target)
                   DO UPDATE SET status=excluded.status, attempts=attempts+1, updated_at=excluded.updated_at
                   RETURNING *""",
                (ref.project_id, ref.run_id, stage, target, RUNNING, now),
            ).fetchone()
            self._running.add((ref.project_id, ref.run_id, stage, target))
        return _entry(row)

    def save_checkpoint(self, ref: RunRef, stage: str, target: str, state: dict[str, Any]) -> None:
        self._update(ref, stage, target, checkpoint=json.dumps(state, sort_keys=True))

    def finish(
        self, ref: RunRef, stage: str, target: str, target_id: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        self._update(
            ref,
            stage,
            target,
            status=DONE,
            last_error=None,
            target_id=target_id,
            checkpoint=None,
            details=json.dumps(details, sort_keys=True, default=str) if details is not None else None,
        )

    def fail(
        self, ref: RunRef, stage: str, target: str, error: str, status: str = FAILED,
        details: dict[str, Any] | None = None,
    ) -> None:
        fields: dict[str, Any] = {"status": status, "last_error": redact(error)}
        if details is not None:
            fields["details"] = redact(json.dumps(details, sort_keys=True, default=str))
        self._update(ref, stage, target, **fields)

    def skip(self, ref: RunRef, stage: str, target: str, reason: str) -> None:
        self._ensure(ref, stage, target)
        self._update(ref, stage, target, status=SKIPPED, last_error=redact(reason))

    def interrupt(self, ref: RunRef, stage: str, target: str) -> None:
        """Stopped on request: the checkpoint stays, so the next attempt resumes where this one stopped."""
        self._update(ref, stage, target, status=INTERRUPTED, last_error="interrupted before it finished")

    def interrupt_running(self, timeout: float = -1) -> int:
        """Mark every row this process started and did not settle as `interrupted`; returns how many.

        `timeout` (seconds; -1 waits) is for the hard exit, which runs in a signal handler and must not wait for
        a lock its own thread may hold."""
        if not self._mutex.acquire(timeout=timeout):
            return 0
        try:
            if self._frozen:
                return 0
            rows = sorted(self._running)
            for key in rows:
                self._db.execute(
                    "UPDATE progress SET status=?, last_error=?, updated_at=? WHERE project_id=? AND run_id=? "
                    "AND stage=? AND target=? AND status=?",
                    (INTERRUPTED, "interrupted before it finished", time.time(), *key, RUNNING),
                )
            self._running.clear()
            return len(rows)
        finally:
            self._mutex.release()

    def freeze(self) -> None:
        """From now on every call raises `RunStopped`: a worker still busy after an interruption unwinds at its
        next ledger call instead of overwriting `interrupted` or using a closed database."""
        with self._mutex:
            self._frozen = True

    def set_target_id(self, ref: RunRef, stage: str, target: str, target_id: str) -> None:
        self._update(ref, stage, target, target_id=target_id)

    def reset(self, ref: RunRef, stage: str, target: str) -> None:
        with self._locked():
            self._running.discard((ref.project_id, ref.run_id, stage, target))
            self._db.execute(
                "DELETE FROM progress WHERE project_id=? AND run_id=? AND stage=? AND target=?",
                (ref.project_id, ref.run_id, stage, target),
            )

    def _ensure(self, ref: RunRef, stage: str, target: str) -> None:
        with self._locked():
            self._db.execute(
                """INSERT OR IGNORE INTO progress (project_id, run_id, stage, target, status, attempts, updated_at)
                   VALUES (?, ?, ?, ?, ?, 0, ?)""",
                (ref.project_id, ref.run_id, stage, target, PENDING, time.time()),
            )

    def _update(self, ref: RunRef, stage: str, target: str, **fields: Any) -> None:
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name}=?" for name in fields)
        with self._locked():
            if fields.get("status", RUNNING) != RUNNING:
                self._running.discard((ref.project_id, ref.run_id, stage, target))
            self._db.execute(
                f"UPDATE progress SET {assignments} WHERE project_id=? AND run_id=? AND stage=? AND target=?",
                (*fields.values(), ref.project_id, ref.run_id, stage, target),
            )

    def identity(self) -> str:
        """This ledger's name in the target runs it creates: copies another migration (another ledger) made of the
        same Neptune run are told apart from this one's."""
        return short_hash(os.path.abspath(str(self.path)), 16)

    # -- what each target run holds (the rerun rule: docs/architecture.md, "A rerun") ----------------------
    def loaded(self, ref: RunRef, target: str) -> Loaded | None:
        with self._locked():
            row = self._db.execute(
                "SELECT placement, selection, mapping_version FROM loaded WHERE project_id=? AND run_id=? AND target=?",
                (ref.project_id, ref.run_id, target)).fetchone()
        return _loaded(ref, target, row) if row else None

    def record_loaded(self, ref: RunRef, target: str, placement: dict[str, Any] | None,
                      selection: dict[str, Any] | None = None, mapping_version: int | None = None) -> None:
        """Where the target run is (always written) and, once a load finished, what it holds."""
        with self._locked():
            self._db.execute(
                """INSERT INTO loaded (project_id, run_id, target, placement, selection, mapping_version, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project_id, run_id, target) DO UPDATE SET
                   placement=excluded.placement, selection=COALESCE(excluded.selection, selection),
                   mapping_version=COALESCE(excluded.mapping_version, mapping_version),
                   updated_at=excluded.updated_at""",
                (ref.project_id, ref.run_id, target, _json(placement), _json(selection), mapping_version,
                 time.time()))

    def forget_loaded(self, ref: RunRef, target: str) -> None:
        """The target no longer holds the run (retry discarded it): the next load starts from nothing."""
        with self._locked():
            self._db.execute("DELETE FROM loaded WHERE project_id=? AND run_id=? AND target=?",
                             (ref.project_id, ref.run_id, target))

    # -- sync (migrate --sync): its own table, so the progress rows keep their meaning ----------------------
    def _sync_table(self) -> None:
        if not getattr(self, "_sync_ready", False):
            self._db.executescript(_SYNC_SCHEMA)
            self._sync_ready = True

    def sync_state(self, ref: RunRef, target: str) -> SyncState | None:
        """How much of a run's archive a target holds (`loaded_parts`), and when the run was last synced."""
        with self._locked():
            self._sync_table()
            row = self._db.execute(
                "SELECT * FROM sync_state WHERE project_id=? AND run_id=? AND target=?",
                (ref.project_id, ref.run_id, target),
            ).fetchone()
        return sync_entry(row) if row else None

    def sync_states(self) -> list[SyncState]:
        with self._locked():
            self._sync_table()
            rows = self._db.execute("SELECT * FROM sync_state ORDER BY project_id, run_id, target").fetchall()
        return [sync_entry(r) for r in rows]

    def set_sync_parts(self, ref: RunRef, target: str, *, archive_parts: int, loaded_parts: int | None = None) -> None:
        """Record the archive's part count (and, when given, how many of them the target holds)."""
        with self._locked():
            self._sync_table()
            self._db.execute(
                """INSERT INTO sync_state (project_id, run_id, target, archive_parts, loaded_parts, syncs, updated_at)
                   VALUES (?, ?, ?, ?, ?, 0, ?)
                   ON CONFLICT (project_id, run_id, target) DO UPDATE SET archive_parts=excluded.archive_parts,
                   loaded_parts=COALESCE(?, loaded_parts), updated_at=excluded.updated_at""",
                (ref.project_id, ref.run_id, target, archive_parts,
                 loaded_parts if loaded_parts is not None else archive_parts, time.time(), loaded_parts),
            )

    def record_sync(self, ref: RunRef, target: str, parts: int, gained: dict[str, Any]) -> None:
        """A sync brought the target up to `parts` parts of the archive; `gained` is what it added."""
        now = time.time()
        with self._locked():
            self._sync_table()
            self._db.execute(
                """INSERT INTO sync_state (project_id, run_id, target, archive_parts, loaded_parts, syncs, synced_at,
                   gained, updated_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?, ?)
                   ON CONFLICT (project_id, run_id, target) DO UPDATE SET archive_parts=excluded.archive_parts,
                   loaded_parts=excluded.loaded_parts, syncs=syncs+1, synced_at=excluded.synced_at,
                   gained=excluded.gained, updated_at=excluded.updated_at""",
                (ref.project_id, ref.run_id, target, parts, parts, now, json.dumps(gained, sort_keys=True), now),
            )

    def close(self) -> None:
        with self._mutex:  # also when frozen: the workers that remain no longer reach the database
            self._frozen = True
            self._db.close()
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        finally:
            self._lock_fh.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SYNC_SCHEMA = """
CREATE TABLE IF NOT EXISTS sync_state (
    project_id    TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    target        TEXT NOT NULL,
    archive_parts INTEGER NOT NULL,
    loaded_parts  INTEGER NOT NULL,
    syncs         INTEGER NOT NULL DEFAULT 0,
    synced_at     REAL,
    gained        TEXT,
    updated_at    REAL NOT NULL,
    PRIMARY KEY (project_id, run_id, target)
);
"""


@dataclass
class SyncState:
    ref: RunRef
    target: str
    archive_parts: int
    loaded_parts: int
    syncs: int
    synced_at: float | None
    gained: dict[str, Any] | None
    updated_at: float = 0.0


def sync_entry(row: tuple[Any, ...]) -> SyncState:
    project_id, run_id, target, archive_parts, loaded_parts, syncs, synced_at, gained, updated = row
    return SyncState(RunRef(project_id, run_id), target, archive_parts, loaded_parts, syncs, synced_at,
                     json.loads(gained) if gained else None, updated)


def _json(value: dict[str, Any] | None) -> str | None:
    return json.dumps(value, sort_keys=True) if value is not None else None


def _loaded(ref: RunRef, target: str, row: tuple[Any, ...]) -> Loaded:
    placement, selection, mapping_version = row
    return Loaded(ref, target, json.loads(placement) if placement else None,
                  json.loads(selection) if selection else None, mapping_version)


def _select_entries(db: sqlite3.Connection, stage: str | None, target: str | None) -> list[tuple[Any, ...]]:
    sql, args = "SELECT * FROM progress WHERE 1=1", []
    if stage:
        sql += " AND stage=?"
        args.append(stage)
    if target:
        sql += " AND target=?"
        args.append(target)
    sql += " ORDER BY project_id, run_id, stage, target"
    return db.execute(sql, args).fetchall()


class LedgerView:
    """A read-only look at a SQLite ledger that never waits for the process using it (`status` during a load).

    The ledger is in WAL mode, where a reader sees the last committed rows while a writer goes on; the view takes
    no flock and opens the file `mode=ro`, so it can neither block nor disturb that writer."""

    def __init__(self, path: Path | str, busy_seconds: float = 3.0) -> None:
        self.path = Path(path)
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, timeout=busy_seconds, check_same_thread=False)
            self._db.execute("SELECT 1 FROM progress LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise MigrationError(f"the state file {self.path} is not a usable ledger: {exc}") from None

    def in_use(self) -> bool:
        """Whether a neptune-migrate process holds the ledger now (its `running` rows are live, not left over)."""
        try:
            with open(self.path.with_name(self.path.name + ".lock"), "rb") as fh:
                try:
                    # Shared and non-blocking: fails only while a writer holds its exclusive lock.
                    fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError:
            return False
        return False

    def entries(self, stage: str | None = None, target: str | None = None) -> list[Entry]:
        return [_entry(row) for row in _select_entries(self._db, stage, target)]

    def sync_states(self) -> list[SyncState]:
        try:
            rows = self._db.execute("SELECT * FROM sync_state ORDER BY project_id, run_id, target").fetchall()
        except sqlite3.OperationalError:  # no sync has run on this ledger: the table is created on first use
            return []
        return [sync_entry(r) for r in rows]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LedgerView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _entry(row: tuple[Any, ...]) -> Entry:
    project_id, run_id, stage, target, status, attempts, last_error, target_id, checkpoint, details, updated = row
    return Entry(
        RunRef(project_id, run_id),
        stage,
        target,
        status,
        attempts,
        last_error,
        target_id,
        json.loads(checkpoint) if checkpoint else None,
        json.loads(details) if details else None,
        updated,
    )


def default_state_path() -> Path:
    return Path(os.environ.get("NEPTUNE_MIGRATION_STATE", str(DEFAULT_STATE)))
