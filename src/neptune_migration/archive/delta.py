"""What a sync adds to an archived run: one more parquet part holding only what changed at the source.

`RunTip.of(run)` reads what the archive already holds of a run (per series: count, the last two steps, the last
value; every atom; every file's size and hash). A source then writes the run again into a `DeltaWriter` instead
of a `RunWriter`, asking it for `after_step(path)` so that only the tail of each series is fetched; the writer
keeps what is new or different and writes it as `<run>_part_<n>.parquet` with n one past the last part. Series
points of all parts together are the run.

An atom (or a file row) that changed is in the new part; its earlier rows are then removed from the older parts
(`supersede`), because neptune-exporter's layout promises no row order, so its own loader and any other reader of
the layout would see two values. Each older part is rewritten without those rows to `.parquet.tmp` and renamed
over itself, after the new part is in place: at every moment the run is complete, and a crash between the steps
leaves at worst two rows of an atom, the newest part's winning for our reader (parts are read in order); the next
sync of the run finishes the removal.

The part is written as `.parquet.tmp` and renamed into place, so a crash leaves the previous complete run (plus at
most a temporary file the next writer replaces). Its file payloads go to `<run>/sync-<n>/...`, never over a payload
an earlier part names. A source whose history no longer extends what is archived (points removed, a series gone,
steps going back, a different value at the last archived step) makes the writer raise `HistoryRewritten`: the run
is then exported again whole, as `--refresh` does.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neptune_migration.archive.reader import Archive, ArchivedRun, _row_groups_with, decimal_micros
from neptune_migration.archive.writer import ArchiveWriter, FileInfo, RunWriter
from neptune_migration.paths import UnsafePathError, resolve_inside
from neptune_migration.vocabulary import ARCHIVE_SCHEMA, ATOM_TYPES, FILE_LIKE_TYPES, SERIES_TYPES, RunRef, folder_name

# One part per sync, however big: its rename is the commit.
_ONE_PART = 1 << 62


class HistoryRewritten(Exception):
    """The source's history of a run cannot be reached by appending to the archived one."""


@dataclass
class SeriesTip:
    type: str
    count: int
    last_step: float
    before_last: float | None  # the step before the last one: fetching after it returns the last point again
    last_value: Any


@dataclass
class FileTip:
    name: str | None
    size: int | None
    sha256: str | None


@dataclass
class RunTip:
    """The end of an archived run: enough to ask a source for what came after, and to notice a rewrite."""

    parts: int
    series: dict[str, SeriesTip] = field(default_factory=dict)
    atoms: dict[str, Any] = field(default_factory=dict)  # path -> (type, value)
    files: dict[tuple[str, float | None], FileTip] = field(default_factory=dict)

    @classmethod
    def of(cls, run: ArchivedRun) -> RunTip:
        tip = cls(len(run.parts))
        tip.atoms = {p: (a.type, a.value) for p, a in run.atoms().items()}
        value_cols = {"float_series": "float_value", "string_series": "string_value",
                      "histogram_series": "histogram_value"}
        steps: dict[str, list[tuple[float, Any]]] = {}
        types: dict[str, str] = {}
        cols = ["attribute_path", "attribute_type", "step", "step_exact", *value_cols.values()]
        for batch in run.batches(sorted(value_cols), cols):
            micros = decimal_micros(batch.column("step")).tolist()
            exact = batch.column("step_exact").to_pylist()
            paths = batch.column("attribute_path").to_pylist()
            kinds = batch.column("attribute_type").to_pylist()
            values = {t: batch.column(c) for t, c in value_cols.items()}
            for i, path in enumerate(paths):
                step = exact[i] if exact[i] is not None else micros[i] / 1e6
                types[path] = kinds[i]
                steps.setdefault(path, []).append((step, i, values[kinds[i]][i].as_py()))
        for path, points in steps.items():
            points.sort(key=lambda p: p[0])
            tip.series[path] = SeriesTip(types[path], len(points), points[-1][0],
                                         points[-2][0] if len(points) > 1 else None, points[-1][2])
        fcols = ["attribute_path", "attribute_type", "step", "step_exact", "file_name", "file_size", "file_sha256"]
        for batch in run.batches(FILE_LIKE_TYPES, fcols):
            d = batch.to_pydict()
            micros = decimal_micros(batch.column("step")).tolist()
            for i, path in enumerate(d["attribute_path"]):
                step = None
                if d["step"][i] is not None:
                    step = d["step_exact"][i] if d["step_exact"][i] is not None else micros[i] / 1e6
                tip.files[(path, step)] = FileTip(d["file_name"][i], d["file_size"][i], d["file_sha256"][i])
                if d["attribute_type"][i] == "file_series" and step is not None:
                    old = tip.series.get(path)
                    count = (old.count if old else 0) + 1
                    last = max(step, old.last_step) if old else step
                    tip.series[path] = SeriesTip("file_series", count, last, None, None)
        return tip


@dataclass
class Gained:
    """What one sync added to a run, for the report and `status`."""

    points: dict[str, int] = field(default_factory=dict)  # series path -> new points
    atoms: list[str] = field(default_factory=list)  # changed or new atoms (sys/* bookkeeping left out)
    files: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)  # new series

    @property
    def total_points(self) -> int:
        return sum(self.points.values())

    def empty(self) -> bool:
        return not (self.points or self.atoms or self.files or self.series)

    def to_dict(self) -> dict[str, Any]:
        return {"points": self.total_points, "series": dict(sorted(self.points.items())),
                "new_series": sorted(self.series), "atoms": sorted(self.atoms), "files": sorted(self.files)}


# Atoms Neptune changes on every write: kept in the delta (end time and state depend on them), not "gained".
_BOOKKEEPING = ("sys/modification_time", "sys/ping_time", "sys/state")


class _AppendPart(RunWriter):
    """A RunWriter that leaves the run's parts alone and writes part `n` (payloads under `<run>/sync-<n>/`)."""

    def __init__(self, archive: ArchiveWriter, ref: RunRef, n: int) -> None:
        self._first = n
        super().__init__(archive, ref)
        self._part = n
        self._run_files = f"{folder_name(ref.run_id)}/sync-{n}"

    def remove_existing(self) -> None:
        # Only a leftover temporary part of an earlier, interrupted sync.
        self.archive.part_path(self.ref, self._first).with_suffix(".parquet.tmp").unlink(missing_ok=True)

    def commit(self) -> None:
        super().commit()
        with self.archive._lock:
            # The writer remembered only this part as the run: let the next reader list the run's parts.
            self.archive._committed.pop(self.ref, None)


class DeltaWriter:
    """Takes a run's rows like a `RunWriter` and keeps, in one new part, only what the archive lacks."""

    def __init__(self, archive: ArchiveWriter, ref: RunRef, tip: RunTip) -> None:
        if archive.storage.remote:
            raise HistoryRewritten("sync appends parts to local archives only; exported again whole")
        self.archive = archive
        self.ref = ref
        self.tip = tip
        self.gained = Gained()
        self._seen: set[str] = set()
        self._declared: set[str] | None = None
        self._part: _AppendPart | None = None
        self.committed_part: Path | None = None

    # -- what a source asks before fetching -------------------------------------------------------------
    def after_step(self, path: str) -> float | None:
        """Fetch points after this step: the archived last point comes back once more, as the overlap check."""
        tip = self.tip.series.get(path)
        return None if tip is None else tip.before_last

    def series_tip(self, path: str) -> SeriesTip | None:
        return self.tip.series.get(path)

    def wants_download(self, path: str, type_: str, step: float | None, name: str | None, size: int | None) -> bool:
        """A file the archive holds with the same name and size is not downloaded again (3.x gives both)."""
        if type_ == "file_series" and step is not None:
            tip = self.tip.series.get(path)
            if tip is not None and step <= tip.last_step:
                return (path, step) not in self.tip.files
        have = self.tip.files.get((path, step))
        return have is None or have.name != name or (size is not None and have.size != size)

    def declare(self, paths: Sequence[str]) -> None:
        """Every attribute the source has now: an archived series missing from it was deleted."""
        self._declared = set(paths)
        gone = [p for p in self.tip.series if p not in self._declared]
        if gone:
            raise HistoryRewritten(f"series {gone[0]!r} was deleted at the source")

    def rewritten(self, reason: str) -> None:
        raise HistoryRewritten(reason)

    # -- the RunWriter surface --------------------------------------------------------------------------
    def _writer(self) -> _AppendPart:
        if self._part is None:
            self._part = _AppendPart(self.archive, self.ref, self.tip.parts)
            self._part.rows_per_part = _ONE_PART
        return self._part

    def add_atom(self, path: str, type_: str, value: Any) -> None:
        if type_ == "string_set":
            value = sorted(value)
        have = self.tip.atoms.get(path)
        if have is not None and have[0] == type_ and _same(have[1], value):
            return
        if path not in _BOOKKEEPING:
            self.gained.atoms.append(path)
        self._writer().add_atom(path, type_, value)

    def add_series(
        self,
        path: str,
        type_: str,
        steps: Sequence[float],
        timestamps: Sequence[datetime | int | None],
        values: Sequence[Any],
        previews: Sequence[tuple[bool, float] | None] | None = None,
    ) -> None:
        if type_ not in SERIES_TYPES:
            raise ValueError(f"{type_} is not a series type")
        tip = self.tip.series.get(path)
        first_call = path not in self._seen
        self._seen.add(path)
        start = 0
        if tip is not None:
            if tip.type != type_:
                raise HistoryRewritten(f"{path!r} changed from {tip.type} to {type_}")
            # Points at or before the archived last step are the overlap: the last of them must be the archived
            # last point, else the source's history is not the one archived.
            while start < len(steps) and float(steps[start]) <= tip.last_step:
                start += 1
            if first_call and start == 0 and steps:
                raise HistoryRewritten(f"{path!r}: the point at step {tip.last_step:g} is gone")
            overlap_differs = start and (float(steps[start - 1]) != tip.last_step
                                         or not _same(_plain(values[start - 1]), tip.last_value))
            if first_call and overlap_differs:
                raise HistoryRewritten(f"{path!r}: the point at step {tip.last_step:g} changed")
        elif first_call:
            self.gained.series.append(path)
        if start >= len(steps):
            return
        self.gained.points[path] = self.gained.points.get(path, 0) + len(steps) - start
        self._writer().add_series(path, type_, steps[start:], timestamps[start:], values[start:],
                                  previews[start:] if previews is not None else None)
        last = float(steps[-1])
        self.tip.series[path] = SeriesTip(type_, (tip.count if tip else 0) + len(steps) - start, last, None,
                                          _plain(values[-1]))

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
        have = self.tip.files.get((path, float(step) if step is not None else None))
        digest = _sha256(data)
        if have is not None and have.sha256 == digest and have.name == file_name:
            if move and isinstance(data, Path):
                data.unlink(missing_ok=True)
            size = data.stat().st_size if isinstance(data, Path) and data.exists() else (
                len(data) if isinstance(data, bytes) else (have.size or 0))
            return FileInfo("", size, digest)
        if type_ not in FILE_LIKE_TYPES:
            raise ValueError(f"{type_} is not a file type")
        self.gained.files.append(path if step is None else f"{path}@{step:g}")
        return self._writer().add_file(path, type_, data, file_name, step=step, timestamp=timestamp, mime=mime,
                                       move=move)

    def add_rows(self, rows: Any) -> None:  # pragma: no cover - only the offline source uses it
        raise HistoryRewritten("this source cannot sync by appending")

    # -- commit -----------------------------------------------------------------------------------------
    def commit(self) -> None:
        lost = [p for p, t in self.tip.series.items()
                if t.type != "file_series" and p not in self._seen and (self._declared is None or p in self._declared)]
        if lost:
            raise HistoryRewritten(f"{lost[0]!r}: the source no longer returns its archived points")
        if self._part is not None:
            self._part.commit()
            self.committed_part = self.archive.part_path(self.ref, self.tip.parts)
        # Also without a new part: a sync killed between its two steps left rows this one removes.
        supersede(self.archive, self.ref)

    def abort(self) -> None:
        if self._part is not None:
            self._part.abort()

    def __enter__(self) -> DeltaWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


# -- one value per atom ---------------------------------------------------------------------------------------
_SINGLE_VALUED = (*ATOM_TYPES, *FILE_LIKE_TYPES)  # a series point is never repeated: appends start past the last


def supersede(archive: ArchiveWriter, ref: RunRef) -> int:
    """Remove from a run's older parts every atom or file row that a newer part holds again; the number of rows
    removed. Each older part is rewritten whole to `.parquet.tmp` and renamed over itself (payloads only the
    removed rows named are deleted after), so the run is complete at every moment."""
    run = Archive(archive.root).run(ref)
    if run is None or len(run.parts) < 2:
        return 0
    newer: set[tuple[Any, ...]] = set()
    plans: list[tuple[Path, set[tuple[Any, ...]]]] = []
    for part in reversed(run.parts):
        keys = set(_value_keys(Path(part)))
        if keys & newer:
            plans.append((Path(part), keys & newer))
        newer |= keys
    removed = 0
    for part, drop in plans:
        count, payloads = _rewrite_without(part, drop)
        removed += count
        if run.files_dir is not None:
            _remove_payloads(Path(run.files_dir), payloads)
    return removed


def _value_keys(part: Path) -> Iterator[tuple[Any, ...]]:
    """What each atom or file row of a part holds the value of: its path, and a file series row's step."""
    for batch in _single_valued(part, ["attribute_path", "attribute_type", "step", "step_exact"]):
        yield from _keys(batch)


def _keys(batch: pa.RecordBatch) -> list[tuple[Any, ...]]:
    paths = batch.column("attribute_path").to_pylist()
    types = batch.column("attribute_type").to_pylist()
    micros = decimal_micros(batch.column("step")).tolist()
    has_step = batch.column("step").is_valid().to_pylist()
    exact = batch.column("step_exact").to_pylist()
    return [(paths[i], micros[i] if types[i] == "file_series" and has_step[i] else None,
             exact[i] if types[i] == "file_series" else None) for i in range(len(paths))]


def _single_valued(part: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    pf = pq.ParquetFile(part)
    names = set(pf.schema_arrow.names)
    read = [c for c in columns if c in names]
    # Row groups of series points only are skipped by their statistics: a big part is not read for its few atoms.
    groups = _row_groups_with(pf, sorted(_SINGLE_VALUED))
    if groups == []:
        return
    for batch in pf.iter_batches(columns=read, row_groups=groups, use_threads=False):
        batch = batch.filter(pc.is_in(batch.column("attribute_type"), value_set=pa.array(_SINGLE_VALUED)))
        if batch.num_rows:
            yield _with_columns(batch, columns)


def _with_columns(batch: pa.RecordBatch, columns: list[str]) -> pa.RecordBatch:
    """neptune-exporter's parts lack our `step_exact` column (and may lack a step): null columns stand in."""
    arrays = [batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows, ARCHIVE_SCHEMA.field(c).type)
              for c in columns]
    return pa.RecordBatch.from_arrays(arrays, names=columns)


def _rewrite_without(part: Path, drop: set[tuple[Any, ...]]) -> tuple[int, list[str]]:
    """The part without the rows whose key is in `drop`, renamed over itself; (rows removed, their payloads)."""
    pf = pq.ParquetFile(part)
    tmp = part.with_suffix(".parquet.tmp")
    removed, payloads = 0, []
    keep_cols = ["attribute_path", "attribute_type", "step", "step_exact"]
    with pq.ParquetWriter(tmp, pf.schema_arrow, compression="snappy") as out:
        for batch in pf.iter_batches(use_threads=False):
            mask = [True] * batch.num_rows
            single = pc.is_in(batch.column("attribute_type"), value_set=pa.array(_SINGLE_VALUED)).to_pylist()
            rows = [i for i, s in enumerate(single) if s]
            if rows:
                keys = _keys(_with_columns(batch.take(rows), keep_cols))
                for i, key in zip(rows, keys, strict=True):
                    if key in drop:
                        mask[i] = False
            gone = batch.filter(pc.invert(pa.array(mask)))
            removed += gone.num_rows
            if gone.num_rows and "file_value" in gone.schema.names:
                payloads += [v["path"] for v in gone.column("file_value").to_pylist() if v and v.get("path")]
            out.write_batch(batch if gone.num_rows == 0 else batch.filter(pa.array(mask)))
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, part)
    return removed, payloads


def _remove_payloads(files_dir: Path, payloads: list[str]) -> None:
    """The payloads of removed file rows: a newer part's payload is always elsewhere (`<run>/sync-<n>/...`)."""
    for rel in payloads:
        try:
            path = resolve_inside(files_dir, rel)
        except UnsafePathError:  # a row naming a path outside the files root: never ours to delete
            continue
        if path == files_dir.resolve():
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: list(v) if isinstance(v, list | tuple) else v for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, datetime) and isinstance(b, datetime):
        return a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return float(a) == float(b)
    return bool(a == b)


def _sha256(data: bytes | Path) -> str:
    digest = hashlib.sha256()
    if isinstance(data, bytes):
        digest.update(data)
    else:
        with open(data, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


__all__ = ["DeltaWriter", "Gained", "HistoryRewritten", "RunTip", "SeriesTip", "supersede"]
