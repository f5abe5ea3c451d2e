"""Read an offline experiment archive back and compare it with the Neptune archive (docs/comet.md).

The reading side opens the zip and parses the JSON that `comet upload` reads (experiment.json, messages.json, the
uploaded members) with nothing of the writer. The expected side is recomputed from the Neptune archive with the pure
rules of mapping.py. Metric values are compared as their JSON text (NaN and infinities as comet_ml's strings, -0.0
apart from 0.0), with their steps and millisecond timestamps; texts by step, time and text; histograms by step, time,
Neptune's exact bins kept in their metadata and the count of Comet's own bins; files and images by name, step, size
and sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import zipfile
from collections import defaultdict
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.checks import RunCheck, canonical, examples, short
from neptune_migration.hashing import file_sha256
from neptune_migration.selection import Selection
from neptune_migration.targets.comet.mapping import (
    EXPERIMENT_JSON,
    FAILED_MESSAGE,
    MAPPING_KEY,
    MESSAGES_JSON,
    RUN_KEY,
    decodable_image,
    histogram_metadata,
    number,
    offline_id,
    param_value,
    run_tags,
    value_key,
)
from neptune_migration.targets.comet.mapping_version import MAPPING_VERSION
from neptune_migration.targets.tracker_rules import (
    SERIES_WITH_STEPS,
    dropped_tags,
    exact_step,
    is_image,
    ms_of,
    run_name,
    scaled_step,
    selected_payloads,
    step_decimals,
)

_COLUMNS = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value", "string_value",
            "histogram_value"]


class Held:
    """What one offline archive holds, parsed from its JSON."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.meta: dict[str, Any] = json.loads(archive.read(EXPERIMENT_JSON))
        self.others: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        # series path -> sorted [(step, timestamp ms, comparable value)]
        self.series: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        # Comet file name -> [(step, size, sha256)]
        self.files: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.images: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.problems: list[str] = []
        self.metric_points = 0
        names = set(archive.namelist())
        with archive.open(MESSAGES_JSON) as lines:
            for line in lines:
                self._message(archive, names, json.loads(line))
        for points in (*self.series.values(), *self.files.values(), *self.images.values()):
            points.sort(key=repr)

    def _message(self, archive: zipfile.ZipFile, names: set[str], message: dict[str, Any]) -> None:
        payload = message["payload"]
        if message["type"] == "log_other":
            self.others[payload["key"]] = payload["value"]
        elif message["type"] == "parameter_msg":
            self.params[payload["param"]["paramName"]] = payload["param"]["paramValue"]
        elif message["type"] == "metric_msg":
            metric = payload["metric"]
            self.metric_points += 1
            self.series[metric["metricName"]].append(
                (metric["step"], payload["local_timestamp"], value_key(metric["metricValue"])))
        elif message["type"] == "file_upload":
            member = payload["file_path"]
            if member not in names:
                self.problems.append(f"{member} ({payload['upload_type']})")
                return
            self._upload(payload, archive.read(member))
        else:
            self.problems.append(f"message type {message['type']}")

    def _upload(self, payload: dict[str, Any], data: bytes) -> None:
        extra, kind, when = payload["additional_params"], payload["upload_type"], payload["local_timestamp"]
        if kind == "text-sample":
            self.series[payload["metadata"]["neptune_path"]].append((extra["step"], when, data.decode("utf-8")))
        elif kind == "histogram3d":
            bins = json.loads(data).get("index_values") or []
            self.series[extra["fileName"]].append(
                (extra["step"], when, canonical(payload["metadata"]), _total(c for _i, c in bins)))
        else:
            held = self.images[extra["figName"]] if kind == "visualization" else self.files[extra["fileName"]]
            held.append((extra["step"], len(data), hashlib.sha256(data).hexdigest()))


class CometOfflineVerifier:
    def __init__(self, target: Any) -> None:
        self.target = target
        self._lock = threading.Lock()

    def close(self) -> None:
        pass

    def discard(self, run: ArchivedRun) -> int:
        """Delete the run's archive (for `retry`): the next load writes it afresh."""
        return self.target.discard(run.ref)

    def read(self, run: ArchivedRun) -> Held | None:
        path = self.target.archive_path(run.ref)
        if not path.exists():
            return None
        with zipfile.ZipFile(path) as archive:
            return Held(archive)

    def verify(self, run: ArchivedRun, selection: Selection) -> RunCheck:
        check = RunCheck(run.ref)
        try:
            held = self.read(run)
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            check.mismatch("run", "unreadable", f"the offline archive {self.target.archive_path(run.ref)} cannot be "
                           f"read: {exc}")
            return check
        if held is None:
            check.mismatch("run", "run_missing", f"no offline archive {self.target.archive_path(run.ref)} for this run")
            return check
        check.target_id = offline_id(run.ref.key)
        if held.problems:
            check.mismatch("run", "broken_message", "messages.json names what the archive lacks: "
                           + examples(held.problems))
        start_ms = run.start_time_ms() or 0
        self._metadata(run, held, check, start_ms)
        self._params(run, selection, held, check)
        expected = _Expected(run, selection, start_ms)
        for kind, n in expected.approximations.items():
            check.approx(kind, n)
        _compare_all(check, "series", expected.series, held.series)
        _compare_all(check, "files", expected.files, held.files)
        _compare_all(check, "images", expected.images, held.images)
        return check

    def _metadata(self, run: ArchivedRun, held: Held, check: RunCheck, start_ms: int) -> None:
        def same(attribute: str, what: str, expected: Any, actual: Any, kind: str) -> None:
            check.count("metadata")
            if expected != actual:
                check.mismatch(attribute, kind, f"{what} is {short(actual)!r} in the archive, {short(expected)!r} "
                               "expected", expected=expected, actual=actual)

        meta, others = held.meta, held.others
        same("run", "run key", run.ref.key, others.get(RUN_KEY), "run_key")
        if others.get(MAPPING_KEY, MAPPING_VERSION) != MAPPING_VERSION:
            check.mismatch("run", "mapping_version", f"the archive was written with mapping version "
                           f"{others.get(MAPPING_KEY)}, this version writes {MAPPING_VERSION}: `load --refresh` "
                           "writes it again", expected=MAPPING_VERSION, actual=others.get(MAPPING_KEY))
        same("run", "offline id", offline_id(run.ref.key), meta.get("offline_id"), "offline_id")
        same("run", "project", self.target.project_of(run.ref), meta.get("project_name"), "project")
        same("run", "workspace", self.target.workspace, meta.get("workspace"), "workspace")
        same("run", "run name", run_name(run), others.get("Name"), "name")
        same("sys/tags", "tags", run_tags(run), sorted(meta.get("tags") or []), "tags")
        same("sys/creation_time", "start time (ms)", start_ms, meta.get("start_time"), "start_time")
        end = run.end_time_ms()
        same("run", "stop time (ms)", start_ms if end is None else end, meta.get("stop_time"), "end_time")
        failed = bool(run.atom_value("sys/failed"))
        same("sys/failed", "error status", (failed, FAILED_MESSAGE if failed else None),
             (meta.get("customer_error_reported"), meta.get("customer_error_message")), "state")
        if failed:
            check.approx("comet_failed_as_error_status")
        if dropped := dropped_tags(run):
            check.approx("comet_empty_tag_dropped", dropped)

    def _params(self, run: ArchivedRun, selection: Selection, held: Held, check: RunCheck) -> None:
        digest = hashlib.sha256()
        for path, atom in sorted(run.atoms().items()):
            system = path.startswith("sys/")
            if not system and not selection.wants_attribute(path, atom.type):
                continue
            want, kind = param_value(atom.type, atom.value)
            if kind:
                check.approx(kind)
            check.count("params")
            digest.update(f"{path}\0{canonical(want)}\0".encode())
            where, what = (held.others, "other value") if system else (held.params, "parameter")
            got = where.get(path, _MISSING)
            if got is _MISSING:
                check.mismatch(path, "param_missing", f"{what} {path!r} is missing in the archive", path,
                               expected=short(want))
            elif value_key(got) != value_key(want):
                check.mismatch(path, "param_value", f"{what} {path!r} is {short(got)!r} in the archive, "
                               f"{short(want)!r} expected", path, expected=short(want), actual=short(got))
        check.digests["params"] = digest.hexdigest()


_MISSING = object()


class _Expected:
    """The archive as the mapping puts it into Comet, recomputed from the Neptune archive."""

    def __init__(self, run: ArchivedRun, selection: Selection, start_ms: int) -> None:
        self.series: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.files: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.images: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        self.approximations: dict[str, int] = defaultdict(int)
        rows = [r for r in run.table(SERIES_WITH_STEPS, _COLUMNS).to_pylist()
                if selection.wants_attribute(r["attribute_path"], r["attribute_type"])]
        steps: dict[str, list] = defaultdict(list)
        for r in rows:
            steps[r["attribute_path"]].append(exact_step(r["step"], r["step_exact"]))
        self.decimals = {path: step_decimals(s) for path, s in steps.items()}
        self.approximations["comet_steps_scaled"] = sum(1 for d in self.decimals.values() if d)
        for r in rows:
            if r["attribute_type"] != "file_series":
                self._point(r, start_ms)
        self._files(run, selection, start_ms)
        for points in (*self.series.values(), *self.files.values(), *self.images.values()):
            points.sort(key=repr)

    def _point(self, r: dict[str, Any], start_ms: int) -> None:
        path, type_ = r["attribute_path"], r["attribute_type"]
        step, rounded = scaled_step(exact_step(r["step"], r["step_exact"]), self.decimals[path])
        self.approximations["comet_step_rounded"] += rounded
        self.approximations["comet_timestamp_missing_used_start_time"] += r["timestamp"] is None
        when = ms_of(r["timestamp"], start_ms)
        if type_ == "float_series":
            self.series[path].append((step, when, value_key(number(float(r["float_value"])))))
        elif type_ == "string_series":
            self.series[path].append((step, when, r["string_value"] or ""))
        else:
            hist = r["histogram_value"] or {}
            values = [float(v) for v in hist.get("values") or []]
            edges = [float(e) for e in hist.get("edges") or []]
            if not values or len(edges) != len(values) + 1 or not all(map(math.isfinite, values + edges)) \
                    or not _total(values):
                self.approximations["comet_histogram_skipped"] += 1
                return
            self.approximations["comet_histogram_rebinned"] += 1
            self.series[path].append((step, when, canonical(histogram_metadata(hist)), _total(values)))

    def _files(self, run: ArchivedRun, selection: Selection, start_ms: int) -> None:
        cols = ["attribute_path", "attribute_type", "step", "step_exact", "file_value", "file_name"]
        for row, local, entry, size, name in selected_payloads(run, selection, cols):
            path, type_ = row["attribute_path"], row["attribute_type"]
            step = scaled_step(exact_step(row["step"], row["step_exact"]), self.decimals.get(path, 0))[0] \
                if type_ == "file_series" else None
            image = type_ == "file_series" and is_image(entry)
            if image and not decodable_image(local):
                self.approximations["comet_undecodable_image_as_asset"] += 1
                image = False
            (self.images if image else self.files)[name].append((step, size, file_sha256(local)))


def _total(counts: Any) -> float:
    """A histogram's count: the sum of its bins, rounded so Comet's re-binning compares with Neptune's bins."""
    return round(math.fsum(float(c) for c in counts), 6)


def _compare_all(check: RunCheck, what: str, want: dict[str, list], have: dict[str, list]) -> None:
    digest = hashlib.sha256()
    for name in sorted(set(want) | set(have)):
        w, h = want.get(name, []), have.get(name, [])
        check.count(what, len(w))
        digest.update(f"{name}\0{canonical([repr(x) for x in w])}\0".encode())
        if w == h:
            continue
        missing = [x for x in w if x not in h]
        extra = [x for x in h if x not in w]
        check.mismatch(name, f"{what}_differ", f"{what} {name!r}: {len(h)} entries in the archive, {len(w)} expected"
                       + (f"; missing e.g. {examples(short(repr(x)) for x in missing)}" if missing else "")
                       + (f"; unexpected e.g. {examples(short(repr(x)) for x in extra)}" if extra else ""),
                       name, expected=len(w), actual=len(h))
    check.digests[what] = digest.hexdigest()
