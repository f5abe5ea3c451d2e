"""One merged, step-sorted history stream per run: float series and histograms together.

W&B drops (online) or renumbers (`wandb sync`) any history row whose step does not increase, so every
per-step value of a run must be written in a single ascending pass. Archive rows come in any order across
parts, so points are gathered into compact numpy columns (28 bytes per point), sorted in chunks of at most
`chunk_points`, spilled to a temporary folder when there is more than one chunk, and merged: memory stays
bounded by the chunk size whatever the size of the run (histogram payloads are the exception: they stay in
memory, W&B itself caps them at 10k per metric).

A row is one (step, timestamp) pair: each point keeps its own step and its own timestamp exactly.
When every step is a non-negative integer and no step needs two rows, `_step` is the Neptune step;
otherwise `_step` counts rows and the exact step travels in `neptune_step`, declared as the step metric
of every key (`define_metric(key, step_metric="neptune_step")`).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import decimal_steps

MAX_BINS = 512
CHUNK_POINTS = 1_000_000  # 28 MB of columns per sorted chunk
_BLOCK = 65_536  # points read from each spilled chunk per merge step
_COLUMNS = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value", "histogram_value"]
_TYPES = ("float_series", "histogram_series")
_NAMES = ("stepf", "ts", "mid", "val")
Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Row:
    step: int  # `_step`
    neptune_step: float  # the exact Neptune step
    timestamp_ms: int
    values: dict[int, Any]  # metric index -> float, or histogram dict


@dataclass
class History:
    paths: list[str]  # metric index -> attribute path
    types: list[str]  # metric index -> attribute type
    hists: list[dict[str, Any]] = field(repr=False)
    chunks: list[Columns] = field(repr=False)  # each sorted by (step, timestamp, metric); maybe memory-mapped
    spill_dir: Path | None = None
    step_mode: str = "step"  # "step" (`_step` is the Neptune step) or "ordinal" (`neptune_step` holds it)
    points: int = 0
    rows: int = 0
    max_ts: int | None = None
    missing_timestamps: int = 0
    rebinned: int = 0

    def close(self) -> None:
        self.chunks = []
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            self.spill_dir = None

    def _groups(self) -> Iterator[tuple[Columns, np.ndarray, np.ndarray]]:
        """Sorted windows of whole rows: (columns, row start indices, repeat index of each point)."""
        for stepf, ts, mid, val in _merge(self.chunks):
            n = len(mid)
            same = np.zeros(n, dtype=bool)
            if n > 1:
                same[1:] = (stepf[1:] == stepf[:-1]) & (ts[1:] == ts[:-1]) & (mid[1:] == mid[:-1])
            if same.any():
                # A series with two points at one (step, timestamp) needs two rows: number the repeats.
                idx = np.arange(n)
                occ = idx - np.maximum.accumulate(np.where(~same, idx, 0))
                order = np.lexsort((mid, occ, ts, stepf))
                stepf, ts, mid, val, occ = stepf[order], ts[order], mid[order], val[order], occ[order]
            else:
                occ = np.zeros(n, dtype=np.int64)
            new_row = np.ones(n, dtype=bool)
            if n > 1:
                new_row[1:] = (stepf[1:] != stepf[:-1]) | (ts[1:] != ts[:-1]) | (occ[1:] != occ[:-1])
            yield (stepf, ts, mid, val), np.flatnonzero(new_row), occ

    def _survey(self) -> None:
        """First pass: row count, timestamps, and whether `_step` can be the Neptune step itself."""
        rows = 0
        integral = True
        prev: float | None = None
        max_ts = None
        for (stepf, ts, _mid, _val), starts, _occ in self._groups():
            rows += len(starts)
            if len(ts):
                m = int(ts.max())
                max_ts = m if max_ts is None else max(max_ts, m)
            steps = stepf[starts]
            if integral and len(steps):
                integral = bool(
                    np.all(steps >= 0)
                    and np.all(steps < 2**53)
                    and np.all(np.floor(steps) == steps)
                    and np.all(np.diff(steps) > 0)
                    and (prev is None or steps[0] > prev)
                )
                prev = float(steps[-1])
        self.rows = rows
        self.max_ts = max_ts
        self.step_mode = "step" if integral else "ordinal"

    def iter_rows(self) -> Iterator[Row]:
        is_hist = np.array([t == "histogram_series" for t in self.types], dtype=bool)
        r = 0
        for (stepf, ts, mid, val), starts, _occ in self._groups():
            bounds = [*starts.tolist(), len(mid)]
            mids, vals = mid.tolist(), val.tolist()
            for j in range(len(bounds) - 1):
                a, b = bounds[j], bounds[j + 1]
                values: dict[int, Any] = {}
                for m, v in zip(mids[a:b], vals[a:b], strict=True):
                    values[m] = self.hists[int(v)] if is_hist[m] else v
                step_value = float(stepf[a])
                step = int(step_value) if self.step_mode == "step" else r
                yield Row(step, step_value, int(ts[a]), values)
                r += 1


class _SpilledColumn:
    """A column on disk read by explicit slices: unlike a memory map, pages read once do not stay in the
    process's resident set, so the merge's footprint is what it holds, not what it has read."""

    def __init__(self, path: Path, dtype: np.dtype, size: int) -> None:
        self.path, self.dtype, self.size = path, np.dtype(dtype), size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, int):
            return self[key : key + 1][0]
        start, stop, _ = key.indices(self.size)
        with open(self.path, "rb") as fh:
            fh.seek(start * self.dtype.itemsize)
            return np.fromfile(fh, dtype=self.dtype, count=max(0, stop - start))


def _sorted(cols: Columns) -> Columns:
    stepf, ts, mid, val = cols
    order = np.lexsort((mid, ts, stepf))
    return stepf[order], ts[order], mid[order], val[order]


def _before(stepf: np.ndarray, ts: np.ndarray, cut: tuple[float, int]) -> np.ndarray:
    return (stepf < cut[0]) | ((stepf == cut[0]) & (ts < cut[1]))


def _merge(chunks: list[Columns]) -> Iterator[Columns]:
    """K-way merge of sorted chunks, yielding sorted windows that never split a (step, timestamp) group."""
    if len(chunks) <= 1:
        if chunks and len(chunks[0][2]):
            # Slicing reads a spilled column in one go (np.asarray would fetch it element by element).
            yield tuple(np.asarray(c[0 : len(c)]) for c in chunks[0])  # type: ignore[misc]
        return
    pos = [0] * len(chunks)
    block = [_BLOCK] * len(chunks)
    sizes = [len(c[2]) for c in chunks]
    while any(p < n for p, n in zip(pos, sizes, strict=True)):
        # The smallest last key among the blocks that do not reach their chunk's end bounds what is safe to emit.
        cut: tuple[float, int] | None = None
        for i, c in enumerate(chunks):
            end = min(pos[i] + block[i], sizes[i])
            if pos[i] < sizes[i] and end < sizes[i]:
                key = (float(c[0][end - 1]), int(c[1][end - 1]))
                cut = key if cut is None or key < cut else cut
        parts: list[Columns] = []
        for i, c in enumerate(chunks):
            if pos[i] >= sizes[i]:
                continue
            end = min(pos[i] + block[i], sizes[i])
            stepf, ts = np.asarray(c[0][pos[i] : end]), np.asarray(c[1][pos[i] : end])
            take = len(stepf) if cut is None else int(_before(stepf, ts, cut).sum())
            if take:
                sl = slice(pos[i], pos[i] + take)
                parts.append((stepf[:take], ts[:take], np.asarray(c[2][sl]), np.asarray(c[3][sl])))
                pos[i] += take
        if not parts:
            # One (step, timestamp) group is longer than a block: read further ahead.
            block = [b * 2 for b in block]
            continue
        block = [_BLOCK] * len(chunks)
        yield _sorted(tuple(np.concatenate([p[k] for p in parts]) for k in range(4)))  # type: ignore[arg-type]


def build(
    run: ArchivedRun,
    wants: Callable[[str, str], bool],
    default_ts_ms: int,
    chunk_points: int | None = None,
) -> History:
    chunk_points = chunk_points or CHUNK_POINTS
    paths: list[str] = []
    types: list[str] = []
    index: dict[tuple[str, str], int] = {}
    pending: list[Columns] = []
    pending_n = 0
    hist = History(paths, types, hists=[], chunks=[])

    def flush() -> None:
        nonlocal pending, pending_n
        if not pending:
            return
        cols = _sorted(tuple(np.concatenate([p[k] for p in pending]) for k in range(4)))  # type: ignore[arg-type]
        pending, pending_n = [], 0
        if hist.spill_dir is None:
            hist.spill_dir = Path(tempfile.mkdtemp(prefix="nm-wandb-history-"))
            # Removed when the History is dropped, however the caller leaves (return or exception).
            weakref.finalize(hist, shutil.rmtree, hist.spill_dir, True)
        n = len(hist.chunks)
        spilled = []
        for name, arr in zip(_NAMES, cols, strict=True):
            path = hist.spill_dir / f"{n}_{name}.bin"
            arr.tofile(path)
            spilled.append(_SpilledColumn(path, arr.dtype, len(arr)))
        hist.chunks.append(tuple(spilled))  # type: ignore[arg-type]

    try:
        for batch in run.batches(_TYPES, _COLUMNS):
            dict_paths = pc.dictionary_encode(
                pc.binary_join_element_wise(batch.column("attribute_path"), batch.column("attribute_type"), "\x00")
            )
            local = dict_paths.dictionary.to_pylist()
            keep_local = np.zeros(len(local), dtype=bool)
            remap = np.zeros(len(local), dtype=np.int32)
            for j, name in enumerate(local):
                path, type_ = name.split("\x00", 1)
                if not wants(path, type_):
                    continue
                keep_local[j] = True
                if (path, type_) not in index:
                    index[(path, type_)] = len(paths)
                    paths.append(path)
                    types.append(type_)
                remap[j] = index[(path, type_)]
            codes = dict_paths.indices.to_numpy(zero_copy_only=False)
            keep = keep_local[codes]
            if not keep.any():
                continue
            exact = batch.column("step_exact")
            # The nearest float to the decimal, as the verifier's `float(Decimal)`: never a float division of
            # millionths, which turned step 999999999999 into 999999999999.0001.
            stepf = decimal_steps(batch.column("step"))
            if exact.null_count < len(exact):
                ex = exact.to_numpy(zero_copy_only=False)
                has = ~np.isnan(ex) & np.asarray(exact.is_valid())
                stepf = np.where(has, ex, stepf)
            ts_col = batch.column("timestamp")
            hist.missing_timestamps += int((~np.asarray(ts_col.is_valid()) & keep).sum())
            ts = ts_col.cast(pa.int64()).fill_null(default_ts_ms).to_numpy(zero_copy_only=False)
            is_hist_row = np.asarray(pc.equal(batch.column("attribute_type"), "histogram_series").fill_null(False))
            val = batch.column("float_value").to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
            if is_hist_row.any():
                hv = batch.column("histogram_value")
                for i in np.flatnonzero(is_hist_row & keep).tolist():
                    h = hv[i].as_py()
                    if h is None:
                        keep[i] = False
                        continue
                    converted, changed = _histogram(h)
                    hist.rebinned += changed
                    val[i] = len(hist.hists)
                    hist.hists.append(converted)
            sel = np.flatnonzero(keep)
            pending.append((stepf[sel], ts[sel].astype(np.int64), remap[codes[sel]], val[sel]))
            pending_n += len(sel)
            hist.points += len(sel)
            if pending_n >= chunk_points:
                flush()
        if hist.chunks:
            flush()  # more than one chunk: every chunk goes to disk
        elif pending:
            hist.chunks.append(
                _sorted(tuple(np.concatenate([p[k] for p in pending]) for k in range(4)))  # type: ignore[arg-type]
            )
        hist._survey()
    except BaseException:
        hist.close()
        raise
    return hist


def _histogram(h: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A Neptune histogram as W&B's history form; more than 512 bins are merged into at most 512."""
    edges = list(h.get("edges") or [])
    values = list(h.get("values") or [])
    changed = 0
    if len(values) > MAX_BINS:
        group = -(-len(values) // MAX_BINS)
        values = [sum(values[i : i + group]) for i in range(0, len(values), group)]
        edges = edges[::group] + ([edges[-1]] if (len(edges) - 1) % group else [])
        changed = 1
    return {"_type": "histogram", "values": values, "bins": edges}, changed
