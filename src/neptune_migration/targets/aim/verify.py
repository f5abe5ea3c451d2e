"""Read a migrated run back from an Aim repository with Aim's own SDK and compare it with the archive (docs/aim.md).

The reading side opens its own read-only `aim.Repo` and finds the run through Aim's index (`Repo.iter_runs`), the way
`aim up` and any Aim user see it, never through the loader's objects. The expected side is recomputed from the archive
with the pure rules of mapping.py: step scales, artifact names, param values. Metric values are compared bit for bit
(NaN, +-inf, -0.0 and subnormals included), with their steps and millisecond timestamps; texts by step, time and text;
distributions by step, time, counts and Neptune's edges; images by the steps that hold one; files by size and sha256.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from neptune_migration.archive import ArchivedRun
from neptune_migration.checks import RunCheck, canonical, examples, short
from neptune_migration.hashing import file_sha256
from neptune_migration.selection import Selection
from neptune_migration.targets.aim.mapping import (
    COMPLETE,
    STATE_KEY,
    decodable_image,
    even_edges,
    experiment_name,
    param_value,
    run_tags,
    value_key,
)
from neptune_migration.targets.aim.mapping_version import MAPPING_VERSION
from neptune_migration.targets.tracker_rules import (
    exact_step,
    is_image,
    ms_of,
    run_name,
    scaled_step,
    selected_payloads,
    step_decimals,
)

_SERIES = ("float_series", "string_series", "histogram_series")


class AimVerifier:
    def __init__(self, target: Any) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._repo: Any = None
        self._keys: dict[str, list[str]] = {}

    def close(self) -> None:
        with self._lock:
            self._drop_repo()

    def _drop_repo(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None

    def discard(self, run: ArchivedRun) -> int:
        """Delete every Aim run of this Neptune run (for `retry`): the next load creates it afresh."""
        removed = self.target.discard(run.ref)
        with self._lock:
            self._drop_repo()  # its index view predates the deletion
        return removed

    # -- finding the run through Aim's index --------------------------------------------------------------
    def _find(self, key: str) -> tuple[Any, list[str]]:
        with self._lock:
            if self._repo is None or key not in self._keys:
                # A Repo of its own (not the loader's pooled one): its read-only view of the index is taken now.
                from aim import Repo

                self._drop_repo()
                self._repo = Repo(str(self.target.path))
                keys: dict[str, list[str]] = defaultdict(list)
                for aim_run in self._repo.iter_runs():
                    state = aim_run.get(STATE_KEY) or {}
                    if isinstance(state, dict) and state.get("run_key"):
                        keys[state["run_key"]].append(aim_run.hash)
                self._keys = dict(keys)
            return self._repo, sorted(self._keys.get(key, []))

    def verify(self, run: ArchivedRun, selection: Selection) -> RunCheck:
        from aim import Run

        check = RunCheck(run.ref)
        repo, found = self._find(run.ref.key)
        if not found:
            check.mismatch("run", "run_missing", f"no run in the Aim repository {self.target.path} carries this run's "
                           f"key ({STATE_KEY}.run_key = {run.ref.key!r})")
            return check
        if len(found) > 1:
            check.mismatch("run", "duplicate_runs", f"{len(found)} Aim runs carry this run's key: " + ", ".join(found),
                           expected=1, actual=len(found))
        check.target_id = found[0]
        with self._lock:
            aim_run = Run(found[0], repo=repo, read_only=True)
            start_ms = run.start_time_ms() or 0
            self._metadata(run, aim_run, check)
            self._params(run, selection, aim_run, check)
            expected = _expected_series(run, selection, start_ms)
            for kind, n in expected.approximations.items():
                check.approx(kind, n)
            self._sequences(expected, aim_run, check)
            self._files(run, selection, aim_run, expected.decimals, start_ms, check)
        return check

    # -- run metadata ---------------------------------------------------------------------------------------
    def _metadata(self, run: ArchivedRun, aim_run: Any, check: RunCheck) -> None:
        def same(attribute: str, what: str, expected: Any, actual: Any, kind: str) -> None:
            check.count("metadata")
            if expected != actual:
                check.mismatch(attribute, kind, f"{what} is {short(actual)!r} in Aim, {short(expected)!r} expected",
                               expected=expected, actual=actual)

        state = aim_run.get(STATE_KEY) or {}
        same("run", "load state", COMPLETE, state.get("state"), "incomplete")
        if state.get("mapping_version", MAPPING_VERSION) != MAPPING_VERSION:
            check.mismatch("run", "mapping_version", f"the run was loaded with mapping version "
                           f"{state.get('mapping_version')}, this version writes {MAPPING_VERSION}: `load --refresh` "
                           "reloads it", expected=MAPPING_VERSION, actual=state.get("mapping_version"))
        same("run", "run name", run_name(run), aim_run.name, "name")
        same("run", "experiment", experiment_name(run), aim_run.experiment, "experiment")
        description = run.atom_value("sys/description")
        same("sys/description", "description", str(description) if description else "", aim_run.description or "",
             "description")
        same("sys/tags", "tags", run_tags(run), sorted(aim_run.tags), "tags")
        start = run.start_time_ms()
        if start is not None:
            same("sys/creation_time", "creation time (ms)", start, round(aim_run.creation_time * 1000), "start_time")
        end = run.end_time_ms()
        if end is not None:
            actual = None if aim_run.end_time is None else round(aim_run.end_time * 1000)
            same("run", "end time (ms)", end, actual, "end_time")
        if run.atom_value("sys/failed"):
            check.approx("aim_failed_state_as_param")

    def _params(self, run: ArchivedRun, selection: Selection, aim_run: Any, check: RunCheck) -> None:
        digest = hashlib.sha256()
        for path, atom in sorted(run.atoms().items()):
            if not path.startswith("sys/") and not selection.wants_attribute(path, atom.type):
                continue
            want, kind = param_value(atom.type, atom.value)
            if kind:
                check.approx(kind)
            check.count("params")
            digest.update(f"{path}\0{canonical(want)}\0".encode())
            got = aim_run.get(path, default=_MISSING)
            if got is _MISSING:
                check.mismatch(path, "param_missing", f"param {path!r} is missing in Aim", path, expected=short(want))
            elif value_key(got) != value_key(want) or type(got) is not type(want):
                check.mismatch(path, "param_value", f"param {path!r} is {short(got)!r} in Aim, {short(want)!r} "
                               "expected", path, expected=short(want), actual=short(got))
        check.digests["params"] = digest.hexdigest()

    # -- sequences ------------------------------------------------------------------------------------------
    def _sequences(self, expected: _Expected, aim_run: Any, check: RunCheck) -> None:
        from aim.storage.context import Context

        getters = {"float_series": aim_run.get_metric, "string_series": aim_run.get_text_sequence,
                   "histogram_series": aim_run.get_distribution_sequence}
        digest = hashlib.sha256()
        for path, (type_, points) in sorted(expected.series.items()):
            if type_ == "float_series":
                check.count("metric_series")
                check.count("points", len(points))
            else:
                check.count("series_artifacts")
                check.count("series_points", len(points))
            want = {step: (ts, _comparable(type_, value)) for step, (ts, value) in points.items()}
            digest.update(f"{path}\0{canonical(sorted((s, t, repr(v)) for s, (t, v) in want.items()))}\0".encode())
            sequence = getters[type_](path, Context({}))
            if sequence is None:
                if want:
                    check.mismatch(path, "series_missing", f"sequence {path!r} is missing in Aim ({len(want)} "
                                   "points)", path, expected=len(want), actual=0)
                else:
                    check.approx("aim_empty_series_not_created")
                continue
            have = {int(step): (round(float(fields[-1]) * 1000), _comparable(type_, fields[0]))
                    for step, fields in sequence.data.items()}
            _compare(check, path, want, have)
        check.digests["series"] = digest.hexdigest()

    # -- files ----------------------------------------------------------------------------------------------
    def _files(self, run: ArchivedRun, selection: Selection, aim_run: Any, decimals: dict[str, int], start_ms: int,
               check: RunCheck) -> None:
        from aim.storage.context import Context

        artifacts = aim_run.artifacts
        images: dict[str, dict[int, int]] = defaultdict(dict)
        digest = hashlib.sha256()
        cols = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "file_value", "file_name"]
        for row, local, entry, size, name in selected_payloads(run, selection, cols):
            path, type_ = row["attribute_path"], row["attribute_type"]
            check.count("files")
            check.count("bytes", size)
            sha = file_sha256(local)
            digest.update(f"{name}\0{size}\0{sha}\0".encode())
            _check_artifact(check, path, name, size, sha, artifacts.get(name))
            if type_ == "file_series" and is_image(entry):
                if not decodable_image(local):
                    check.approx("aim_undecodable_image_kept_as_file")
                    continue
                step, _ = scaled_step(exact_step(row["step"], row["step_exact"]), decimals.get(path, 0))
                images[path][step] = ms_of(row["timestamp"], start_ms)
        for path, want in sorted(images.items()):
            check.count("images", len(want))
            sequence = aim_run.get_image_sequence(path, Context({}))
            have = {} if sequence is None else {int(s): round(float(f[-1]) * 1000) for s, f in sequence.data.items()}
            if have != want:
                held, wanted = (examples(str(s) for s in sorted(x)) for x in (have, want))
                check.mismatch(path, "images", f"image sequence {path!r} holds images at steps [{held}] with their "
                               f"times, [{wanted}] expected", path, expected=len(want), actual=len(have))
        check.digests["files"] = digest.hexdigest()


_MISSING = object()


class _Expected:
    def __init__(self) -> None:
        # path -> (type, {aim step: (timestamp ms, value)}): the last point of a step wins, as in Aim.
        self.series: dict[str, tuple[str, dict[int, tuple[int, Any]]]] = {}
        self.decimals: dict[str, int] = {}
        # The documented approximations the mapping makes on this run (docs/aim.md).
        self.approximations: dict[str, int] = defaultdict(int)


def _expected_series(run: ArchivedRun, selection: Selection, start_ms: int) -> _Expected:
    out = _Expected()
    cols = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value", "string_value",
            "histogram_value"]
    rows = [r for r in run.table((*_SERIES, "file_series"), cols).to_pylist()
            if selection.wants_attribute(r["attribute_path"], r["attribute_type"])]
    steps: dict[str, list] = defaultdict(list)
    for r in rows:
        steps[r["attribute_path"]].append(exact_step(r["step"], r["step_exact"]))
    out.decimals = {path: step_decimals(s) for path, s in steps.items()}
    out.approximations["aim_steps_scaled"] = sum(1 for d in out.decimals.values() if d)
    for r in rows:
        path, type_ = r["attribute_path"], r["attribute_type"]
        if type_ == "file_series":
            continue
        points = out.series.setdefault(path, (type_, {}))[1]
        if type_ == "histogram_series":
            hist = r["histogram_value"] or {}
            if not hist.get("values"):
                out.approximations["aim_empty_histogram_skipped"] += 1
                continue
            out.approximations["aim_histogram_uneven_edges_drawn_even"] += not even_edges(
                [float(e) for e in hist.get("edges") or []], len(hist["values"]))
        step, rounded = scaled_step(exact_step(r["step"], r["step_exact"]), out.decimals[path])
        out.approximations["aim_step_rounded"] += rounded
        out.approximations["aim_duplicate_step_kept_last"] += step in points
        out.approximations["aim_timestamp_missing_used_start_time"] += r["timestamp"] is None
        value = {"float_series": r["float_value"], "string_series": r["string_value"] or "",
                 "histogram_series": r["histogram_value"]}[type_]
        points[step] = (ms_of(r["timestamp"], start_ms), value)
    return out


def _comparable(type_: str, value: Any) -> Any:
    """One spelling for a value of each kind, whether it comes from the archive or from Aim's objects."""
    if type_ == "float_series":
        return value_key(float(value))
    if type_ == "string_series":
        return value if isinstance(value, str) else value.data
    if isinstance(value, dict):  # the archive's histogram
        values = [float(v) for v in value.get("values") or []]
        edges = [float(e) for e in value.get("edges") or []] or [0.0, float(len(values))]
        return (tuple(value_key(v) for v in values), tuple(value_key(e) for e in edges))
    weights = [float(w) for w in value.weights]
    return (tuple(value_key(v) for v in weights), tuple(value_key(float(e)) for e in value.storage["edges"]))


def _compare(check: RunCheck, path: str, want: dict[int, tuple[int, Any]], have: dict[int, tuple[int, Any]]) -> None:
    if want == have:
        return
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing:
        check.mismatch(path, "missing_points", f"{len(missing)} point(s) missing in Aim sequence {path!r} at step(s) "
                       + examples(str(s) for s in missing), path, expected=len(want), actual=len(have))
    if extra:
        check.mismatch(path, "extra_points", f"{len(extra)} point(s) in Aim sequence {path!r} at step(s) the archive "
                       "does not have: " + examples(str(s) for s in extra), path, expected=len(want), actual=len(have))
    common = sorted(set(want) & set(have))
    values = [s for s in common if want[s][1] != have[s][1]]
    stamps = [s for s in common if want[s][0] != have[s][0]]
    if values:
        check.mismatch(path, "value", f"sequence {path!r}: {len(values)} value(s) differ, at step(s) "
                       + examples(str(s) for s in values), path)
    if stamps:
        check.mismatch(path, "timestamp", f"sequence {path!r}: {len(stamps)} timestamp(s) differ: " + examples(
            f"step {s}: {have[s][0]} ms in Aim, {want[s][0]} ms expected" for s in stamps), path,
            expected=want[stamps[0]][0], actual=have[stamps[0]][0])


def _check_artifact(check: RunCheck, path: str, name: str, size: int, sha: str, artifact: Any) -> None:
    if artifact is None:
        check.mismatch(path, "file_missing", f"artifact {name!r} ({size} bytes) is missing in Aim", name, expected=size)
        return
    # As Aim's own file storage does: the base URI's path, then the name as it is (a name may hold `#` or `?`).
    base = _local(artifact.storage["base_uri"])
    stored = None if base is None else base / artifact.name
    if stored is None or not stored.is_file():
        check.mismatch(path, "file_missing", f"artifact {name!r} is listed by Aim but its file {artifact.uri} is "
                       "not there", name, expected=size)
        return
    got = stored.stat().st_size
    if got != size:
        check.mismatch(path, "file_size", f"artifact {name!r} is {got} bytes in Aim, {size} expected", name,
                       expected=size, actual=got)
    elif file_sha256(stored) != sha:
        check.mismatch(path, "file_sha256", f"artifact {name!r} has different bytes in Aim (sha256 differs)", name,
                       expected=sha)


def _local(uri: str) -> Path | None:
    parsed = urlparse(uri)
    return Path(parsed.path) if parsed.scheme == "file" else None
