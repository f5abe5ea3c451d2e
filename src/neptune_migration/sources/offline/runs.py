"""The offline source's own in-memory run: what a replay of an offline folder builds and the export reads.

Attribute types are the neptune-exporter names (``vocabulary.ATTRIBUTE_TYPES``) plus the 2.x-only ``file_set``
(dict of relative name -> bytes or source path) and ``artifact`` (``ArtifactValue``). A run holds what its client
wrote and the sys fields Neptune derives from that (``OfflineRunData.create``), never sys/id or sys/owner: only a
server assigns those, and a migrated run must not carry invented ones.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neptune_migration.vocabulary import SERIES_TYPES

_POINT_TYPES = frozenset({*SERIES_TYPES, "file_series"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def from_ms(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)


def to_ms(value: dt.datetime) -> int:
    """Epoch milliseconds; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return round(value.timestamp() * 1000)


@dataclass(frozen=True)
class Histogram:
    type: str  # "COUNTING" or "DENSITY"
    edges: list[float]
    values: list[float]


@dataclass
class FileValue:
    """A file payload: in ``data``, or left in ``source`` so big files are read only when exported."""

    data: bytes
    name: str
    mime_type: str
    path: str = ""  # the storage key the client chose, when it recorded one
    source: Path | None = None

    @property
    def size(self) -> int:
        return self.source.stat().st_size if self.source is not None else len(self.data)


@dataclass(frozen=True)
class ArtifactFile:
    """One entry of a 1.x artifact, in the fields its artifact drivers record."""

    file_path: str
    file_hash: str
    type: str
    size: int | None
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ArtifactValue:
    hash: str
    files: tuple[ArtifactFile, ...]


@dataclass(slots=True)  # one per logged point: a long run has millions
class Point:
    step: float
    value: Any
    timestamp_ms: int
    is_preview: bool = False
    completion_ratio: float = 1.0


@dataclass
class Attribute:
    path: str
    type: str
    value: Any


def _normalise(type_: str, value: Any) -> Any:
    if type_ == "datetime":
        return from_ms(to_ms(value))  # Neptune keeps milliseconds
    if type_ == "string_set":
        return frozenset(value)
    if type_ == "float":
        return float(value)
    return value


@dataclass
class OfflineRunData:
    """One replayed run. ``fork_parent_id``/``fork_step`` say what it was forked from (also kept as the
    sys/forking/* attributes); resolving the parent is left to whoever holds the other runs."""

    attributes: dict[str, Attribute] = field(default_factory=dict)
    fork_parent_id: str | None = None
    fork_step: float | None = None

    @classmethod
    def create(
        cls,
        custom_run_id: str,
        *,
        creation_time: dt.datetime,
        experiment_name: str | None = None,
        name: str | None = None,
        fork_parent_id: str | None = None,
        fork_step: float | None = None,
    ) -> OfflineRunData:
        """A run with the sys fields Neptune gives every new run, in the order a server lists them."""
        run = cls(fork_parent_id=fork_parent_id, fork_step=fork_step)
        run.set("sys/custom_run_id", custom_run_id, "string")
        # 3.x shows the experiment name as sys/name; a 1.x run has a free display name instead
        run.set("sys/name", name if name is not None else experiment_name or "", "string")
        if experiment_name:
            run.set("sys/experiment/name", experiment_name, "string")
        for path in ("sys/creation_time", "sys/modification_time", "sys/ping_time"):
            run.set(path, creation_time, "datetime")
        run.set("sys/tags", frozenset(), "string_set")
        run.set("sys/group_tags", frozenset(), "string_set")
        run.set("sys/description", "", "string")
        for path in ("sys/failed", "sys/archived", "sys/trashed"):
            run.set(path, False, "bool")
        run.set("sys/state", "inactive", "string")
        if fork_parent_id is not None:
            run.set("sys/forking/parent", fork_parent_id, "string")
            run.set("sys/forking/step", float(fork_step or 0.0), "float")
        return run

    @property
    def creation_time(self) -> dt.datetime:
        return self.attributes["sys/creation_time"].value

    def set(self, path: str, value: Any, type_: str) -> None:
        self.attributes[path] = Attribute(path, type_, _normalise(type_, value))

    def log(
        self,
        path: str,
        type_: str,
        step: float,
        value: Any,
        timestamp_ms: int,
        *,
        is_preview: bool = False,
        completion_ratio: float = 1.0,
    ) -> None:
        """Append a point, refusing what a Neptune server refuses: a step that does not grow, or another type."""
        attr = self.attributes.get(path)
        if attr is None:
            attr = self.attributes[path] = Attribute(path, type_, [])
        elif attr.type != type_:
            raise TypeError(f"{path} is {attr.type}, not {type_}")
        points: list[Point] = attr.value
        step = float(step)
        if points and step == points[-1].step and points[-1].is_preview:
            points.pop()  # a preview is provisional: a later value for its step replaces it
        if points and not step > points[-1].step:
            raise ValueError(f"{path}: step {step} does not follow {points[-1].step}")
        points.append(Point(step, value, int(timestamp_ms), is_preview, completion_ratio))

    def touch(self) -> None:
        """Set sys/modification_time (and ping time) to the newest timestamp in the run, as a server would."""
        newest = to_ms(self.creation_time)
        for attr in self.attributes.values():
            if attr.type in _POINT_TYPES and attr.value:
                newest = max(newest, max(p.timestamp_ms for p in attr.value))
        self.set("sys/modification_time", from_ms(newest), "datetime")
        self.set("sys/ping_time", from_ms(newest), "datetime")
