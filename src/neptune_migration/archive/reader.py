"""Stream runs out of an archive written by neptune-exporter or by our own `export`.

Two layouts are accepted (see DESIGN.md, "Archive paths"): an archive root holding `data/` and `files/`,
or a neptune-exporter parquet root (one folder per project) with the files root given separately.
A run is complete when its `<run>_part_0.parquet` exists; `.tmp` leftovers are ignored; rows may come in
any order within and across parts. The archive may be a local folder or a prefix on object storage (see
`storage.py`); a remote run's file payloads are fetched into a local staging folder when a target asks for them
and deleted by `release_files()` once the run is done.
"""

from __future__ import annotations

import glob
import re
import shutil
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neptune_migration.archive.storage import DIR, FILE, LOCAL, Storage, StoragePath, open_storage
from neptune_migration.errors import ArchiveError
from neptune_migration.paths import resolve_inside
from neptune_migration.vocabulary import ARCHIVE_SCHEMA, ATOM_TYPES, FILE_LIKE_TYPES, SERIES_TYPES, RunRef, folder_name

_PART = re.compile(r"^(?P<run>.+)_part_(?P<n>\d+)\.parquet$")
_ATOM_VALUE = {
    "float": "float_value",
    "int": "int_value",
    "string": "string_value",
    "bool": "bool_value",
    "datetime": "datetime_value",
    "string_set": "string_set_value",
}
_VALUE_COLUMNS = [
    "int_value",
    "float_value",
    "string_value",
    "bool_value",
    "datetime_value",
    "string_set_value",
    "file_value",
    "histogram_value",
]
# Rows that carry a timestamp of something the run did: series points and file rows (atoms have none).
_TIMESTAMPED_TYPES = tuple(sorted({*SERIES_TYPES, *FILE_LIKE_TYPES}))
END_ATOMS = ("sys/ping_time", "sys/modification_time")
LIVE_STATES = ("active", "running")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class Atom:
    type: str
    value: Any


@dataclass
class IncompleteRun:
    """Parts without a `_part_0.parquet`: an export that died half-way. Reported, never loaded."""

    project_dir: StoragePath
    run_folder: str
    parts: list[StoragePath]


@dataclass
class UnreadableRun:
    """A committed run that cannot be read (a corrupt or truncated part, a wrong schema, a part missing in the
    middle). It fails alone: every other run of the archive still loads. `ref` is None when no part holds the ids."""

    project_dir: StoragePath
    run_folder: str
    reason: str
    ref: RunRef | None = None

    @property
    def key(self) -> str:
        return self.ref.key if self.ref is not None else f"{self.project_dir.name}/{self.run_folder}"


@dataclass
class ArchivedRun:
    ref: RunRef
    parts: list[StoragePath]
    project_dir: StoragePath
    files_dir: StoragePath | None
    _atoms: dict[str, Atom] | None = field(default=None, repr=False)
    # (earliest, latest) point/file timestamp: start and end time both need it, and it streams a column.
    _ts_range: tuple[int | None, int | None] | None = field(default=None, repr=False)
    storage: Storage = field(default=LOCAL, repr=False)
    files_storage: Storage = field(default=LOCAL, repr=False)
    # Remote archives only: where this run's payloads are fetched to, and which `file_value.path`s already were.
    _staging: Path | None = field(default=None, repr=False)
    _fetched: set[str] = field(default_factory=set, repr=False)

    @property
    def size_bytes(self) -> int:
        return sum(self.storage.size(p) for p in self.parts)

    def batches(
        self,
        types: Iterable[str] | None = None,
        columns: Iterable[str] | None = None,
        batch_size: int = 65_536,
    ) -> Iterator[pa.RecordBatch]:
        """Every row of the run, part by part, optionally only some attribute types and columns.

        Columns our writer adds but neptune-exporter lacks come back as nulls, so callers need not care
        which tool wrote the archive. Atom rows whose value columns are all null are dropped.
        """
        wanted = list(columns) if columns is not None else list(ARCHIVE_SCHEMA.names)
        for col in ("attribute_type",):
            if col not in wanted:
                wanted.append(col)
        type_filter = pa.array(sorted(set(types)), pa.string()) if types is not None else None
        for part in self.parts:
            pf = _open(self.storage, part)
            present = set(pf.schema_arrow.names)
            missing = [c for c in ARCHIVE_SCHEMA.names if c not in present and c in wanted]
            if any(c not in present for c in ("attribute_path", "attribute_type", "run_id")):
                raise ArchiveError(
                    f"{self.storage.url(part)} does not have the archive schema (columns: {sorted(present)})"
                )
            read_cols = [c for c in wanted if c in present]
            need_null_check = types is None or any(t in ATOM_TYPES for t in types)
            if need_null_check:
                read_cols += [c for c in _VALUE_COLUMNS if c in present and c not in read_cols]
            groups = _row_groups_with(pf, sorted(set(types))) if types is not None else None
            if groups == []:
                continue
            try:
                for batch in pf.iter_batches(
                    batch_size=batch_size, columns=read_cols, row_groups=groups, use_threads=False
                ):
                    batch = _filter(batch, type_filter, need_null_check)
                    if batch.num_rows == 0:
                        continue
                    batch = _conform(batch, wanted, missing)
                    yield batch
            except (OSError, pa.ArrowException) as exc:
                raise ArchiveError(f"cannot read {self.storage.url(part)}: {_one_line(exc)}") from None
            finally:
                # The allocator keeps freed pages of decoded row groups; hand them back so a big run's peak
                # memory stays that of one row group, not of every column read so far.
                pa.default_memory_pool().release_unused()

    def table(self, types: Iterable[str] | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        cols = list(columns) if columns is not None else list(ARCHIVE_SCHEMA.names)
        batches = list(self.batches(types, cols))
        schema = pa.schema(
            [
                ARCHIVE_SCHEMA.field(c)
                for c in (cols if "attribute_type" in cols else [*cols, "attribute_type"])
            ]
        )
        if not batches:
            return schema.empty_table()
        return pa.Table.from_batches(batches).select(schema.names)

    def atoms(self) -> dict[str, Atom]:
        """Every atom (params, `sys/*`) of the run as Python values; the last row wins on a repeat."""
        if self._atoms is None:
            out: dict[str, Atom] = {}
            cols = ["attribute_path", "attribute_type", *_ATOM_VALUE.values()]
            for batch in self.batches(ATOM_TYPES, cols):
                d = batch.to_pydict()
                for i, path in enumerate(d["attribute_path"]):
                    type_ = d["attribute_type"][i]
                    out[path] = Atom(type_, d[_ATOM_VALUE[type_]][i])
            self._atoms = out
        return self._atoms

    def atom_value(self, path: str, default: Any = None) -> Any:
        atom = self.atoms().get(path)
        return default if atom is None else atom.value

    @property
    def live(self) -> bool:
        """Neptune was still writing to the run when it was archived: `sys/state` is active (3.x; the 2.x API
        says running). 2.x archives hold no `sys/state` (the 1.x client cannot read it): never live."""
        return str(self.atom_value("sys/state", "")).lower() in LIVE_STATES

    def end_time_ms(self) -> int | None:
        """When the run last did anything, in epoch milliseconds: the one end-time rule of every target.

        `sys/ping_time`, else `sys/modification_time`, else the latest timestamp of any series point or file
        row; never before the start (`sys/creation_time`, else the earliest such timestamp). neptune-exporter's
        2.x archives hold neither atom, and a target left to pick its own end stamps the load time (a run of
        a few minutes then lasted years). None only when the run holds no time at all.
        """
        start = self.atom_value("sys/creation_time")
        start_ms = datetime_ms(start) if isinstance(start, datetime) else None
        end_ms = next((datetime_ms(v) for p in END_ATOMS if isinstance(v := self.atom_value(p), datetime)), None)
        if end_ms is None or start_ms is None:
            earliest, latest = self._timestamp_range()
            end_ms = latest if end_ms is None else end_ms
            start_ms = earliest if start_ms is None else start_ms
        if end_ms is None or start_ms is None:
            return end_ms if start_ms is None else start_ms
        return max(end_ms, start_ms)

    def start_time_ms(self) -> int | None:
        """When the run began, in epoch milliseconds: `sys/creation_time`, else its earliest point or file row (a
        target left to pick its own start stamps the load time). None only when the run holds no time at all."""
        start = self.atom_value("sys/creation_time")
        if isinstance(start, datetime):
            return datetime_ms(start)
        return self._timestamp_range()[0]

    def _timestamp_range(self) -> tuple[int | None, int | None]:
        """(earliest, latest) timestamp in ms over the run's points and file rows, one column streamed once."""
        if self._ts_range is not None:
            return self._ts_range
        low: int | None = None
        high: int | None = None
        for batch in self.batches(_TIMESTAMPED_TYPES, ["timestamp"]):
            ts = batch.column("timestamp")
            if ts.null_count == len(ts):
                continue
            bounds = pc.min_max(ts.cast(pa.int64()))
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
        self._ts_range = (low, high)
        return self._ts_range

    def file_path(self, relative: str) -> Path:
        """The payload behind a `file_value.path` as a local path, refusing paths that escape the files root.

        On object storage the payload (a file, or every object below a folder payload) is downloaded into this
        run's staging folder first; a payload that is not in the archive comes back as a path that does not exist.
        """
        if self.files_dir is None:
            raise ArchiveError(
                f"run {self.ref.key} references files but no files root was given (use --files)"
            )
        if not self.files_storage.remote:
            return resolve_inside(Path(self.files_dir), relative)
        local = resolve_inside(self._staging_dir(), relative)  # refuses absolute and `..` before any request
        if relative not in self._fetched:
            remote = self.files_dir.joinpath(*PurePosixPath(relative.replace("\\", "/")).parts)
            self._fetch(remote, local)
            self._fetched.add(relative)
        return local

    def _staging_dir(self) -> Path:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="neptune-migration-files-"))
            # Also removed if the run object is dropped or the interpreter exits without release_files().
            weakref.finalize(self, shutil.rmtree, str(self._staging), True)
        return self._staging

    def _fetch(self, remote: StoragePath, local: Path) -> None:
        kind = self.files_storage.kind(remote)
        if kind == FILE:
            local.parent.mkdir(parents=True, exist_ok=True)
            self.files_storage.download(remote, local)
        elif kind == DIR:
            for rel, obj in self.files_storage.files_under(remote):
                # Object keys are not trusted either: `x/../../y` is refused, never written outside staging.
                dest = resolve_inside(local, rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.files_storage.download(obj, dest)

    def release_files(self) -> None:
        """Delete the payloads fetched from object storage for this run (nothing to do for a local archive)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
            self._fetched.clear()


@dataclass
class ArchiveScan:
    runs: list[ArchivedRun]
    incomplete: list[IncompleteRun]
    unreadable: list[UnreadableRun] = field(default_factory=list)


class Archive:
    def __init__(self, root: str | Path, files_root: str | Path | None = None) -> None:
        """`root` and `files_root` are folders or object-store URLs (`s3://bucket/prefix`, `gs://...`)."""
        self.storage, base = open_storage(root)
        self.storage.check(base)
        kind = self.storage.kind(base)
        if kind is None:
            raise ArchiveError(f"archive not found: {self.storage.url(base)}")
        if kind != DIR:
            raise ArchiveError(f"archive is not a folder: {self.storage.url(base)}")
        self.files_storage = self.storage
        if self.storage.kind(base / "data") == DIR:
            self.data_root: StoragePath = base / "data"
            self.files_root: StoragePath | None = base / "files"
            self.models_root: StoragePath | None = base / "models"
        else:
            self.data_root = base
            self.files_root = None
            self.models_root = None
        if files_root is not None:
            self.files_storage, self.files_root = open_storage(files_root)
            self.files_storage.check(self.files_root)
            if self.files_storage.kind(self.files_root) is None:
                raise ArchiveError(f"files root not found: {self.files_storage.url(self.files_root)}")

    @classmethod
    def from_roots(cls, data_root: StoragePath, files_root: StoragePath | None, storage: Storage = LOCAL) -> Archive:
        archive = cls.__new__(cls)
        archive.data_root, archive.files_root, archive.models_root = data_root, files_root, None
        archive.storage = archive.files_storage = storage
        return archive

    def registry(self) -> Archive | None:
        """The 2.x model registry stored beside the runs (`models/`, `model_files/`), if the archive has one."""
        if self.models_root is None or self.storage.kind(self.models_root) != DIR:
            return None
        return Archive.from_roots(self.models_root, self.models_root.parent / "model_files", self.storage)

    def run(self, ref: RunRef) -> ArchivedRun | None:
        """One run by its ids, without scanning the archive (the writer's folder names are deterministic)."""
        project_dir = self.data_root / folder_name(ref.project_id)
        run_folder = folder_name(ref.run_id)
        parts = self._run_parts(project_dir, run_folder)
        if 0 not in parts:
            return None
        _refuse_gaps(project_dir, run_folder, parts)
        return self._archived(ref, [parts[n] for n in sorted(parts)], project_dir)

    def _run_parts(self, project_dir: StoragePath, run_folder: str) -> dict[int, StoragePath]:
        parts: dict[int, StoragePath] = {}
        if self.storage.remote:
            # Listing a project prefix costs one request per 1000 objects; asking for part_0, part_1, ... in turn
            # costs one per part. (A part missing in the middle is caught by `scan`, which lists.)
            while self.storage.kind(part := project_dir / f"{run_folder}_part_{len(parts)}.parquet") == FILE:
                parts[len(parts)] = part
            return parts
        project_dir = Path(project_dir)
        if not project_dir.is_dir():
            return parts
        for p in project_dir.glob(f"{glob.escape(run_folder + '_part_')}*.parquet"):
            m = _PART.match(p.name)
            if m and m.group("run") == run_folder:
                parts[int(m.group("n"))] = p
        return parts

    def _archived(self, ref: RunRef, parts: list[StoragePath], project_dir: StoragePath) -> ArchivedRun:
        files_dir = self.files_root / project_dir.name if self.files_root is not None else None
        return ArchivedRun(ref, parts, project_dir, files_dir, storage=self.storage,
                           files_storage=self.files_storage)

    def scan(self) -> ArchiveScan:
        runs: list[ArchivedRun] = []
        incomplete: list[IncompleteRun] = []
        unreadable: list[UnreadableRun] = []
        project_dirs = sorted(p for p, kind in self.storage.listdir(self.data_root) if kind == DIR)
        if not project_dirs:
            raise ArchiveError(f"no project folders with parquet files under {self.storage.url(self.data_root)}")
        for project_dir in project_dirs:
            groups: dict[str, dict[int, StoragePath]] = {}
            for p, kind in self.storage.listdir(project_dir):
                m = _PART.match(p.name)
                if not m or kind != FILE:
                    continue  # *.parquet.tmp and strangers are not part of any run
                groups.setdefault(m.group("run"), {})[int(m.group("n"))] = p
            for run_folder, parts in sorted(groups.items()):
                ordered = [parts[n] for n in sorted(parts)]
                if 0 not in parts:
                    incomplete.append(IncompleteRun(project_dir, run_folder, ordered))
                    continue
                ref = None
                try:
                    ref = _run_ref(self.storage, parts[0], ordered)
                    _refuse_gaps(project_dir, run_folder, parts)
                except ArchiveError as exc:
                    ref = ref or getattr(exc, "ref", None)
                    unreadable.append(UnreadableRun(project_dir, run_folder, str(exc), ref))
                    continue
                if ref is None:
                    continue  # an empty part_0 with no rows at all: nothing to identify or load
                runs.append(self._archived(ref, ordered, project_dir))
        runs.sort(key=lambda r: r.ref)
        return ArchiveScan(runs, incomplete, unreadable)


def _refuse_gaps(project_dir: StoragePath, run_folder: str, parts: dict[int, StoragePath]) -> None:
    """A committed run whose parts are not numbered 0..N without a hole lost a part after it was written (a
    deleted or half-copied file). Loading the rest would migrate half a run and call it whole."""
    missing = sorted(set(range(max(parts) + 1)) - set(parts))
    if missing:
        raise ArchiveError(
            f"run {project_dir.name}/{run_folder} is missing part(s) {', '.join(map(str, missing))} "
            f"(present: {', '.join(map(str, sorted(parts)))}); refusing to load part of a run: re-export it "
            "or restore the missing file"
        )


def _open(storage: Storage, path: StoragePath) -> pq.ParquetFile:
    try:
        return storage.open_parquet(path)
    except (OSError, pa.ArrowException) as exc:
        raise ArchiveError(f"corrupt or unreadable parquet file {storage.url(path)}: {_one_line(exc)}") from None


def _row_groups_with(pf: pq.ParquetFile, types: list[str]) -> list[int] | None:
    """Row groups that may hold rows of the given attribute types, judged by the column's min/max statistics.

    Reading atoms (a few rows) out of a run of millions of series points otherwise decodes every row group.
    None means "all" (no usable statistics).
    """
    meta = pf.metadata
    # Statistics are per leaf column of the parquet schema, where nested columns count several leaves.
    leaves = [meta.schema.column(j).path for j in range(meta.num_columns)]
    if "attribute_type" not in leaves:
        return None
    col = leaves.index("attribute_type")
    keep = []
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            return None
        low, high = stats.min, stats.max
        if isinstance(low, bytes) or isinstance(high, bytes):
            return None
        if any(low <= t <= high for t in types):
            keep.append(i)
    return keep


def _run_ref(storage: Storage, part0: StoragePath, parts: list[StoragePath]) -> RunRef | None:
    """Real ids live in the columns (folder names are one-way): read them from the first non-empty part.

    A part that cannot be read is passed over while another can name the run, so a corrupt part is reported
    against its run; the first error is raised when no part can."""
    first_error: ArchiveError | None = None
    for part in dict.fromkeys([part0, *parts]):
        try:
            pf = _open(storage, part)
            if not {"project_id", "run_id"} <= set(pf.schema_arrow.names):
                raise ArchiveError(f"{storage.url(part)} does not have the archive schema (no project_id/run_id "
                                   "columns)")
            if pf.metadata.num_rows == 0:
                continue
            try:
                batch = next(pf.iter_batches(batch_size=1, columns=["project_id", "run_id"]))
            except (OSError, pa.ArrowException, StopIteration) as exc:
                raise ArchiveError(f"corrupt or unreadable parquet file {storage.url(part)}: {_one_line(exc)}") \
                    from None
        except ArchiveError as exc:
            first_error = first_error or exc
            continue
        ref = RunRef(batch.column(0)[0].as_py(), batch.column(1)[0].as_py())
        if first_error is not None:
            raise UnreadablePart(str(first_error), ref)
        return ref
    if first_error is not None:
        raise first_error
    return None


class UnreadablePart(ArchiveError):
    """A part of a run that another part names: the run is known, and fails with this reason."""

    def __init__(self, message: str, ref: RunRef) -> None:
        super().__init__(message)
        self.ref = ref


def _filter(batch: pa.RecordBatch, type_filter: pa.Array | None, null_check: bool) -> pa.RecordBatch:
    mask = None
    if type_filter is not None:
        mask = pc.is_in(batch.column("attribute_type"), value_set=type_filter)
    if null_check:
        # neptune-exporter 3.x writes atoms whose every value column is null: they are absent values.
        names = batch.schema.names
        any_value = None
        for c in _VALUE_COLUMNS:
            if c in names:
                v = pc.is_valid(batch.column(c))
                any_value = v if any_value is None else pc.or_(any_value, v)
        if any_value is not None:
            is_atom = pc.is_in(batch.column("attribute_type"), value_set=pa.array(ATOM_TYPES))
            keep = pc.or_(pc.invert(is_atom), any_value)
            mask = keep if mask is None else pc.and_(mask, keep)
    return batch.filter(mask) if mask is not None else batch


def _conform(batch: pa.RecordBatch, wanted: list[str], missing: list[str]) -> pa.RecordBatch:
    arrays, fields = [], []
    names = batch.schema.names
    for c in wanted:
        target = ARCHIVE_SCHEMA.field(c)
        if c in names:
            arr = batch.column(c)
            if arr.type != target.type:
                try:
                    arr = arr.cast(target.type)
                except pa.ArrowException as exc:
                    raise ArchiveError(f"column {c} has type {arr.type}, expected {target.type}") from exc
        else:
            arr = pa.nulls(batch.num_rows, target.type)
        arrays.append(arr)
        fields.append(target)
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))


def decimal_micros(steps: pa.Array) -> np.ndarray:
    """decimal(18, 6) steps as exact int64 counts of millionths, without going through floats."""
    steps = steps.combine_chunks() if isinstance(steps, pa.ChunkedArray) else steps
    if steps.null_count:
        steps = steps.fill_null(pa.scalar(0, steps.type))
    # decimal128 stores a 16-byte little-endian integer per value; decimal(18, 6) fits in the low 8 bytes.
    words = np.frombuffer(steps.buffers()[1], dtype=np.int64)
    return words[2 * steps.offset : 2 * (steps.offset + len(steps)) : 2].copy()


def decimal_steps(steps: pa.Array) -> np.ndarray:
    """decimal(18, 6) steps as the float64 nearest to each decimal, exactly what `float(Decimal)` gives."""
    return micros_to_float(decimal_micros(steps))


def micros_to_float(micros: np.ndarray) -> np.ndarray:
    """Counts of millionths as the float64 nearest to `micros / 10**6` (correctly rounded, like Python's `/`).

    `micros.astype(float) / 1e6` rounds twice: a count above 2**53 (any step past 9e9) is rounded before the
    division, and step 999999999999 came back as 999999999999.0001. Here the whole part is converted exactly
    and the millionths with one rounding; their sum is checked with an error-free addition, and the rare
    value whose sum could sit on the wrong side of a rounding midpoint is redone in integer arithmetic.
    """
    micros = np.asarray(micros, dtype=np.int64)
    magnitude = np.abs(micros)  # decimal(18, 6) never reaches -2**63
    whole, frac = np.divmod(magnitude, 1_000_000)
    q = whole.astype(np.float64)  # exact: below 10**12 < 2**53
    a = frac.astype(np.float64) / 1e6  # one rounding: frac and 1e6 are exact floats
    s = q + a
    # Fast2Sum (|q| >= a whenever q > 0; q == 0 makes s == a): q + a == s + err exactly.
    err = a - (s - q)
    # |frac / 10**6 - a| is at most half an ulp of a; s is the nearest float to the true quotient when that
    # quotient stays strictly inside the rounding interval around s.
    slack = np.where(frac == 0, 0.0, np.spacing(a) / 2)
    up = np.nextafter(s, np.inf) - s
    down = s - np.nextafter(s, -np.inf)
    unsure = ~((err + slack < up / 2) & (err - slack > -down / 2))
    out = np.where(micros < 0, -s, s)
    for i in np.flatnonzero(unsure).tolist():
        out[i] = int(micros[i]) / 1_000_000
    return out


END_TIME_RULE = "the last activity: sys/ping_time, else sys/modification_time, else the latest point or file"


def ms_text(ms: int | float | None) -> str:
    """Epoch milliseconds for a message: the instant and the number, so a wrong end time is easy to place."""
    if ms is None:
        return "none"
    moment = _EPOCH + timedelta(milliseconds=ms)
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S.')}{moment.microsecond // 1000:03d}Z ({ms} ms)"


def datetime_ms(value: datetime) -> int:
    """Epoch milliseconds in integer arithmetic (`int(value.timestamp() * 1000)` is 1 ms low for some values)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # the archive's timestamps are UTC
    return (value - _EPOCH) // _MS


def timestamps_ms(ts: pa.Array, default: int) -> np.ndarray:
    ts = ts.combine_chunks() if isinstance(ts, pa.ChunkedArray) else ts
    if ts.null_count:
        ts = ts.fill_null(pa.scalar(default, ts.type))
    return ts.cast(pa.int64()).to_numpy(zero_copy_only=False)


def to_ms(value: datetime | None) -> int | None:
    return None if value is None else datetime_ms(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
