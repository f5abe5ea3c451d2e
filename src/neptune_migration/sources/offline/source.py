"""Neptune data that never reached a server: offline folders written by neptune 1.x and neptune-scale 0.30.

`OfflineSource(PATH)` finds every offline run under PATH, replays its operations (`replay.py`, with the clients'
own readers, into the runs of `runs.py`) and writes it into the archive like any other source.

What the formats do not record is derived, and every derivation can be overridden:
- project: neptune-scale records it; a 1.x folder does not, so it becomes `offline/<folder holding .neptune>`
  unless `assign_project` names one (which then applies to every run found).
- run id: neptune-scale records it; a 1.x run gets its container id (a UUID), or `run_id_template`.
- creation time: a 1.x folder's `metadata.json` createdAt (the client's clock when the run started).

Strictly read-only on the user's folders: the readers work on private copies, files are opened for reading only.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchiveWriter
from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.paths import resolve_inside, safe_relpath
from neptune_migration.selection import Selection
from neptune_migration.sources.base import ExportStats
from neptune_migration.sources.offline.replay import (
    Replay,
    ScaleOfflineRun,
    find_offline_runs,
    iter_file_set,
    read_neptune1_metadata,
    read_neptune1_offline,
    read_scale_identity,
    read_scale_offline,
    replay_neptune1_run,
    replay_scale_run,
)
from neptune_migration.sources.offline.runs import ArtifactValue, Attribute, FileValue, Histogram, OfflineRunData
from neptune_migration.vocabulary import ATOM_TYPES, SERIES_TYPES, RunRef, folder_name

log = logging.getLogger("neptune_migration")

TEMPLATE_FIELDS = ("container_id", "short_id", "folder", "created", "index", "pid")
DEFAULT_PROJECT_WORKSPACE = "offline"


class OfflineSourceError(MigrationError):
    """An offline folder could not be read."""


@dataclass
class OfflineExportStats(ExportStats):
    skipped: list[str] = field(default_factory=list)  # operations the replay could not represent


@dataclass
class OfflineRun:
    """One offline run as `list_runs` returns it."""

    ref: RunRef
    kind: str  # "scale" or "neptune1"
    locations: list[Path]  # scale: one database per session of the run (a resumed run has several)
    derived: dict[str, str] = field(default_factory=dict)  # what the format did not record -> how it was derived
    modification_time: str | None = None
    partial: bool = False
    created: dt.datetime | None = None
    container_id: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the folder could not be read; export fails with this message

    @property
    def folder(self) -> Path:
        first = self.locations[0]
        return first.parent if self.kind == "scale" else first


class OfflineSource:
    name = "neptune-offline"

    def __init__(
        self,
        path: Path,
        selection: Selection,
        assign_project: str | None = None,
        run_id_template: str | None = None,
        previews: bool = False,
    ) -> None:
        self.path = Path(path)
        self.selection = selection
        self.assign_project = assign_project
        self.run_id_template = run_id_template
        self.previews = previews
        if assign_project is not None and not re.fullmatch(r"[^/\s]+/[^/\s]+", assign_project):
            raise UsageError(f"--assign-project must look like WORKSPACE/PROJECT, got {assign_project!r}")
        if run_id_template is not None:
            _check_template(run_id_template)
        self._runs: list[OfflineRun] | None = None

    # -- discovery --------------------------------------------------------------------------------------
    def check(self) -> None:
        if not self.path.exists():
            raise UsageError(f"offline folder {self.path} does not exist")
        if not self.path.is_dir():
            raise UsageError(f"{self.path} is not a folder; name the folder holding .neptune (or .neptune itself)")
        if not self._discover():
            raise UsageError(
                f"no offline Neptune runs under {self.path} (looked for .neptune/offline/run__* folders of "
                f"neptune 1.x and run_operations.sqlite3 databases of neptune-scale)"
            )

    @property
    def projects(self) -> list[str]:
        return sorted({r.ref.project_id for r in self._discover()})

    def _discover(self) -> list[OfflineRun]:
        if self._runs is None:
            self._runs = self._find()
        return self._runs

    def _find(self) -> list[OfflineRun]:
        runs: list[OfflineRun] = []
        scale_groups: dict[tuple[str, str], list[tuple[int, Path]]] = {}
        n1: list[OfflineRun] = []
        for loc in find_offline_runs(self.path):
            if loc.kind == "scale":
                try:
                    project, run_id, first = read_scale_identity(loc.path)
                except Exception as exc:
                    runs.append(self._unreadable(loc.path, "scale", exc))
                    continue
                scale_groups.setdefault((project, run_id), []).append((first, loc.path))
            else:
                try:
                    container_id, container_type, created = read_neptune1_metadata(loc.path)
                except Exception as exc:
                    runs.append(self._unreadable(loc.path, "neptune1", exc))
                    continue
                if container_type != "run":
                    log.warning("skipping %s: a neptune 1.x %s, not a run", loc.path, container_type)
                    continue
                n1.append(OfflineRun(RunRef("", ""), "neptune1", [loc.path], partial=loc.partial, created=created,
                                     container_id=container_id))
        for (project, run_id), dbs in sorted(scale_groups.items()):
            derived = {}
            if self.assign_project:
                derived["project"] = f"--assign-project (recorded: {project})"
            ref = RunRef(self.assign_project or project, run_id)
            runs.append(OfflineRun(ref, "scale", [p for _, p in sorted(dbs)], derived))
        n1.sort(key=lambda r: (r.created or dt.datetime.min.replace(tzinfo=dt.UTC), str(r.locations[0])))
        for index, run in enumerate(n1, start=1):
            run.ref, run.derived = self._n1_identity(run, index)
            runs.append(run)
        _refuse_duplicates(runs)
        for run in runs:
            if run.error is None:
                self._summarise(run)
        return runs

    def _unreadable(self, path: Path, kind: str, exc: Exception) -> OfflineRun:
        message = f"cannot read the offline run at {path}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        log.error("%s", message)
        folder = path.parent if kind == "scale" else path
        neptune_dir = folder.parent if kind == "scale" else folder.parent.parent
        project = self.assign_project or f"{DEFAULT_PROJECT_WORKSPACE}/{_folder_project(neptune_dir)}"
        return OfflineRun(RunRef(project, folder.name), kind, [path], error=message)

    def _n1_identity(self, run: OfflineRun, index: int) -> tuple[RunRef, dict[str, str]]:
        folder = run.locations[0]
        derived = {"creation_time": "metadata.json createdAt"}
        if self.assign_project:
            project = self.assign_project
            derived["project"] = "--assign-project"
        else:
            project = f"{DEFAULT_PROJECT_WORKSPACE}/{_folder_project(folder.parent.parent)}"
            derived["project"] = "the folder holding .neptune"
        if self.run_id_template:
            values = _template_values(folder, run.container_id or "", run.created, index)
            run_id = self.run_id_template.format(**values)
            derived["run_id"] = f"--run-id-template {self.run_id_template}"
        else:
            run_id = run.container_id or folder.name
            derived["run_id"] = "the container id in metadata.json"
        if not run_id.strip():
            raise UsageError(f"--run-id-template gives an empty run id for {folder}")
        return RunRef(project, run_id), derived

    def _summarise(self, run: OfflineRun) -> None:
        """Replay once to know what selection and `discover` need; payloads stay on disk."""
        try:
            replay = self._replay(run)
        except Exception as exc:
            run.error = f"cannot replay the offline run at {run.folder}: {type(exc).__name__}: {exc}"
            log.error("%s", run.error)
            return
        attrs = replay.run.attributes
        atoms = {p: a.value for p, a in attrs.items() if a.type in ATOM_TYPES}
        modified = atoms.get("sys/modification_time")
        run.modification_time = modified.astimezone(dt.UTC).isoformat() if isinstance(modified, dt.datetime) else None
        by_type: dict[str, int] = {}
        file_bytes = 0
        for path, attr in attrs.items():
            if _empty_file_set(attr) or not self.selection.wants_attribute(path, attr.type):
                continue
            by_type[attr.type] = by_type.get(attr.type, 0) + 1
            if attr.type == "file":
                file_bytes += attr.value.size
            elif attr.type == "file_series":
                file_bytes += sum(p.value.size for p in attr.value)
            elif attr.type == "file_set":
                file_bytes += sum(v.stat().st_size if isinstance(v, Path) else len(v) for v in attr.value.values())
        run.summary = {
            "atoms": atoms,
            "attributes_by_type": by_type,
            "experiment": atoms.get("sys/experiment/name"),
            "file_bytes": file_bytes,
            "missing_files": list(replay.missing),
        }

    def _replay(self, run: OfflineRun) -> Replay:
        if run.kind == "scale":
            parts = [read_scale_offline(p) for p in run.locations]
            merged = ScaleOfflineRun(
                parts[0].project,
                parts[0].run_id,
                [op for part in parts for op in part.operations],
                {k: v for part in parts for k, v in part.uploads.items()},
                parts[0].folder,
            )
            return replay_scale_run(merged, lazy_files=True)
        offline = read_neptune1_offline(run.locations[0])
        # .neptune is created in the working directory of the script, which file set globs were relative to
        neptune_dir = run.locations[0].parent.parent
        return replay_neptune1_run(
            offline,
            custom_run_id=run.ref.run_id,
            lazy_files=True,
            legacy_types=True,
            cwd=neptune_dir.parent.resolve(),
        )

    # -- the Source protocol ----------------------------------------------------------------------------
    def list_runs(self, project: str) -> list[OfflineRun]:
        out = []
        for run in self._discover():
            if run.ref.project_id != project:
                continue
            atoms = run.summary.get("atoms", {})
            if run.error is None and not self.selection.matches_run(project, run.ref.run_id, atoms):
                continue
            if run.error is not None and self.selection.runs and not self.selection.runs.search(run.ref.run_id):
                continue
            out.append(run)
            if self.selection.limit is not None and len(out) >= self.selection.limit:
                break
        return out

    def describe_run(self, run: OfflineRun) -> dict[str, Any]:
        return {
            "attributes_by_type": dict(run.summary.get("attributes_by_type", {})),
            "experiment": run.summary.get("experiment"),
            "file_bytes": int(run.summary.get("file_bytes", 0)),
            "project": run.ref.project_id,
            "run_id": run.ref.run_id,
            "format": "neptune-scale" if run.kind == "scale" else "neptune 1.x",
            "folder": str(run.folder),
            "derived": dict(run.derived),
            "partial": run.partial,
            "missing_files": list(run.summary.get("missing_files", [])),
            "error": run.error,
        }

    def export_run(self, run: OfflineRun, archive: ArchiveWriter) -> OfflineExportStats:
        if run.error is not None:
            raise OfflineSourceError(run.error)
        try:
            replay = self._replay(run)
        except Exception as exc:
            raise OfflineSourceError(
                f"cannot replay the offline run at {run.folder}: {type(exc).__name__}: {exc}"
            ) from None
        stats = OfflineExportStats(missing_files=list(replay.missing), skipped=list(replay.skipped))
        for item in replay.missing:
            log.warning("run %s: file %s is gone; the run is migrated without it", run.ref.key, item)
        for item in replay.skipped:
            log.warning("run %s: operation %s has no archive form; left out", run.ref.key, item)
        if run.partial:
            log.warning("run %s: %s is an async folder; what reached the server before is not in it",
                        run.ref.key, run.folder)
        with archive.run(run.ref) as writer:
            self._write(run, replay.run, writer, stats)
        return stats

    # -- writing ----------------------------------------------------------------------------------------
    def _write(self, listed: OfflineRun, run: OfflineRunData, writer: Any, stats: OfflineExportStats) -> None:
        sel = self.selection
        for path, attr in run.attributes.items():
            if not sel.wants_attribute(path, attr.type):
                continue
            if _empty_file_set(attr):
                # 1.x always queues the source-code file set, empty when nothing was captured: no payload to keep
                stats.skipped.append(f"empty file set {path}")
                continue
            stats.attributes += 1
            stats.by_type[attr.type] = stats.by_type.get(attr.type, 0) + 1
            if attr.type in ATOM_TYPES:
                value = attr.value
                if path == "sys/custom_run_id":
                    value = listed.ref.run_id
                if path == "sys/modification_time" and isinstance(value, dt.datetime):
                    stats.modification_time = value.astimezone(dt.UTC).isoformat()
                writer.add_atom(path, attr.type, value)
            elif attr.type in SERIES_TYPES:
                points = [p for p in attr.value if self.previews or not p.is_preview]
                values = [_histogram(p.value) if attr.type == "histogram_series" else p.value for p in points]
                previews = [(p.is_preview, p.completion_ratio) for p in points] if self.previews else None
                writer.add_series(path, attr.type, [p.step for p in points], [p.timestamp_ms for p in points],
                                  values, previews)
                stats.points += len(points)
            elif attr.type == "file":
                self._file(writer, stats, path, "file", attr.value, None, None)
            elif attr.type == "file_series":
                for p in attr.value:
                    self._file(writer, stats, path, "file_series", p.value, p.step, p.timestamp_ms)
            elif attr.type == "file_set":
                self._file_set(writer, stats, path, attr.value)
            elif attr.type == "artifact":
                self._artifact(writer, stats, path, attr.value)

    def _file(self, writer: Any, stats: ExportStats, path: str, type_: str, value: FileValue, step: float | None,
              timestamp: int | None) -> None:
        if not self.selection.wants_file(path, value.name, value.size):
            return
        source = value.source
        info = writer.add_file(path, type_, source if source is not None else value.data, value.name, step=step,
                               timestamp=timestamp, mime=value.mime_type or None)
        stats.files += 1
        stats.bytes += info.size

    def _file_set(self, writer: Any, stats: ExportStats, path: str, members: dict[str, bytes | Path]) -> None:
        """A file set is a folder payload, one file per member under its relative name (targets walk folders)."""
        rel_dir = f"{folder_name(writer.ref.run_id)}/{safe_relpath(path)}"
        root = resolve_inside(writer.files_dir, rel_dir)
        written = 0
        total = 0
        for rel, data in iter_file_set(members):
            size = data.stat().st_size if isinstance(data, Path) else len(data)
            if not self.selection.wants_file(path, rel.rsplit("/", 1)[-1], size):
                continue
            target = resolve_inside(root, safe_relpath(rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, Path):
                with open(data, "rb") as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            else:
                target.write_bytes(data)
            written += 1
            total += target.stat().st_size
        if not written:
            return
        writer.add_rows([{"attribute_path": path, "attribute_type": "file_set", "file_value": {"path": rel_dir},
                          "file_name": path.rsplit("/", 1)[-1]}])
        stats.files += written
        stats.bytes += total

    def _artifact(self, writer: Any, stats: ExportStats, path: str, value: ArtifactValue) -> None:
        """Neptune stored only an artifact's file list (the bytes stay where they were); written as
        neptune-exporter does: a `files_list.json` in the 1.x client's own field names."""
        listing = [
            {
                "filePath": f.file_path,
                "fileHash": f.file_hash,
                "type": f.type,
                "size": f.size,
                "metadata": [{"key": k, "value": v} for k, v in sorted(f.metadata)],
            }
            for f in value.files
        ]
        data = json.dumps(listing, ensure_ascii=False).encode()
        info = writer.add_file(path, "artifact", data, "files_list.json", mime="application/json")
        stats.files += 1
        stats.bytes += info.size


# ---------------------------------------------------------------- helpers


def _empty_file_set(attr: Attribute) -> bool:
    return bool(attr.type == "file_set" and not attr.value)


def _histogram(value: Histogram) -> dict[str, Any]:
    return {"type": value.type, "edges": list(value.edges), "values": list(value.values)}


def _folder_project(neptune_dir: Path) -> str:
    """The project name a 1.x run gets by default: the folder its script ran in (the one holding .neptune)."""
    base = neptune_dir.parent if neptune_dir.name == ".neptune" else neptune_dir
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", base.resolve().name).strip("-.")
    return name or "project"


def _template_values(folder: Path, container_id: str, created: dt.datetime | None, index: int) -> dict[str, Any]:
    parts = folder.name.split("__")
    return {
        "container_id": container_id,
        "short_id": container_id[:8],
        "folder": _folder_project(folder.parent.parent),
        "created": created or dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
        "index": index,
        "pid": parts[2] if len(parts) > 2 else "",
    }


def _check_template(template: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        unknown = sorted(n for n in names if n.split(".")[0].split("[")[0] not in TEMPLATE_FIELDS)
        if unknown:
            raise UsageError(f"--run-id-template: unknown field {{{unknown[0]}}}; use {', '.join(TEMPLATE_FIELDS)}")
        template.format(**_template_values(Path("/x/.neptune/offline/run__id__1__r"), "id", None, 1))
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise UsageError(f"--run-id-template {template!r} is not a valid template: {exc}") from None


def _refuse_duplicates(runs: list[OfflineRun]) -> None:
    seen: dict[RunRef, OfflineRun] = {}
    for run in runs:
        other = seen.get(run.ref)
        if other is not None:
            raise UsageError(
                f"two offline runs would both become {run.ref.key}: {other.folder} and {run.folder}; "
                f"give --run-id-template a field that tells them apart, e.g. {{container_id}} or {{index}}"
            )
        seen[run.ref] = run
