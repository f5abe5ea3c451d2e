"""What a run should look like in W&B, computed straight from the archive (independently of the target)."""

from __future__ import annotations

import hashlib
import math
import struct
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.targets.base import LoadResult
from neptune_migration.targets.wandb.names import metric_keys
from neptune_migration.targets.wandb.readback import WandbRunData


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


def _keys(run: ArchivedRun, result: LoadResult) -> dict[str, str]:
    paths = [p for t in ("float_series", "histogram_series", "string_series") for p in series(run, t)]
    paths += list(files(run))
    keys = metric_keys(paths)
    assert {p: k for p, k in keys.items() if p != k} == {p: k for p, k in result.renamed.items() if p in keys}
    return keys


def assert_run_matches(run: ArchivedRun, result: LoadResult, data: WandbRunData) -> None:
    """Every point, timestamp, config value, summary value and payload of the run arrived."""
    keys = _keys(run, result)
    # Every float point: same step, same bits, same timestamp.
    total = 0
    for path, points in series(run, "float_series").items():
        got = data.points(keys[path])
        assert [(s, bits(v), t) for s, v, t in got] == [(s, bits(v), t) for s, v, t in points], path
        total += len(points)
    for path, points in series(run, "histogram_series").items():
        got = data.points(keys[path])
        assert len(got) == len(points), path
        for (s, h, t), (es, eh, et) in zip(got, points, strict=True):
            assert (s, t) == (es, et)
            assert h["_type"] == "histogram"
            assert len(h["values"]) <= 512 and len(h["bins"]) == len(h["values"]) + 1
            assert sum(h["values"]) == sum(eh["values"])
            if len(eh["values"]) <= 512:
                assert (h["values"], h["bins"]) == (eh["values"], eh["edges"])
        total += len(points)
    for path, points in series(run, "string_series").items():
        got = data.string_series[keys[path]]
        assert [(s, t, v) for s, t, v in got] == [(s, t, v) for s, v, t in points], path
        total += len(points)
    assert result.points == total
    # Summary: the last value of each metric, as W&B's UI expects.
    for path, points in series(run, "float_series").items():
        if points:
            assert bits(data.summary[keys[path]]) == bits(points[-1][1]), path
    # Files: one artifact per attribute, every payload byte-identical.
    by_attr = {a["metadata"]["neptune_attribute"]: a for a in data.artifacts.values()}
    for path, expected in files(run).items():
        art = by_attr[path]
        got = sorted((f.sha256, f.size) for f in art["files"].values())
        assert got == sorted((sha, size) for _s, sha, size in expected), path
    # Config: every atom, native types.
    atoms = run.atoms()
    for path, atom in atoms.items():
        node: object = data.config
        for seg in path.split("/"):
            node = node[seg]  # type: ignore[index]
        if isinstance(node, dict) and "_value" in node:
            node = node["_value"]
        v = atom.value
        if atom.type == "datetime":
            assert node == v.isoformat().replace("+00:00", "Z")
        elif atom.type == "string_set":
            assert node == sorted(v)
        elif isinstance(v, float) and not math.isfinite(v):
            assert node in ("NaN", "Infinity", "-Infinity")
        elif atom.type == "float":
            # wandb-core writes whole floats as JSON integers (2.0 -> 2): equal numbers, not bool, not str.
            assert isinstance(node, int | float) and not isinstance(node, bool) and bits(float(node)) == bits(v), path
        else:
            assert node == v and type(node) is type(v), path
    assert data.config["neptune_migration"]["run_key"] == run.ref.key
    assert data.state == ("failed" if atoms.get("sys/failed") and atoms["sys/failed"].value else "finished")
