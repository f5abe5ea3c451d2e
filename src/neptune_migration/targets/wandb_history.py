"""One merged, step-sorted history stream per run: float series and histograms together.

W&B drops (online) or renumbers (`wandb sync`) any history row whose step does not increase, so every
per-step value of a run must be written in a single ascending pass. Archive rows come in any order across
parts, so the points are gathered into compact numpy columns (about 28 bytes per point) and sorted once.

A row is one (step, timestamp) pair: each point keeps its own step and its own timestamp exactly.
When every step is a non-negative integer and no step needs two rows, `_step` is the Neptune step;
otherwise `_step` counts rows and the exact step travels in `neptune_step`, declared as the step metric
of every key (`define_metric(key, step_metric="neptune_step")`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..archive import ArchivedRun
from ..archive.reader import decimal_micros

MAX_BINS = 512
_COLUMNS = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value", "histogram_value"]
_TYPES = ("float_series", "histogram_series")


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
    step_mode: str  # "step" (`_step` is the Neptune step) or "ordinal" (`neptune_step` holds it)
    stepf: np.ndarray = field(repr=False)
    ts: np.ndarray = field(repr=False)
    mid: np.ndarray = field(repr=False)
    val: np.ndarray = field(repr=False)
    hists: list[dict[str, Any]] = field(repr=False)
    row_start: np.ndarray = field(repr=False)  # index into the sorted points where each row starts
    missing_timestamps: int = 0
    rebinned: int = 0

    @property
    def points(self) -> int:
        return len(self.mid)

    @property
    def rows(self) -> int:
        return len(self.row_start)

    def iter_rows(self) -> Iterator[Row]:
        bounds = [*self.row_start.tolist(), len(self.mid)]
        is_hist = np.array([t == "histogram_series" for t in self.types], dtype=bool)
        for r in range(len(bounds) - 1):
            a, b = bounds[r], bounds[r + 1]
            values: dict[int, Any] = {}
            for m, v in zip(self.mid[a:b].tolist(), self.val[a:b].tolist(), strict=True):
                values[m] = self.hists[int(v)] if is_hist[m] else v
            stepf = float(self.stepf[a])
            step = int(stepf) if self.step_mode == "step" else r
            yield Row(step, stepf, int(self.ts[a]), values)


def build(
    run: ArchivedRun,
    wants: Callable[[str, str], bool],
    default_ts_ms: int,
) -> History:
    paths: list[str] = []
    types: list[str] = []
    index: dict[tuple[str, str], int] = {}
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    hists: list[dict[str, Any]] = []
    missing_ts = 0
    rebinned = 0
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
        micros = decimal_micros(batch.column("step"))
        exact = batch.column("step_exact")
        stepf = micros.astype(np.float64) / 1e6
        if exact.null_count < len(exact):
            ex = exact.to_numpy(zero_copy_only=False)
            has = ~np.isnan(ex) & np.asarray(exact.is_valid())
            stepf = np.where(has, ex, stepf)
        ts_col = batch.column("timestamp")
        missing_ts += int((~np.asarray(ts_col.is_valid()) & keep).sum())
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
                hist, changed = _histogram(h)
                rebinned += changed
                val[i] = len(hists)
                hists.append(hist)
        sel = np.flatnonzero(keep)
        chunks.append((stepf[sel], ts[sel].astype(np.int64), remap[codes[sel]], val[sel]))
    if chunks:
        stepf = np.concatenate([c[0] for c in chunks])
        ts = np.concatenate([c[1] for c in chunks])
        mid = np.concatenate([c[2] for c in chunks])
        val = np.concatenate([c[3] for c in chunks])
    else:
        stepf, ts = np.empty(0), np.empty(0, np.int64)
        mid, val = np.empty(0, np.int32), np.empty(0)
    del chunks
    order = np.lexsort((mid, ts, stepf))
    stepf, ts, mid, val = stepf[order], ts[order], mid[order], val[order]
    # A series with two points at one (step, timestamp) needs two rows: count repeats of each key.
    n = len(mid)
    idx = np.arange(n)
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = (stepf[1:] == stepf[:-1]) & (ts[1:] == ts[:-1]) & (mid[1:] == mid[:-1])
    if same.any():
        occ = idx - np.maximum.accumulate(np.where(~same, idx, 0))
        order = np.lexsort((mid, occ, ts, stepf))
        stepf, ts, mid, val, occ = stepf[order], ts[order], mid[order], val[order], occ[order]
    else:
        occ = np.zeros(n, dtype=np.int64)
    new_row = np.ones(n, dtype=bool)
    if n > 1:
        new_row[1:] = (stepf[1:] != stepf[:-1]) | (ts[1:] != ts[:-1]) | (occ[1:] != occ[:-1])
    row_start = np.flatnonzero(new_row)
    row_steps = stepf[row_start]
    integral = bool(
        n == 0
        or (
            np.all(row_steps >= 0)
            and np.all(row_steps < 2**53)
            and np.all(np.floor(row_steps) == row_steps)
            and np.all(np.diff(row_steps) > 0)
        )
    )
    return History(
        paths=paths,
        types=types,
        step_mode="step" if integral else "ordinal",
        stepf=stepf,
        ts=ts,
        mid=mid,
        val=val,
        hists=hists,
        row_start=row_start,
        missing_timestamps=missing_ts,
        rebinned=rebinned,
    )


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
