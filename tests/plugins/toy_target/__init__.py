"""A toy target from outside the package: per run, a JSON file of its atoms, a JSON-lines file of its float series
points and a folder of its files.

It exists to prove the plug-in seam: it is registered only through an entry point in a dist-info folder the test
writes, and `load`, `validate` and `--help` reach it with no change to neptune_migration. It is also the smallest
target that passes the conformance suite (tests/conformance/): it resumes a run killed half-way with every point
once (the points file is the truth: a torn last line is dropped, the rest is kept), and a rerun with more selected
adds what is missing to the same run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.checks import RunCheck
from neptune_migration.options import option
from neptune_migration.selection import Selection
from neptune_migration.targets.base import LoadContext, LoadResult, TargetPlugin, TargetSettings

BATCH = 500  # points appended (and checkpointed) at a time
FILE_TYPES = ("file", "file_series")


@dataclass
class ToyOptions:
    toy_dir: Path = option(Path("toy-target"), help="Folder the toy target writes its runs into.")
    toy_pause: float = option(0.0, help="Seconds the toy target waits after each batch of points (a crash test's "
                              "window).")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, set | frozenset | list | tuple):
        return sorted(str(v) for v in value)
    return value


def _params(run: ArchivedRun, wants: Any) -> dict[str, Any]:
    return {path: _plain(atom.value) for path, atom in sorted(run.atoms().items()) if wants(path, atom.type)}


def _points(run: ArchivedRun, wants: Callable[[str, str], bool]) -> Iterator[str]:
    """Every wanted float series point as the line the toy stores: repr keeps NaN, -0.0 and 5e-324 exact."""
    for batch in run.batches(["float_series"], ["attribute_path", "step", "float_value"]):
        d = batch.to_pydict()
        for path, step, value in zip(d["attribute_path"], d["step"], d["float_value"], strict=True):
            if wants(path, "float_series"):
                yield json.dumps([path, str(step), repr(value)])


def _path_of(line: str) -> str:
    return json.loads(line)[0]


def _by_series(lines: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        out.setdefault(_path_of(line), []).append(line)
    return out


@dataclass(frozen=True)
class _FileRow:
    name: str  # where the toy keeps it, unique per (attribute, step, file name)
    source: Path


def _files(run: ArchivedRun, wants_attribute: Any, wants_file: Any) -> list[_FileRow]:
    out = []
    cols = ["attribute_path", "attribute_type", "step", "file_value", "file_name", "file_size"]
    for batch in run.batches(FILE_TYPES, cols):
        d = batch.to_pydict()
        for i, path in enumerate(d["attribute_path"]):
            rel = (d["file_value"][i] or {}).get("path")
            name = d["file_name"][i] or (rel or "").rsplit("/", 1)[-1]
            if rel is None or not wants_attribute(path, d["attribute_type"][i]):
                continue
            if not wants_file(path, name, d["file_size"][i] or 0):
                continue
            key = hashlib.sha256(json.dumps([path, str(d["step"][i]), name]).encode()).hexdigest()[:16]
            out.append(_FileRow(key, run.file_path(rel)))
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ToyTarget:
    name = "toy"

    def __init__(self, root: Path, pause: float = 0.0) -> None:
        self.root = Path(root).absolute()
        self.pause = pause

    @property
    def canonical(self) -> str:
        return f"toy:{self.root}"

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def file_for(self, run: ArchivedRun) -> Path:
        return self.root / (hashlib.sha256(run.ref.key.encode()).hexdigest()[:16] + ".json")

    def points_for(self, run: ArchivedRun) -> Path:
        return self.file_for(run).with_suffix(".points.jsonl")

    def files_for(self, run: ArchivedRun) -> Path:
        return self.file_for(run).with_suffix(".files")

    def held_points(self, run: ArchivedRun) -> list[str]:
        """The points file's complete lines (a SIGKILL may have torn the last one)."""
        path = self.points_for(run)
        if not path.exists():
            return []
        text = path.read_text()
        return text.split("\n")[:-1] if "\n" in text else []

    def load_run(self, run: ArchivedRun, ctx: LoadContext) -> LoadResult:
        params = _params(run, ctx.wants_attribute)
        self.file_for(run).write_text(json.dumps({"key": run.ref.key, "params": params}, sort_keys=True))
        result = LoadResult(target_id=self.file_for(run).stem)
        result.points = self._write_points(run, ctx)
        for row in _files(run, ctx.wants_attribute, ctx.wants_file):
            result.files += 1
            result.bytes += self._write_file(run, row)
        return result

    def _write_points(self, run: ArchivedRun, ctx: LoadContext) -> int:
        held = self.held_points(run)
        path = self.points_for(run)
        # Keep the complete lines, drop a torn tail. What is held of each series is a prefix of it (an attempt
        # killed half-way, or a load that left the series out): the rest is appended.
        path.write_text("".join(line + "\n" for line in held))
        skip = Counter(_path_of(line) for line in held)
        batch: list[str] = []
        total = 0
        with path.open("a") as out:
            for total, line in enumerate(_points(run, ctx.wants_attribute), 1):
                if skip[_path_of(line)] > 0:
                    skip[_path_of(line)] -= 1
                    continue
                batch.append(line)
                if len(batch) == BATCH:
                    self._append(out, batch, total, ctx)
            self._append(out, batch, total, ctx)
        return total

    def _append(self, out: Any, batch: list[str], total: int, ctx: LoadContext) -> None:
        if not batch:
            return
        out.write("".join(line + "\n" for line in batch))
        out.flush()
        ctx.on_points(len(batch))
        batch.clear()
        ctx.save_checkpoint({"points": total})
        if self.pause:
            time.sleep(self.pause)

    def _write_file(self, run: ArchivedRun, row: _FileRow) -> int:
        dest = self.files_for(run) / row.name
        if dest.exists():
            return 0
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{row.name}.tmp")
        shutil.copyfile(row.source, tmp)
        os.replace(tmp, dest)  # a file is whole or absent
        return dest.stat().st_size

    def close(self) -> None:
        pass


class ToyVerifier:
    def __init__(self, target: ToyTarget) -> None:
        self.target = target

    def verify(self, run: ArchivedRun, selection: Selection) -> RunCheck:
        check = RunCheck(run.ref, self.target.file_for(run).stem)
        path = self.target.file_for(run)
        if not path.exists():
            check.mismatch("run", "run_missing", "no file for this run in the toy target")
            return check
        held = json.loads(path.read_text())["params"]
        for key, value in _params(run, selection.wants_attribute).items():
            check.count("params")
            if held.get(key) != value:
                check.mismatch(key, "param_value", f"expected {value!r}, found {held.get(key)!r}")
        self._points(run, selection, check)
        for row in _files(run, selection.wants_attribute, selection.wants_file):
            check.count("files")
            held_file = self.target.files_for(run) / row.name
            if not held_file.is_file():
                check.mismatch("files", "file_missing", f"{row.source.name} is not in the toy target")
            elif _digest(held_file) != _digest(row.source):
                check.mismatch("files", "file_content", f"{row.source.name} differs from the archive's")
        return check

    def _points(self, run: ArchivedRun, selection: Selection, check: RunCheck) -> None:
        expected = _by_series(_points(run, selection.wants_attribute))
        held = _by_series(self.target.held_points(run))
        for path, points in expected.items():
            check.count("points", len(points))
            got = held.get(path, [])
            if len(got) != len(points):
                check.mismatch(path, "point_count", f"expected {len(points)} points, found {len(got)}",
                               expected=len(points), actual=len(got))
            elif got != points:
                check.mismatch(path, "value", "the points differ from the archive's")
        for path in sorted(set(held) - set(expected)):
            check.warnings.append(f"{path}: held by the target, not selected now")

    def discard(self, run: ArchivedRun) -> int:
        path = self.target.file_for(run)
        existed = path.exists()
        path.unlink(missing_ok=True)
        self.target.points_for(run).unlink(missing_ok=True)
        shutil.rmtree(self.target.files_for(run), ignore_errors=True)
        return int(existed)

    def close(self) -> None:
        pass


plugin = TargetPlugin(
    name="toy",
    summary="a JSON file per run (test plug-in)",
    options=ToyOptions,
    build=lambda opts, _settings: ToyTarget(opts.toy_dir, opts.toy_pause),
    verifier=ToyVerifier,
    hint=lambda target: f"Runs written to {target.root}",
)

_ = TargetSettings  # the factory's second argument, unused by a target without concurrency
