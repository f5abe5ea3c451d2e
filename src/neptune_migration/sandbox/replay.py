"""Seed the sandbox from what the Neptune clients wrote in offline mode.

The readers and the replay live in ``neptune_migration.sources.offline.replay``, shared with the offline source
(``--from neptune-offline``); they build that source's own runs, which this module turns into ``world`` runs of a
sandbox project. The names here are the ones the sandbox has always used.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neptune_migration.sandbox import world
from neptune_migration.sources.offline import replay as offline_replay
from neptune_migration.sources.offline import runs as offline_runs
from neptune_migration.sources.offline.replay import (
    SCALE_DB,
    Neptune1OfflineRun,
    ScaleOfflineRun,
    read_neptune1_offline,
    read_scale_offline,
)

__all__ = [
    "Neptune1OfflineRun",
    "Replay",
    "ScaleOfflineRun",
    "read_neptune1_offline",
    "read_scale_offline",
    "replay_neptune1_run",
    "replay_offline_tree",
    "replay_scale_run",
]


@dataclass
class Replay:
    run: world.Run
    skipped: list[str] = field(default_factory=list)  # "<operation type> <path>" we could not represent
    missing: list[str] = field(default_factory=list)  # "<attribute path>[@step]: <source>" whose file is gone


def replay_scale_run(
    project: world.Project,
    offline: ScaleOfflineRun,
    *,
    runs_by_id: dict[str, world.Run] | None = None,
    owner: str = "offline-user",
    lazy_files: bool = False,
) -> Replay:
    """Add one neptune-scale offline run to ``project``; ``runs_by_id`` (then the project) resolves fork parents.

    A fork whose parent is not found keeps ``sys/forking/parent`` and ``sys/forking/step`` as plain attributes."""
    replayed = offline_replay.replay_scale_run(offline, lazy_files=lazy_files)
    parent_id = replayed.run.fork_parent_id
    parent = None
    if parent_id is not None:
        parent = (runs_by_id or {}).get(parent_id) or project.run_by_custom_id(parent_id)
    replay = _add(project, replayed, owner, parent)
    if parent_id is not None and parent is None and runs_by_id is not None:
        # the caller handed us the runs that could be parents, so a missing one is worth reporting
        replay.skipped.insert(0, f"fork parent {parent_id} not found")
    return replay


def replay_neptune1_run(
    project: world.Project,
    offline: Neptune1OfflineRun,
    *,
    custom_run_id: str | None = None,
    creation_time: dt.datetime | None = None,
    owner: str = "offline-user",
    lazy_files: bool = False,
    legacy_types: bool = False,
    cwd: Path | None = None,
) -> Replay:
    """Add one 1.x offline run to ``project`` (see ``sources.offline.replay.replay_neptune1_run``)."""
    replayed = offline_replay.replay_neptune1_run(
        offline,
        custom_run_id=custom_run_id,
        creation_time=creation_time,
        lazy_files=lazy_files,
        legacy_types=legacy_types,
        cwd=cwd,
    )
    return _add(project, replayed, owner, None)


def replay_offline_tree(project: world.Project, root: Path) -> list[Replay]:
    """Replay every offline run under ``root`` (a ``.neptune`` folder or its parent), scale runs first so
    forks find their parents in creation order."""
    root = Path(root)
    base = root / ".neptune" if (root / ".neptune").is_dir() else root
    replays: list[Replay] = []
    scale = [read_scale_offline(p) for p in sorted(base.glob(f"*/{SCALE_DB}"))]
    scale.sort(key=lambda s: s.operations[0].timestamp if s.operations else 0)
    by_id: dict[str, world.Run] = {}
    for offline in scale:
        replay = replay_scale_run(project, offline, runs_by_id=by_id)
        by_id[offline.run_id] = replay.run
        replays.append(replay)
    for run_dir in sorted((base / "offline").glob("run__*")) if (base / "offline").is_dir() else []:
        replays.append(replay_neptune1_run(project, read_neptune1_offline(run_dir)))
    return replays


# ---------------------------------------------------------------- offline model -> world


def _add(project: world.Project, replayed: offline_replay.Replay, owner: str, parent: world.Run | None) -> Replay:
    """The replayed run as a run of ``project``: the project numbers it (sys/id) and links its fork parent, the
    attributes are the replay's, with the sys/owner a server would have filled in."""
    source = replayed.run
    custom_id = source.attributes["sys/custom_run_id"].value
    run = project.new_run(
        custom_id,
        creation_time=source.creation_time,
        owner=owner,
        fork_of=parent,
        fork_step=source.fork_step if parent is not None else None,
    )
    attributes = {"sys/id": run.attributes["sys/id"]}
    for path, attr in source.attributes.items():
        attributes[path] = world.Attribute(path, attr.type, _value(attr.type, attr.value))
        if path == "sys/ping_time":  # where a new run of the project holds it
            attributes["sys/owner"] = run.attributes["sys/owner"]
    attributes.setdefault("sys/owner", run.attributes["sys/owner"])
    run.attributes = attributes
    return Replay(run, list(replayed.skipped), list(replayed.missing))


def _value(type_: str, value: Any) -> Any:
    if type_ == "file":
        return _file(value)
    if type_ == "artifact":
        return world.ArtifactValue(value.hash, tuple(_artifact_file(f) for f in value.files))
    if type_ == "file_set":
        return dict(value)
    if type_ in world.SERIES_TYPES:
        point_value = {"histogram_series": _histogram, "file_series": _file}.get(type_, _same)
        return [
            world.Point(p.step, point_value(p.value), p.timestamp_ms, p.is_preview, p.completion_ratio) for p in value
        ]
    return value  # atoms are plain Python values in both models


def _same(value: Any) -> Any:
    return value


def _file(value: offline_runs.FileValue) -> world.FileValue:
    return world.FileValue(value.data, value.name, value.mime_type, value.path, value.source)


def _histogram(value: offline_runs.Histogram) -> world.Histogram:
    return world.Histogram(value.type, list(value.edges), list(value.values))


def _artifact_file(value: offline_runs.ArtifactFile) -> world.ArtifactFile:
    return world.ArtifactFile(value.file_path, value.file_hash, value.type, value.size, value.metadata)
