"""Turn what the Neptune clients wrote in offline mode into model runs.

Two sources, each read with the reader its own library ships:
- neptune-scale 0.30: ``.neptune/<ws>_<proj>_<run>_<ns>/run_operations.sqlite3`` via
  ``neptune_scale.sync.operations_repository.OperationsRepository`` (protobuf ``Run`` and
  ``UpdateRunSnapshot`` operations, plus file upload requests naming absolute source paths).
- neptune 1.x: ``.neptune/offline/run__<uuid>__<pid>__<rand>/`` via
  ``neptune.core.components.queue.disk_queue.DiskQueue``
  and ``neptune.internal.operation.Operation.from_dict``; read from a copy, never acknowledged.

The replay functions take already-read operations, so the offline source can share them. What a replay
cannot represent (file sets, artifacts, config of float series) is listed in ``Replay.skipped``.
"""

from __future__ import annotations

import base64
import datetime as dt
import mimetypes
import shutil
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .model import UTC, FileValue, Histogram, Project, Run, from_ms


@dataclass
class Replay:
    run: Run
    skipped: list[str] = field(default_factory=list)  # "<operation type> <path>" we could not represent


# ---------------------------------------------------------------- neptune-scale


@dataclass
class ScaleOfflineRun:
    project: str
    run_id: str
    operations: list[Any]  # neptune_scale Operation (sequence_id, timestamp, operation_type, operation)
    uploads: dict[str, str]  # destination path -> absolute source path


def read_scale_offline(db_path: Path) -> ScaleOfflineRun:
    """Read one neptune-scale offline database with the library's own repository class."""
    from neptune_scale.sync.operations_repository import OperationsRepository

    repo = OperationsRepository(Path(db_path).resolve())
    try:
        meta = repo.get_metadata()
        if meta is None:
            raise ValueError(f"{db_path} holds no run metadata")
        ops = []
        last = None
        while True:  # the repository pages by size; 64 MB pages keep memory bounded
            page = repo.get_operations(up_to_bytes=64 * 1024 * 1024, from_exclusive=last)
            if not page:
                break
            ops.extend(page)
            last = page[-1].sequence_id
        uploads = {u.destination: u.source_path for u in repo.get_file_upload_requests(10**9)}
    finally:
        repo.close(cleanup_files=False)
    return ScaleOfflineRun(meta.project, meta.run_id, ops, uploads)


def _scale_step(step: Any) -> float:
    return step.whole + step.micro / 1_000_000


def _scale_ts(ts: Any) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


def _scale_file(ref: Any, uploads: dict[str, str]) -> FileValue:
    source = uploads.get(ref.path)
    data = Path(source).read_bytes() if source and Path(source).exists() else b""
    name = Path(source).name if source else ref.path.rsplit("/", 1)[-1]
    # keep the storage path neptune-scale chose: it is what a real 3.x server would hand out
    return FileValue(data, name, ref.mime_type or "application/octet-stream", path=ref.path)


def _scale_value(value: Any, uploads: dict[str, str]) -> tuple[str, Any]:
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
        return kind, _scale_file(value.file_ref, uploads)
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


def replay_scale_run(
    project: Project,
    offline: ScaleOfflineRun,
    *,
    runs_by_id: dict[str, Run] | None = None,
    owner: str = "offline-user",
) -> Replay:
    """Add one neptune-scale offline run to ``project``; ``runs_by_id`` resolves fork parents."""
    from neptune_scale.sync.operations_repository import OperationType

    create = next((op.operation for op in offline.operations if op.operation_type == OperationType.CREATE_RUN), None)
    if create is None:
        raise ValueError(f"offline run {offline.run_id} has no CreateRun operation")
    created = from_ms(_scale_ts(create.creation_time)) if create.HasField("creation_time") else dt.datetime.now(UTC)
    parent = None
    fork_step = None
    if create.HasField("fork_point") and create.fork_point.parent_run_id:
        parent = (runs_by_id or {}).get(create.fork_point.parent_run_id) or project.run_by_custom_id(
            create.fork_point.parent_run_id
        )
        fork_step = _scale_step(create.fork_point.step)
    run = project.new_run(
        offline.run_id,
        experiment_name=create.experiment_id or None,
        creation_time=created,
        owner=owner,
        fork_of=parent,
        fork_step=fork_step if parent is not None else None,
    )
    replay = Replay(run)
    if create.HasField("fork_point") and parent is None:
        replay.skipped.append(f"fork parent {create.fork_point.parent_run_id} not found")
    for op in offline.operations:
        if op.operation_type != OperationType.UPDATE_SNAPSHOT:
            continue
        snap = op.operation
        step = _scale_step(snap.step) if snap.HasField("step") else None
        ts = _scale_ts(snap.timestamp) if snap.HasField("timestamp") else op.timestamp
        for path, value in snap.assign.items():
            kind, py = _scale_value(value, offline.uploads)
            run.set(path, py, _ATOM_TYPES.get(kind))
        for path, modify in snap.modify_sets.items():
            current = set(run.attributes[path].value) if path in run.attributes else set()
            for tag, action in modify.string.values.items():
                if action == 1:  # ADD
                    current.add(tag)
                elif action == 2:  # REMOVE
                    current.discard(tag)
            run.set(path, frozenset(current), "string_set")
        for path, value in snap.append.items():
            kind, py = _scale_value(value, offline.uploads)
            type_ = _SERIES_TYPES.get(kind)
            if type_ is None or step is None:
                replay.skipped.append(f"append {kind} {path}")
                continue
            preview = snap.preview if snap.HasField("preview") else None
            run.log(
                path,
                type_,
                step,
                py,
                ts,
                is_preview=bool(preview and preview.is_preview),
                completion_ratio=preview.completion_ratio if preview and preview.is_preview else 1.0,
            )
    run.touch()
    return replay


# ---------------------------------------------------------------- neptune 1.x


@dataclass
class Neptune1OfflineRun:
    container_id: str
    container_type: str
    created_at: dt.datetime
    operations: list[Any]  # neptune.internal.operation.Operation objects, in order
    upload_path: Path


def read_neptune1_offline(run_dir: Path) -> Neptune1OfflineRun:
    """Read one 1.x offline run folder through a copy, with the client's own disk queue."""
    import json

    from neptune.core.components.queue.disk_queue import DiskQueue
    from neptune.internal.operation import Operation

    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "metadata.json").read_text())
    ops: list[Any] = []
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "q"
        shutil.copytree(run_dir, copy)
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
        finally:
            queue.close()
    created = dt.datetime.fromisoformat(meta["createdAt"])
    return Neptune1OfflineRun(
        meta["containerId"], meta.get("containerType", "run"), created, ops, run_dir / "upload_path"
    )


def _n1_path(op: Any) -> str:
    return "/".join(op.path)


def replay_neptune1_run(
    project: Project,
    offline: Neptune1OfflineRun,
    *,
    custom_run_id: str | None = None,
    creation_time: dt.datetime | None = None,
    owner: str = "offline-user",
) -> Replay:
    """Add one 1.x offline run. Project, custom run id and creation time are not in the folder, so the caller
    may supply them (defaults: the container id and the folder's createdAt)."""
    run = project.new_run(
        custom_run_id or offline.container_id,
        name="",
        creation_time=creation_time or offline.created_at,
        owner=owner,
    )
    replay = Replay(run)
    last_step: dict[str, float] = {}
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
                # 1.x fills a missing step with previous + 1, and its timestamps are seconds
                step = v.step if v.step is not None else last_step.get(path, -1.0) + 1
                last_step[path] = float(step)
                value: Any = v.value
                if kind == "LogFloats":
                    value = float(value)
                elif kind == "LogImages":
                    n = len(run.attributes[path].value) if path in run.attributes else 0
                    value = FileValue(base64.b64decode(v.value.data or ""), v.value.name or f"{n}.png", "image/png")
                run.log(path, type_, step, value, round(float(v.ts) * 1000))
        elif kind == "UploadFile":
            source = Path(op.file_path) if op.file_path else offline.upload_path / (op.tmp_file_name or "")
            name = source.name if op.file_path else f"{path.rsplit('/', 1)[-1]}.{op.ext}" if op.ext else source.name
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
            data = source.read_bytes() if source.is_file() else b""
            if not source.is_file():
                replay.skipped.append(f"UploadFile {path} (source {source} is gone)")
            run.set(path, FileValue(data, name, mime), "file")
        elif kind == "UploadFileContent":
            name = f"{path.rsplit('/', 1)[-1]}.{op.ext}" if op.ext else path.rsplit("/", 1)[-1]
            mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
            run.set(path, FileValue(base64.b64decode(op.file_content), name, mime), "file")
        elif kind == "DeleteAttribute":
            run.attributes.pop(path, None)
        elif kind in ("ClearFloatLog", "ClearStringLog", "ClearImageLog"):
            if path in run.attributes:
                run.attributes[path].value.clear()
                last_step.pop(path, None)
        else:
            replay.skipped.append(f"{kind} {path}")
    run.touch()
    return replay


def replay_offline_tree(project: Project, root: Path) -> list[Replay]:
    """Replay every offline run under ``root`` (a ``.neptune`` folder or its parent), scale runs first so
    forks find their parents in creation order."""
    root = Path(root)
    base = root / ".neptune" if (root / ".neptune").is_dir() else root
    replays: list[Replay] = []
    scale = [read_scale_offline(p) for p in sorted(base.glob("*/run_operations.sqlite3"))]
    scale.sort(key=lambda s: s.operations[0].timestamp if s.operations else 0)
    by_id: dict[str, Run] = {}
    for offline in scale:
        replay = replay_scale_run(project, offline, runs_by_id=by_id)
        by_id[offline.run_id] = replay.run
        replays.append(replay)
    for run_dir in sorted((base / "offline").glob("run__*")) if (base / "offline").is_dir() else []:
        replays.append(replay_neptune1_run(project, read_neptune1_offline(run_dir)))
    return replays


def _unused(_: Iterable[Any]) -> None:  # pragma: no cover - keeps Iterable imported for type readers
    return None
