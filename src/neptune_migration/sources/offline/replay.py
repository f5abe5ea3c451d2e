"""Turn what the Neptune clients wrote in offline mode into runs (used by the offline source; the sandbox adapts them).

Two formats, each read with the reader its own library ships:
- neptune-scale 0.30: ``.neptune/<ws>_<proj>_<run>_<ns>/run_operations.sqlite3`` via
  ``neptune_scale.sync.operations_repository.OperationsRepository`` (protobuf ``Run`` and
  ``UpdateRunSnapshot`` operations, plus file upload requests naming absolute source paths).
- neptune 1.x: ``.neptune/offline/run__<uuid>__<pid>__<rand>/`` via
  ``neptune.core.components.queue.disk_queue.DiskQueue`` and ``neptune.internal.operation.Operation.from_dict``.

Both readers open a private copy: the scale repository switches the database to WAL mode on connect (it writes
the file and creates ``-wal``/``-shm`` beside it) and the disk queue keeps ack files, so reading the user's folder
directly would change it.

The replay builds runs of the offline source's own model (``runs.py``). What a replay cannot represent is listed in
``Replay.skipped``; files whose source is gone are listed in ``Replay.missing`` and left out of the run.
"""

from __future__ import annotations

import base64
import datetime as dt
import glob
import hashlib
import json
import mimetypes
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from neptune_migration.sources.offline.runs import (
    ArtifactFile,
    ArtifactValue,
    FileValue,
    Histogram,
    OfflineRunData,
    from_ms,
)

# The Neptune clients' own readers are imported where they are used: importing neptune 1.x takes seconds, and
# discovery and a replay of the other format do not need it.

SCALE_DB = "run_operations.sqlite3"


@dataclass
class Replay:
    run: OfflineRunData
    skipped: list[str] = field(default_factory=list)  # "<operation type> <path>" we could not represent
    missing: list[str] = field(default_factory=list)  # "<attribute path>[@step]: <source>" whose file is gone


# ---------------------------------------------------------------- discovery


@dataclass(frozen=True)
class OfflineLocation:
    kind: str  # "scale" or "neptune1"
    path: Path  # the sqlite database, or the 1.x run folder
    partial: bool = False  # a 1.x async folder: what was acknowledged before the connection dropped is gone


def find_offline_runs(root: Path) -> list[OfflineLocation]:
    """Every offline run under ``root`` (a ``.neptune`` folder, its parent, or any tree holding such folders)."""
    found: list[OfflineLocation] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if SCALE_DB in filenames:
            found.append(OfflineLocation("scale", here / SCALE_DB))
        if "metadata.json" in filenames and here.name.startswith("run__") and here.parent.name in ("offline", "async"):
            found.append(OfflineLocation("neptune1", here, partial=here.parent.name == "async"))
            dirnames[:] = []  # a run folder holds only its queue and uploads
            continue
        dirnames.sort()
    return sorted(found, key=lambda loc: str(loc.path))


# ---------------------------------------------------------------- neptune-scale


@dataclass
class ScaleOfflineRun:
    project: str
    run_id: str
    operations: list[Any]  # neptune_scale Operation (sequence_id, timestamp, operation_type, operation)
    uploads: dict[str, str]  # destination path -> absolute source path
    folder: Path | None = None  # where the database was found; in-memory uploads were saved beside it


def _copy_sqlite(db_path: Path, into: Path) -> Path:
    copy = into / db_path.name
    shutil.copy2(db_path, copy)
    for suffix in ("-wal", "-shm", "-journal"):
        side = db_path.with_name(db_path.name + suffix)
        if side.exists():  # committed pages may still sit in the WAL of a run that died
            shutil.copy2(side, into / side.name)
    return copy


def read_scale_offline(db_path: Path) -> ScaleOfflineRun:
    """Read one neptune-scale offline database, through a copy, with the library's own repository class."""
    from neptune_scale.sync.operations_repository import OperationsRepository

    db_path = Path(db_path).resolve()
    with tempfile.TemporaryDirectory(prefix="neptune-offline-") as tmp:
        repo = OperationsRepository(_copy_sqlite(db_path, Path(tmp)))
        try:
            meta = repo.get_metadata()
            if meta is None:
                raise ValueError(f"{db_path} holds no run metadata")
            ops = []
            last = None
            while True:  # the repository pages by size; 64 MB pages
                page = repo.get_operations(up_to_bytes=64 * 1024 * 1024, from_exclusive=last)
                if not page:
                    break
                ops.extend(page)
                last = page[-1].sequence_id
            uploads = {u.destination: u.source_path for u in repo.get_file_upload_requests(10**9)}
        finally:
            repo.close(cleanup_files=False)
    return ScaleOfflineRun(meta.project, meta.run_id, ops, uploads, db_path.parent)


def read_scale_identity(db_path: Path) -> tuple[str, str, int]:
    """(project, run id, first operation's time in ms) of a neptune-scale database, without reading its operations."""
    from neptune_scale.sync.operations_repository import OperationsRepository

    with tempfile.TemporaryDirectory(prefix="neptune-offline-") as tmp:
        repo = OperationsRepository(_copy_sqlite(Path(db_path).resolve(), Path(tmp)))
        try:
            meta = repo.get_metadata()
            if meta is None:
                raise ValueError(f"{db_path} holds no run metadata")
            first = repo.get_operations_min_timestamp()
        finally:
            repo.close(cleanup_files=False)
    return meta.project, meta.run_id, round(first.timestamp() * 1000) if first is not None else 0


def _scale_step(step: Any) -> float:
    return step.whole + step.micro / 1_000_000


def _scale_ts(ts: Any) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def _scale_source(ref_path: str, offline: ScaleOfflineRun) -> Path | None:
    source = offline.uploads.get(ref_path)
    if not source:
        return None
    path = Path(source)
    if path.is_file():
        return path
    # in-memory uploads were saved in the run's folder; if the folder was moved, look for them where it is now
    if offline.folder is not None and (offline.folder / path.name).is_file():
        return offline.folder / path.name
    return None


def _scale_file(ref: Any, offline: ScaleOfflineRun, lazy: bool) -> FileValue | str:
    """The file, or a description of the missing source."""
    source = _scale_source(ref.path, offline)
    recorded = offline.uploads.get(ref.path)
    if source is None:
        return recorded or f"(no upload request for {ref.path})"
    name = Path(recorded or source).name
    mime = ref.mime_type or "application/octet-stream"
    # keep the storage path neptune-scale chose: it is what a real 3.x server would hand out
    if lazy:
        return FileValue(b"", name, mime, path=ref.path, source=source)
    return FileValue(source.read_bytes(), name, mime, path=ref.path)


def _scale_value(value: Any, offline: ScaleOfflineRun, lazy: bool) -> tuple[str, Any]:
    """(kind, python value) of an ingest ``Value``; kind is the oneof field name."""
    kind = value.WhichOneof("value")
    if kind == "float64":
        return kind, value.float64
    if kind == "int64":
        return kind, value.int64
    if kind == "bool":
        return kind, value.bool
    if kind == "string":
        return kind, value.string
    if kind == "timestamp":
        return kind, from_ms(_scale_ts(value.timestamp))
    if kind == "string_set":
        return kind, frozenset(value.string_set.values)
    if kind == "file_ref":
        return kind, _scale_file(value.file_ref, offline, lazy)
    if kind == "histogram":
        h = value.histogram
        which = h.WhichOneof("values")
        counts = list(h.counts.values) if which == "counts" else list(h.densities.values)
        return kind, Histogram(
            "COUNTING" if which == "counts" else "DENSITY", list(h.bin_edges), [float(c) for c in counts]
        )
    if kind is None:
        # proto3 drops zero values: an empty Value is a zero whose type the writer did not keep
        return "float64", 0.0
    raise ValueError(f"unsupported value kind {kind}")


_ATOM_TYPES = {
    "float64": "float",
    "int64": "int",
    "bool": "bool",
    "string": "string",
    "timestamp": "datetime",
    "string_set": "string_set",
    "file_ref": "file",
}
_SERIES_TYPES = {
    "float64": "float_series",
    "string": "string_series",
    "histogram": "histogram_series",
    "file_ref": "file_series",
}


def replay_scale_run(offline: ScaleOfflineRun, *, lazy_files: bool = False) -> Replay:
    """Replay one neptune-scale offline run. A fork names its parent (``fork_parent_id`` and the sys/forking/*
    attributes) but holds only its own points: the parent is another run, possibly in another folder."""
    from neptune_scale.sync.operations_repository import OperationType

    create = next((op.operation for op in offline.operations if op.operation_type == OperationType.CREATE_RUN), None)
    if create is None:
        raise ValueError(f"offline run {offline.run_id} has no CreateRun operation")
    created = from_ms(_scale_ts(create.creation_time)) if create.HasField("creation_time") else dt.datetime.now(dt.UTC)
    forked = create.HasField("fork_point") and bool(create.fork_point.parent_run_id)
    run = OfflineRunData.create(
        offline.run_id,
        creation_time=created,
        experiment_name=create.experiment_id or None,
        fork_parent_id=create.fork_point.parent_run_id if forked else None,
        fork_step=_scale_step(create.fork_point.step) if forked else None,
    )
    replay = Replay(run)
    for op in offline.operations:
        if op.operation_type != OperationType.UPDATE_SNAPSHOT:
            continue
        snap = op.operation
        step = _scale_step(snap.step) if snap.HasField("step") else None
        ts = _scale_ts(snap.timestamp) if snap.HasField("timestamp") else op.timestamp
        for path, value in snap.assign.items():
            kind, py = _scale_value(value, offline, lazy_files)
            if isinstance(py, str) and kind == "file_ref":
                replay.missing.append(f"{path}: {py}")
                continue
            if kind not in _ATOM_TYPES:
                raise TypeError(f"{path}: a {kind} cannot be assigned, only appended")
            run.set(path, py, _ATOM_TYPES[kind])
        for path, modify in snap.modify_sets.items():
            current = set(run.attributes[path].value) if path in run.attributes else set()
            for tag, action in modify.string.values.items():
                if action == 1:  # ADD
                    current.add(tag)
                elif action == 2:  # REMOVE
                    current.discard(tag)
            run.set(path, frozenset(current), "string_set")
        for path, value in snap.append.items():
            kind, py = _scale_value(value, offline, lazy_files)
            type_ = _SERIES_TYPES.get(kind)
            if type_ is None or step is None:
                replay.skipped.append(f"append {kind} {path}")
                continue
            if isinstance(py, str) and kind == "file_ref":
                replay.missing.append(f"{path}@{step!r}: {py}")
                continue
            preview = snap.preview if snap.HasField("preview") else None
            _log(
                replay,
                f"append {path}",
                type_,
                step,
                py,
                ts,
                is_preview=bool(preview and preview.is_preview),
                completion_ratio=preview.completion_ratio if preview and preview.is_preview else 1.0,
            )
    run.touch()
    return replay


def _log(replay: Replay, what: str, type_: str, step: float, value: Any, ts: int, **preview: Any) -> bool:
    """Append a point as a Neptune server would accept it. Neither client checks steps before writing offline;
    the server rejects a point whose step does not increase (or whose type differs) and keeps the rest."""
    path = what.split(" ", 1)[1]
    try:
        replay.run.log(path, type_, step, value, ts, **preview)
    except (ValueError, TypeError) as exc:
        replay.skipped.append(f"{what}@{float(step)!r}: {exc}")
        return False
    return True


# ---------------------------------------------------------------- neptune 1.x


@dataclass
class Neptune1OfflineRun:
    container_id: str
    container_type: str
    created_at: dt.datetime
    operations: list[Any]  # neptune.internal.operation.Operation objects, in order
    upload_path: Path
    folder: Path | None = None  # the run folder itself
    last_operation_at: dt.datetime | None = None  # when the client queued its last operation


def read_neptune1_metadata(run_dir: Path) -> tuple[str, str, dt.datetime]:
    """(container id, container type, creation time) from a 1.x run folder's metadata.json alone."""
    meta = json.loads((Path(run_dir) / "metadata.json").read_text())
    return meta["containerId"], meta.get("containerType", "run"), _n1_created(meta, Path(run_dir), None)


def _n1_created(meta: dict[str, Any], run_dir: Path, first_at: float | None) -> dt.datetime:
    if "createdAt" in meta:
        return dt.datetime.fromisoformat(meta["createdAt"])
    if first_at is not None:
        return dt.datetime.fromtimestamp(first_at, dt.UTC)
    return dt.datetime.fromtimestamp((run_dir / "metadata.json").stat().st_mtime, dt.UTC)


def read_neptune1_offline(run_dir: Path) -> Neptune1OfflineRun:
    """Read one 1.x offline run folder through a copy, with the client's own disk queue."""
    from neptune.core.components.queue.disk_queue import DiskQueue
    from neptune.internal.operation import Operation

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "metadata.json").read_text())
    ops: list[Any] = []
    last_at: float | None = None
    first_at: float | None = None
    with tempfile.TemporaryDirectory(prefix="neptune-offline-") as tmp:
        copy = Path(tmp) / "q"
        # the queue needs only its logs and version files; uploads are read in place, never through the copy
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("upload_path"))
        # reading must not skip anything already "acknowledged": offline runs are never synced
        (copy / "last_ack_version").write_text("0")
        queue: DiskQueue[Any] = DiskQueue(
            data_path=copy, to_dict=lambda o: o.to_dict(), from_dict=Operation.from_dict, lock=threading.RLock()
        )
        try:
            while True:
                element = queue.get()
                if element is None:
                    break
                ops.append(element.obj)
                if element.at is not None:
                    first_at = element.at if first_at is None else first_at
                    last_at = element.at
        finally:
            queue.close()
    return Neptune1OfflineRun(
        meta["containerId"],
        meta.get("containerType", "run"),
        _n1_created(meta, run_dir, first_at),
        ops,
        run_dir / "upload_path",
        run_dir,
        dt.datetime.fromtimestamp(last_at, dt.UTC) if last_at is not None else None,
    )


def _n1_path(op: Any) -> str:
    return "/".join(op.path)


def _ext_name(path: str, ext: str | None) -> str:
    leaf = path.rsplit("/", 1)[-1]
    return f"{leaf}.{ext}" if ext else leaf


def _file_set_entries(globs: list[str], cwd: Path | None) -> dict[str, Path]:
    """What the 1.x client would upload for these globs: relative name -> file (its own rules, see
    neptune.internal.backends.hosted_file_operations.get_unique_upload_entries)."""
    absolute = sorted({os.path.abspath(p) for g in globs for p in glob.glob(g, recursive=True)})
    if not absolute:
        return {}
    try:
        root: str | None = os.path.commonpath(absolute)
        if os.path.isfile(root):
            root = os.path.dirname(root)
        # the client shortened names to its working directory, the folder where .neptune was created
        if cwd is not None and root.startswith(str(cwd) + os.sep):
            root = str(cwd)
    except ValueError:
        root = None
    entries: dict[str, Path] = {}
    for path in absolute:
        target = os.path.relpath(path, root) if root is not None else path
        if os.path.isdir(path):
            for dirpath, _dirs, files in os.walk(path):
                for name in files:
                    full = Path(dirpath) / name
                    rel = os.path.normpath(os.path.join(target, os.path.relpath(dirpath, path), name))
                    entries[rel.replace(os.sep, "/").lstrip("/")] = full
        else:
            entries[target.replace(os.sep, "/").lstrip("/")] = Path(path)
    return entries


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()  # the hash neptune 1.x artifact drivers record, not a security check
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _artifact_files(location: str, destination: str | None) -> tuple[list[ArtifactFile], list[str]]:
    """The files an artifact location stood for, described as neptune 1.x's artifact drivers do (local files are
    hashed here; the client's own hasher would write a cache under the home folder). Returns (files, missing)."""
    scheme = urlparse(location).scheme
    if scheme not in ("", "file"):
        # only the location is known offline: the client lists remote files when it syncs
        name = location.rstrip("/").rsplit("/", 1)[-1]
        entry = f"{destination}/{name}" if destination else name
        return [ArtifactFile(entry, "", scheme.upper(), None, (("location", location),))], []
    source = Path(location.removeprefix("file://")).expanduser()
    if not source.exists():
        return [], [location]
    candidates = sorted(source.rglob("*")) if source.is_dir() else [source]
    files = []
    for file in candidates:
        if not file.is_file():
            continue
        rel = file.relative_to(source).as_posix() if source.is_dir() else file.name
        rel = rel if destination is None else (Path(destination) / rel).as_posix()
        stat = file.stat()
        modified = dt.datetime.fromtimestamp(stat.st_mtime).strftime("%Y-%m-%d %H:%M:%S")
        files.append(ArtifactFile(rel, _sha1(file), "Local", stat.st_size,
                                  (("file_path", f"file://{file.resolve().as_posix()}"), ("last_modified", modified))))
    return files, []


def artifact_hash(files: tuple[ArtifactFile, ...]) -> str:
    """The artifact hash neptune 1.x computes (``FileHasher.get_artifact_hash``), from the same fields."""
    digest = hashlib.sha256()

    def length(n: int, size: int) -> bytes:
        return n.to_bytes(size, "big")

    for f in sorted(files, key=lambda f: f.file_path):
        digest.update(b"#" + length(len(f.file_path), 4) + f.file_path.encode())
        digest.update(b"#" + f.file_hash.encode())
        digest.update(b"#")
        if f.size is not None:
            digest.update(length(f.size, 8))
        digest.update(b"#" + length(len(f.type), 4) + f.type.encode())
        digest.update(b"#")
        for key, value in sorted(f.metadata):
            digest.update(b"|" + length(len(key), 4) + key.encode())
            digest.update(b"|" + length(len(value), 4) + value.encode())
    return digest.hexdigest()


def replay_neptune1_run(
    offline: Neptune1OfflineRun,
    *,
    custom_run_id: str | None = None,
    creation_time: dt.datetime | None = None,
    lazy_files: bool = False,
    legacy_types: bool = False,
    cwd: Path | None = None,
) -> Replay:
    """Replay one 1.x offline run. Project, custom run id and creation time are not in the folder, so the caller
    may supply them (defaults: the container id and the folder's createdAt).

    ``legacy_types`` replays file sets and artifacts (2.x-only kinds); their files are read as the client would
    have read them when syncing: file set globs from ``cwd`` (where the script ran), artifact locations as given."""
    run = OfflineRunData.create(
        custom_run_id or offline.container_id, name="", creation_time=creation_time or offline.created_at
    )
    replay = Replay(run)
    last_step: dict[str, float] = {}
    artifact_entries: dict[str, list[ArtifactFile]] = {}
    for op in offline.operations:
        kind = type(op).__name__
        path = _n1_path(op)
        if kind == "AssignFloat":
            run.set(path, float(op.value), "float")
        elif kind == "AssignInt":
            run.set(path, int(op.value), "int")
        elif kind == "AssignBool":
            run.set(path, bool(op.value), "bool")
        elif kind == "AssignString":
            run.set(path, op.value, "string")
        elif kind == "AssignDatetime":
            value = op.value if isinstance(op.value, dt.datetime) else from_ms(int(op.value))
            run.set(path, value, "datetime")
        elif kind in ("AddStrings", "RemoveStrings", "ClearStringSet"):
            current = set(run.attributes[path].value) if path in run.attributes else set()
            if kind == "AddStrings":
                current |= set(op.values)
            elif kind == "RemoveStrings":
                current -= set(op.values)
            else:
                current.clear()
            run.set(path, frozenset(current), "string_set")
        elif kind in ("LogFloats", "LogStrings", "LogImages"):
            type_ = {"LogFloats": "float_series", "LogStrings": "string_series", "LogImages": "file_series"}[kind]
            for v in op.values:
                # a missing step is the previous accepted one + 1 (as the server numbered it); timestamps are seconds
                step = v.step if v.step is not None else last_step.get(path, -1.0) + 1
                value: Any = v.value
                if kind == "LogFloats":
                    value = float(value)
                elif kind == "LogImages":
                    n = len(run.attributes[path].value) if path in run.attributes else 0
                    value = FileValue(base64.b64decode(v.value.data or ""), v.value.name or f"{n}.png", "image/png")
                if _log(replay, f"{kind} {path}", type_, step, value, round(float(v.ts) * 1000)):
                    last_step[path] = float(step)
        elif kind == "UploadFile":
            source = Path(op.file_path) if op.file_path else offline.upload_path / (op.tmp_file_name or "")
            name = source.name if op.file_path else _ext_name(path, op.ext)
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
            if not source.is_file():
                replay.missing.append(f"{path}: {source}")
                run.attributes.pop(path, None)
                continue
            if lazy_files:
                run.set(path, FileValue(b"", name, mime, source=source), "file")
            else:
                run.set(path, FileValue(source.read_bytes(), name, mime), "file")
        elif kind == "UploadFileContent":
            name = _ext_name(path, op.ext)
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
            run.set(path, FileValue(base64.b64decode(op.file_content), name, mime), "file")
        elif kind == "UploadFileSet" and legacy_types:
            current = run.attributes.get(path)
            members: dict[str, Any] = {} if op.reset or current is None else dict(current.value)
            for rel, file in _file_set_entries(list(op.file_globs), cwd).items():
                members[rel] = file if lazy_files else file.read_bytes()
            if not op.file_globs or members:
                run.set(path, members, "file_set")
            for pattern in op.file_globs:
                if not glob.glob(pattern, recursive=True):
                    replay.missing.append(f"{path}: {pattern}")
        elif kind == "DeleteFiles" and legacy_types:
            if path in run.attributes:
                kept = {k: v for k, v in run.attributes[path].value.items() if k not in set(op.file_paths)}
                run.set(path, kept, "file_set")
        elif kind == "TrackFilesToArtifact" and legacy_types:
            entries = artifact_entries.setdefault(path, [])
            for location, destination in op.entries:
                files, gone = _artifact_files(location, destination)
                entries.extend(files)
                replay.missing.extend(f"{path}: {g}" for g in gone)
            by_path = {f.file_path: f for f in entries}  # a later track of the same name replaces the earlier
            files_now = tuple(sorted(by_path.values(), key=lambda f: f.file_path))
            run.set(path, ArtifactValue(artifact_hash(files_now), files_now), "artifact")
        elif kind == "ClearArtifact" and legacy_types:
            artifact_entries[path] = []
            run.set(path, ArtifactValue(artifact_hash(()), ()), "artifact")
        elif kind == "AssignArtifact" and legacy_types:
            run.set(path, ArtifactValue(str(op.hash), ()), "artifact")
        elif kind == "DeleteAttribute":
            run.attributes.pop(path, None)
        elif kind in ("ClearFloatLog", "ClearStringLog", "ClearImageLog"):
            if path in run.attributes:
                run.attributes[path].value.clear()
                last_step.pop(path, None)
        else:
            replay.skipped.append(f"{kind} {path}")
    run.touch()
    if offline.last_operation_at is not None and offline.last_operation_at > run.attributes[
        "sys/modification_time"
    ].value:
        # the client's own clock for its last write is the best "modified" there is offline
        run.set("sys/modification_time", offline.last_operation_at, "datetime")
        run.set("sys/ping_time", offline.last_operation_at, "datetime")
    return replay


def iter_file_set(value: dict[str, Any]) -> Iterator[tuple[str, bytes | Path]]:
    """(relative name, bytes or source path) of each member of a file set, in name order."""
    for rel in sorted(value):
        yield rel, value[rel]
