"""Write runs into an archive with neptune-exporter's layout and schema (plus our optional columns).

A run is committed atomically: parts are written as `*.parquet.tmp`, renamed into place, and
`<run>_part_0.parquet` is renamed last, so a reader never mistakes a half-written run for a whole one.

On object storage (`s3://bucket/prefix`, `gs://...`) a run is written exactly the same way into a local staging
folder, then uploaded on commit: its files first, then parts 1..N, then `part_0` last. One object appears whole
or not at all, so `part_0` stays the commit marker; the staged copy is deleted once uploaded, so local disk holds
at most the runs being written at the moment.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from neptune_migration.archive.reader import Archive, ArchivedRun
from neptune_migration.archive.storage import FILE, LOCAL, StoragePath, open_storage
from neptune_migration.paths import resolve_inside, safe_relpath
from neptune_migration.vocabulary import (
    ARCHIVE_SCHEMA,
    ATOM_TYPES,
    FILE_LIKE_TYPES,
    SERIES_TYPES,
    RunRef,
    folder_name,
    step_to_decimal,
)

_VALUE_COLUMN = {
    "float": "float_value",
    "int": "int_value",
    "string": "string_value",
    "bool": "bool_value",
    "datetime": "datetime_value",
    "string_set": "string_set_value",
    "float_series": "float_value",
    "string_series": "string_value",
    "histogram_series": "histogram_value",
}
_NAMES = ARCHIVE_SCHEMA.names


@dataclass
class FileInfo:
    path: str  # relative to the project's files folder, as stored in `file_value.path`
    size: int
    sha256: str


class ArchiveWriter:
    """An archive root holding `data/` and `files/`, as `export` writes it."""

    def __init__(
        self,
        root: str | Path,
        rows_per_part: int = 2_000_000,
        rows_per_batch: int = 50_000,
        data_dir: str = "data",
        files_dir: str = "files",
    ) -> None:
        """`root` is a folder or an object-store URL (`s3://bucket/prefix`, `gs://bucket/prefix`)."""
        self.storage, base = open_storage(root)
        if self.storage.remote:
            self.storage.check(base)
            # What summaries, the ledger key and `Archive(...)` see: the URL, never the staging folder.
            self.root: str | Path = self.storage.url(base)
            staging = Path(tempfile.mkdtemp(prefix="neptune-migration-upload-"))
            weakref.finalize(self, shutil.rmtree, str(staging), True)
        else:
            self.root = staging = Path(base)
        # The 2.x model registry lives beside the runs, in `models/` and `model_files/`.
        # data_root / files_root are where parts and payloads are written (on object storage: staged).
        self.data_root = staging / data_dir
        self.files_root = staging / files_dir
        self.remote_data_root: StoragePath = base / data_dir
        self.remote_files_root: StoragePath = base / files_dir
        self.rows_per_part = rows_per_part
        self.rows_per_batch = rows_per_batch
        # Names in each project folder, listed once and then kept up to date by this writer: re-listing a
        # folder of 10,000 runs for every run made exporting a big project quadratic.
        self._names: dict[Path, set[str]] = {}
        self._committed: dict[RunRef, list[Path]] = {}
        self._lock = threading.Lock()

    def run(self, ref: RunRef) -> RunWriter:
        return RunWriter(self, ref)

    def has_run(self, ref: RunRef) -> bool:
        if self.storage.remote:
            return self.storage.kind(self.remote_part_path(ref, 0)) == FILE
        return self.part_path(ref, 0).exists()

    def archived(self, ref: RunRef) -> ArchivedRun | None:
        """A complete run as a reader sees it; without listing its folder when this writer committed it."""
        with self._lock:
            parts = self._committed.get(ref)
        if parts is None:
            return Archive(self.root).run(ref)
        return ArchivedRun(ref, parts, parts[0].parent, self.files_root / folder_name(ref.project_id))

    def names_in(self, project_dir: Path) -> set[str]:
        """A copy of the file names in one project folder (listed on first use)."""
        with self._lock:
            if project_dir not in self._names:
                self._names[project_dir] = {e.name for e in os.scandir(project_dir)} if project_dir.is_dir() else set()
            return set(self._names[project_dir])

    def _note(self, project_dir: Path, added: Iterable[str] = (), removed: Iterable[str] = ()) -> None:
        with self._lock:
            names = self._names.get(project_dir)
            if names is not None:
                names.update(added)
                names.difference_update(removed)

    def _record_commit(self, ref: RunRef, parts: list[Path]) -> None:
        with self._lock:
            self._committed[ref] = parts

    def part_path(self, ref: RunRef, n: int) -> Path:
        return self.data_root / folder_name(ref.project_id) / f"{folder_name(ref.run_id)}_part_{n}.parquet"

    def remote_part_path(self, ref: RunRef, n: int) -> StoragePath:
        return self.remote_data_root / folder_name(ref.project_id) / f"{folder_name(ref.run_id)}_part_{n}.parquet"

    def make_project_folders(self, projects: Iterable[str]) -> None:
        """A selected project with no runs still gets its (empty) folder, so the archive reads as "nothing to load"
        rather than "not an archive". On object storage the folder is an empty marker object."""
        if not self.storage.remote:
            self.data_root.mkdir(parents=True, exist_ok=True)
        for project in projects:
            if self.storage.remote:
                self.storage.make_dir(self.remote_data_root / folder_name(project))
            else:
                (self.data_root / folder_name(project)).mkdir(exist_ok=True)


class RunWriter:
    """Collects one run's rows and files; `commit()` makes it visible. Use as a context manager."""

    def __init__(self, archive: ArchiveWriter, ref: RunRef) -> None:
        self.archive = archive
        self.ref = ref
        self._rows: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []
        self._buffered = 0
        self._part_rows = 0
        self._part = 0
        self._writer: pq.ParquetWriter | None = None
        self._written: list[Path] = []
        self.project_dir = archive.data_root / folder_name(ref.project_id)
        self.files_dir = archive.files_root / folder_name(ref.project_id)
        self._run_files = folder_name(ref.run_id)
        self._committed = False
        # Rows per part for this run (a sync's appended part is never split: its one rename is its commit).
        self.rows_per_part = archive.rows_per_part
        self.remove_existing()

    # -- rows -------------------------------------------------------------------------------------------
    def add_atom(self, path: str, type_: str, value: Any) -> None:
        if type_ not in ATOM_TYPES:
            raise ValueError(f"{type_} is not an atom type")
        if type_ == "string_set":
            value = sorted(value)
        self._add_row({"attribute_path": path, "attribute_type": type_, _VALUE_COLUMN[type_]: value})

    def add_series(
        self,
        path: str,
        type_: str,
        steps: Sequence[float],
        timestamps: Sequence[datetime | int | None],
        values: Sequence[Any],
        previews: Sequence[tuple[bool, float] | None] | None = None,
    ) -> None:
        """Append series points. Timestamps are datetimes or epoch milliseconds."""
        if type_ not in SERIES_TYPES:
            raise ValueError(f"{type_} is not a series type")
        n = len(steps)
        if len(values) != n or len(timestamps) != n:
            raise ValueError("steps, timestamps and values must have the same length")
        decimals, exact = zip(*(step_to_decimal(float(s)) for s in steps), strict=True) if n else ((), ())
        cols: dict[str, Any] = {
            "project_id": pa.array([self.ref.project_id] * n, pa.string()),
            "run_id": pa.array([self.ref.run_id] * n, pa.string()),
            "attribute_path": pa.array([path] * n, pa.string()),
            "attribute_type": pa.array([type_] * n, pa.string()),
            "step": pa.array(decimals, ARCHIVE_SCHEMA.field("step").type),
            "step_exact": pa.array(exact, pa.float64()),
            "timestamp": pa.array(timestamps, ARCHIVE_SCHEMA.field("timestamp").type),
            _VALUE_COLUMN[type_]: pa.array(values, ARCHIVE_SCHEMA.field(_VALUE_COLUMN[type_]).type),
        }
        if previews is not None:
            cols["is_preview"] = pa.array([p[0] if p else None for p in previews], pa.bool_())
            cols["completion_ratio"] = pa.array([p[1] if p else None for p in previews], pa.float64())
        self._add_table(_complete(cols, n))

    def add_file(
        self,
        path: str,
        type_: str,
        data: bytes | Path,
        file_name: str,
        step: float | None = None,
        timestamp: datetime | int | None = None,
        mime: str | None = None,
        move: bool = False,
    ) -> FileInfo:
        """Store a file payload under `files/` and a row pointing at it. `data` is bytes or a path to copy.

        With `move`, a path is a scratch file the caller gives away: on the same filesystem it is renamed into
        place after hashing instead of copied (a 2 GB download is then written once, not twice).
        """
        if type_ not in FILE_LIKE_TYPES:
            raise ValueError(f"{type_} is not a file type")
        rel_dir = f"{self._run_files}/{safe_relpath(path)}"
        if step is not None:
            rel_dir += "/step_" + _step_label(step)
        rel = f"{rel_dir}/{safe_relpath(file_name).replace('/', '_')}"
        target = resolve_inside(self.files_dir, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        if isinstance(data, Path | str) and move and os.stat(data).st_dev == os.stat(target.parent).st_dev:
            with open(data, "rb") as src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
            os.replace(data, target)
        elif isinstance(data, Path | str):
            with open(data, "rb") as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
        else:
            digest.update(data)
            target.write_bytes(data)
        size = target.stat().st_size
        row: dict[str, Any] = {
            "attribute_path": path,
            "attribute_type": type_,
            "file_value": {"path": rel},
            "file_name": file_name,
            "file_size": size,
            "file_mime": mime or mimetypes.guess_type(file_name)[0],
            "file_sha256": digest.hexdigest(),
            "timestamp": timestamp,
        }
        if step is not None:
            dec, exact = step_to_decimal(float(step))
            row["step"], row["step_exact"] = dec, exact
        self._add_row(row)
        return FileInfo(rel, size, digest.hexdigest())

    def add_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append raw rows in archive-schema form (project_id and run_id are filled in)."""
        for row in rows:
            self._add_row(dict(row))

    # -- parts ------------------------------------------------------------------------------------------
    def _add_row(self, row: dict[str, Any]) -> None:
        row["project_id"] = self.ref.project_id
        row["run_id"] = self.ref.run_id
        self._rows.append(row)
        self._buffered += 1
        if self._buffered >= self.archive.rows_per_batch:
            self._flush()

    def _add_table(self, table: pa.Table) -> None:
        if self._rows:
            self._tables.append(pa.Table.from_pylist(self._rows, schema=ARCHIVE_SCHEMA))
            self._rows = []
        self._tables.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self.archive.rows_per_batch:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._tables.append(pa.Table.from_pylist(self._rows, schema=ARCHIVE_SCHEMA))
            self._rows = []
        if not self._tables:
            return
        table = pa.concat_tables(self._tables)
        self._tables, self._buffered = [], 0
        offset = 0
        while offset < table.num_rows:
            room = self.rows_per_part - self._part_rows
            chunk = table.slice(offset, room)
            if self._writer is None:
                self.project_dir.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(
                    self._tmp_path(self._part), ARCHIVE_SCHEMA, compression="snappy"
                )
            self._writer.write_table(chunk)
            self._part_rows += chunk.num_rows
            offset += chunk.num_rows
            if self._part_rows >= self.rows_per_part:
                self._close_part()

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._written.append(self._tmp_path(self._part))
            self._writer = None
            self._part += 1
            self._part_rows = 0

    def _tmp_path(self, n: int) -> Path:
        return self.archive.part_path(self.ref, n).with_suffix(".parquet.tmp")

    def commit(self) -> None:
        self._flush()
        if self._writer is None and not self._written:
            # A run with no rows still exists: write an empty part_0 so it is seen as complete.
            self.project_dir.mkdir(parents=True, exist_ok=True)
            pq.write_table(ARCHIVE_SCHEMA.empty_table(), self._tmp_path(0))
            self._written.append(self._tmp_path(0))
        self._close_part()
        final = []
        for tmp in sorted(self._written, key=lambda p: p.name, reverse=True):
            # Highest part first, part_0 last: part_0 is the completeness marker.
            _fsync(tmp)
            os.replace(tmp, tmp.with_suffix(""))
            final.append(tmp.with_suffix(""))
        if self.archive.storage.remote:
            self._upload()
        else:
            self.archive._note(self.project_dir, added=[p.name for p in final])
            self.archive._record_commit(self.ref, final[::-1])
        self._committed = True

    def _upload(self) -> None:
        """Files, then parts 1..N in ascending order, then part_0. Ascending matters: an upload cut short leaves
        parts 1..j, which `remove_existing` finds by asking for part_1, part_2, ... without listing the project."""
        storage = self.archive.storage
        run_files = self.files_dir / self._run_files
        remote_files = self.archive.remote_files_root / folder_name(self.ref.project_id) / self._run_files
        parts = [tmp.with_suffix("") for tmp in self._written]  # index n holds part n
        try:
            if run_files.is_dir():
                for rel, local in LOCAL.files_under(run_files):
                    storage.upload(Path(local), remote_files.joinpath(*rel.split("/")))
            for n in [*range(1, len(parts)), 0]:
                storage.upload(parts[n], self.archive.remote_part_path(self.ref, n))
        finally:
            self._remove_staged()

    def _remove_staged(self) -> None:
        for part in self._written:
            part.unlink(missing_ok=True)
            part.with_suffix("").unlink(missing_ok=True)
        shutil.rmtree(self.files_dir / self._run_files, ignore_errors=True)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for tmp in [*self._written, self._tmp_path(self._part)]:
            tmp.unlink(missing_ok=True)
        if self.archive.storage.remote:
            self._remove_staged()

    def remove_existing(self) -> None:
        """Clear any earlier (complete or partial) copy of this run so a re-export starts clean."""
        part0 = self.archive.part_path(self.ref, 0)
        part0.unlink(missing_ok=True)  # first, so the run is never "complete" with stale parts
        prefix = f"{folder_name(self.ref.run_id)}_part_"
        stale = [name for name in self.archive.names_in(self.project_dir) if name.startswith(prefix)]
        for name in stale:
            (self.project_dir / name).unlink(missing_ok=True)
        self.archive._note(self.project_dir, removed=[*stale, part0.name])
        run_files = self.files_dir / self._run_files
        if run_files.is_dir():
            shutil.rmtree(run_files)
        if self.archive.storage.remote:
            self._remove_remote()

    def _remove_remote(self) -> None:
        storage = self.archive.storage
        storage.delete_file(self.archive.remote_part_path(self.ref, 0))  # first, as locally
        # Parts are uploaded 1..N and deleted N..1, so stale ones are always part_1..part_j: probe, no listing.
        stale = 1
        while storage.kind(self.archive.remote_part_path(self.ref, stale)) == FILE:
            stale += 1
        for n in range(stale - 1, 0, -1):
            storage.delete_file(self.archive.remote_part_path(self.ref, n))
        storage.delete_tree(self.archive.remote_files_root / folder_name(self.ref.project_id) / self._run_files)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _complete(cols: dict[str, pa.Array], n: int) -> pa.Table:
    arrays = [cols[name] if name in cols else pa.nulls(n, ARCHIVE_SCHEMA.field(name).type) for name in _NAMES]
    return pa.Table.from_arrays(arrays, schema=ARCHIVE_SCHEMA)


def _step_label(step: float) -> str:
    """`1.5` -> `1_500000`: the exporter's per-step folder naming, stable for any float."""
    dec, exact = step_to_decimal(float(step))
    if exact is not None:
        return repr(exact).replace(".", "_").replace("-", "m").replace("+", "")
    return str(dec).replace(".", "_").replace("-", "m")


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
