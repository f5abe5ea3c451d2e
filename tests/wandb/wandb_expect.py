"""What a run should look like in W&B, computed straight from the archive (independently of the target)."""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

from neptune_migration.archive import ArchivedRun


def bits(x: Any) -> Any:
    """Floats compared bit for bit (NaN == NaN, -0.0 != 0.0); other values as they are."""
    if isinstance(x, float):
        return struct.pack("<d", x) if not math.isnan(x) else b"nan"
    if isinstance(x, int) and not isinstance(x, bool):
        return struct.pack("<d", float(x))
    return x


def series(run: ArchivedRun, type_: str) -> dict[str, list[tuple[float, Any, int | None]]]:
    """attribute path -> sorted [(step, value, timestamp ms)]."""
    out: dict[str, list[tuple[float, Any, int | None]]] = {}
    col = {"float_series": "float_value", "string_series": "string_value", "histogram_series": "histogram_value"}
    t = run.table([type_], ["attribute_path", "step", "step_exact", "timestamp", col[type_]])
    for row in t.to_pylist():
        step = row["step_exact"] if row["step_exact"] is not None else float(row["step"])
        ts = None if row["timestamp"] is None else round(row["timestamp"].timestamp() * 1000)
        out.setdefault(row["attribute_path"], []).append((step, row[col[type_]], ts))
    for pts in out.values():
        pts.sort(key=lambda p: (p[0], p[2] or 0))
    return out


def files(run: ArchivedRun) -> dict[str, list[tuple[float | None, str, int]]]:
    """attribute path -> [(step, sha256, size)] for every payload file."""
    out: dict[str, list[tuple[float | None, str, int]]] = {}
    t = run.table(["file", "file_series", "file_set", "artifact"], ["attribute_path", "step", "file_value"])
    for row in t.to_pylist():
        p = run.file_path(row["file_value"]["path"])
        paths = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for x in paths:
            data = x.read_bytes()
            step = None if row["step"] is None else float(row["step"])
            out.setdefault(row["attribute_path"], []).append((step, hashlib.sha256(data).hexdigest(), len(data)))
    return out
