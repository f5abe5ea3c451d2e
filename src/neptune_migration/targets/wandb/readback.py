"""Read a loaded run back from W&B for validation: offline from the run folder, online through `wandb.Api`.

Both return the same `WandbRunData`, so validation compares one shape with the archive whichever mode
was used. History points are keyed by W&B key; each is (Neptune step, value, timestamp in ms), the step
taken from `neptune_step` when the run was written in ordinal mode, else from `_step`.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neptune_migration.hashing import file_sha256
from neptune_migration.targets.wandb.names import STEP_KEY
from neptune_migration.targets.wandb.records import read_records

_INTERNAL = {"_step", "_timestamp", "_runtime", STEP_KEY}


@dataclass
class ArtifactFile:
    size: int
    sha256: str  # "" when not downloaded (online read-back without download=True)
    md5_b64: str = ""  # the manifest digest W&B keeps for the entry


@dataclass
class WandbRunData:
    run_id: str
    entity: str | None
    project: str
    name: str
    group: str
    notes: str
    tags: list[str]
    config: dict[str, Any]
    summary: dict[str, Any]
    start_time_ms: int | None
    runtime_s: float | None
    state: str  # "finished" / "failed" / "running" (no exit record)
    history: dict[str, list[tuple[float, Any, int]]] = field(default_factory=dict)
    history_rows: int = 0
    # String series, from the table files or the string-series artifacts: key -> [(step, timestamp ms, text)].
    string_series: dict[str, list[tuple[float, int, str | None]]] = field(default_factory=dict)
    # Artifacts: name -> {"type": ..., "metadata": {...}, "files": {entry path: ArtifactFile}}.
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def points(self, key: str) -> list[tuple[float, Any, int]]:
        return self.history.get(key, [])


def _loads(text: str) -> Any:
    return json.loads(text) if text else None


_PREFIX = "offline-run-"


def _run_id_of(name: str) -> str | None:
    """`offline-run-<YYYYmmdd_HHMMSS>-<run id>` -> run id (the timestamp holds no `-`, run ids may)."""
    if not name.startswith(_PREFIX):
        return None
    return name[len(_PREFIX):].partition("-")[2] or None


class RunFolderIndex:
    """The offline run folders under one target root, by W&B run id: listed once, then kept current by the
    target that writes them. A glob of `wandb/` for every lookup made a 10,000-run load quadratic.

    Active only while a target holds it (`activate` / `deactivate`): that target is the only writer of the
    folder for its lifetime (other processes are kept out by the ledger lock), so a run id it has not written
    and did not find at listing time does not exist. Outside that, lookups glob the folder as before.
    """

    def __init__(self, root: Path) -> None:
        self.base = root / "wandb"
        self._lock = threading.Lock()
        self._by_id: dict[str, set[str]] | None = None

    def _listed(self) -> dict[str, set[str]]:
        if self._by_id is None:
            by_id: dict[str, set[str]] = {}
            if self.base.is_dir():
                for entry in os.scandir(self.base):
                    run_id = _run_id_of(entry.name)
                    if run_id is not None and entry.is_dir():
                        by_id.setdefault(run_id, set()).add(entry.name)
            self._by_id = by_id
        return self._by_id

    def folders(self, wandb_run_id: str) -> list[Path]:
        with self._lock:
            names = sorted(self._listed().get(wandb_run_id, ()))
            found = [self.base / n for n in names if (self.base / n).is_dir()]
            if len(found) != len(names):
                self._by_id = None  # removed behind our back: list again next time
        return found

    def note(self, folder: Path) -> None:
        run_id = _run_id_of(folder.name)
        if run_id is not None and folder.parent == self.base:
            with self._lock:
                self._listed().setdefault(run_id, set()).add(folder.name)

    def activate(self) -> None:
        with _active_lock:
            _active[os.path.abspath(self.base)] = self

    def deactivate(self) -> None:
        with _active_lock:
            if _active.get(os.path.abspath(self.base)) is self:
                del _active[os.path.abspath(self.base)]


_active_lock = threading.Lock()
_active: dict[str, RunFolderIndex] = {}


def _index_for(base: Path) -> RunFolderIndex | None:
    with _active_lock:
        return _active.get(os.path.abspath(base)) if _active else None


def run_folders(root: Path, wandb_run_id: str) -> list[Path]:
    """Every offline run folder of one W&B run id under a target root, oldest name first."""
    index = _index_for(root / "wandb")
    if index is not None:
        return index.folders(wandb_run_id)
    return sorted(p for p in (root / "wandb").glob(f"{_PREFIX}*-{wandb_run_id}") if _run_id_of(p.name) == wandb_run_id)


def find_run_folder(root: Path, wandb_run_id: str) -> Path | None:
    found = run_folders(root, wandb_run_id)
    return found[-1] if found else None


def note_run_folder(folder: Path) -> None:
    """A folder just renamed into place under `<root>/wandb/`: the active index (if any) learns it."""
    index = _index_for(folder.parent)
    if index is not None:
        index.note(folder)


def read_offline(folder: Path, root: Path | None = None) -> WandbRunData:
    """Parse an offline run folder written by the W&B target (or by wandb itself)."""
    root = root if root is not None else folder.parent.parent
    files = sorted(folder.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no .wandb file in {folder}")
    data: WandbRunData | None = None
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: dict[str, list[tuple[float, Any, int]]] = {}
    rows = 0
    state = "running"
    runtime = None
    artifacts: dict[str, dict[str, Any]] = {}
    for rec in read_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            for item in r.config.update:
                _set(config, [item.key] if item.key else list(item.nested_key), _loads(item.value_json))
            data = WandbRunData(
                run_id=r.run_id,
                entity=r.entity or None,
                project=r.project,
                name=r.display_name,
                group=r.run_group,
                notes=r.notes,
                tags=list(r.tags),
                config=config,
                summary=summary,
                start_time_ms=r.start_time.ToMilliseconds() if r.HasField("start_time") else None,
                runtime_s=None,
                state=state,
            )
        elif kind == "config":
            for item in rec.config.update:
                _set(config, [item.key] if item.key else list(item.nested_key), _loads(item.value_json))
        elif kind == "summary":
            for item in rec.summary.update:
                _set(summary, [item.key] if item.key else list(item.nested_key), _loads(item.value_json))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _set(row, [item.key] if item.key else list(item.nested_key), _loads(item.value_json))
            _add_row(history, row)
            rows += 1
        elif kind == "exit":
            state = "failed" if rec.exit.exit_code else "finished"
            runtime = rec.exit.runtime
        elif kind == "artifact":
            a = rec.artifact
            entries = {}
            for e in a.manifest.contents:
                local = root / e.local_path if not Path(e.local_path).is_absolute() else Path(e.local_path)
                entries[e.path] = ArtifactFile(e.size, file_sha256(local) if local.exists() else "", e.digest)
            artifacts[a.name] = {"type": a.type, "metadata": _loads(a.metadata) or {}, "files": entries}
    if data is None:
        raise ValueError(f"{files[0]} has no run record")
    data.state = state
    data.runtime_s = runtime
    data.history = history
    data.history_rows = rows
    data.artifacts = artifacts
    data.string_series = _string_series(summary, lambda rel: (folder / "files" / rel).read_bytes(), artifacts, root)
    return data


def _add_row(history: dict[str, list[tuple[float, Any, int]]], row: dict[str, Any]) -> None:
    step = row.get(STEP_KEY, row.get("_step"))
    ts = row.get("_timestamp")
    ts_ms = round(ts * 1000) if isinstance(ts, int | float) and math.isfinite(ts) else None
    for k, v in row.items():
        if k in _INTERNAL:
            continue
        history.setdefault(k, []).append((step, v, ts_ms))


def _set(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = target.get(k)
        if not isinstance(nxt, dict):
            nxt = target[k] = {}
        target = nxt
    target[keys[-1]] = value



def _string_series(
    summary: dict[str, Any],
    read_run_file: Any,
    artifacts: dict[str, dict[str, Any]],
    root: Path | None,
    read_artifact_file: Any = None,
) -> dict[str, list[tuple[float, int, str | None]]]:
    out: dict[str, list[tuple[float, int, str | None]]] = {}
    for key, value in summary.items():
        if not isinstance(value, dict):
            continue
        tables: list[dict[str, Any]] = []
        if value.get("_type") == "table-file":
            tables.append(json.loads(read_run_file(value["path"])))
        elif value.get("_type") == "neptune-string-series":
            name = value["artifact"]
            for entry in sorted(artifacts.get(name, {}).get("files", {})):
                tables.append(json.loads(read_artifact_file(name, entry)) if read_artifact_file else {})
        else:
            continue
        points: list[tuple[float, int, str | None]] = []
        for t in tables:
            for step, ts, text in t.get("data", []):
                points.append((step, round(ts * 1000), text))
        out[key] = points
    return out


def is_sync_folder(folder: Path) -> bool:
    """A folder `migrate --sync` wrote: `offline-run-<time>_sync<n>-<id>`, resuming the run before it."""
    return "_sync" in folder.name[len(_PREFIX):].partition("-")[0]


def read_offline_run(root: Path, wandb_run_id: str) -> WandbRunData:
    """The run `wandb_run_id` under an offline target root (`--to wandb-offline DIR`): its last whole folder,
    followed by the folders syncs appended to it (each holds only the history rows after the ones before it)."""
    folders = run_folders(root, wandb_run_id)
    if not folders:
        raise FileNotFoundError(f"no offline run folder for {wandb_run_id} under {root}")
    base = max((i for i, f in enumerate(folders) if not is_sync_folder(f)), default=0)
    data = _read_offline_run(root, folders[base])
    for folder in folders[base + 1:]:
        more = _read_offline_run(root, folder)
        for key, points in more.history.items():
            data.history.setdefault(key, []).extend(points)
        data.history_rows += more.history_rows
        data.summary.update(more.summary)
        data.string_series.update(more.string_series)
        data.artifacts.update(more.artifacts)
        for name in ("name", "group", "notes", "tags", "config", "state", "runtime_s"):
            setattr(data, name, getattr(more, name))
    return data


def _read_offline_run(root: Path, folder: Path) -> WandbRunData:
    data = read_offline(folder, root)
    # Large string series live in artifacts: read their tables from the staged payloads.
    arts = {}
    for rec in read_records(next(folder.glob("run-*.wandb"))):
        if rec.WhichOneof("record_type") == "artifact":
            arts[rec.artifact.name] = {e.path: root / e.local_path for e in rec.artifact.manifest.contents}
    data.string_series = _string_series(
        data.summary,
        lambda rel: (folder / "files" / rel).read_bytes(),
        data.artifacts,
        root,
        lambda name, entry: arts[name][entry].read_bytes(),
    )
    return data
