"""The Comet offline target: one comet_ml offline experiment archive per Neptune run, `<dir>/<offline id>.zip`.

An archive is written whole under a temporary name in a staging folder and renamed into place once complete, so a
run's archive is complete or absent: an attempt cut short (SIGKILL) leaves only staging files, which the next attempt
removes. The archive's name comes from the run's key, so a run never has two archives; a rerun of a complete load
writes nothing (the ledger holds the run complete).

The archive is written in comet_ml's offline format directly rather than through `OfflineExperiment`: that class
stamps every message and the start and stop times with the clock, and Neptune's own times are what must arrive
(docs/comet.md measures both ways).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any, TextIO

from neptune_migration.archive import ArchivedRun
from neptune_migration.errors import TargetError
from neptune_migration.targets.base import LoadContext, LoadResult
from neptune_migration.targets.comet.mapping import (
    EXPERIMENT_JSON,
    FAILED_MESSAGE,
    MAPPING_KEY,
    MESSAGES_JSON,
    RUN_KEY,
    STEP_SCALES,
    archive_name,
    decodable_image,
    file_id,
    histogram_metadata,
    number,
    offline_id,
    param_value,
    project_name,
    run_tags,
)
from neptune_migration.targets.comet.mapping_version import MAPPING_VERSION
from neptune_migration.targets.tracker_rules import (
    SERIES_WITH_STEPS,
    dropped_tags,
    exact_step,
    is_image,
    ms_of,
    payload_entries,
    payload_name,
    run_name,
    scaled_step,
    step_decimals,
)
from neptune_migration.vocabulary import FILE_LIKE_TYPES, RunRef

log = logging.getLogger("neptune_migration")
STAGING = ".tmp-"
_SERIES_COLUMNS = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value",
                   "string_value", "histogram_value"]
_FILE_COLUMNS = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "file_value", "file_name"]


class CometOfflineTarget:
    name = "comet-offline"

    def __init__(self, folder: str | Path, workspace: str | None = None, project: str | None = None) -> None:
        self.path = Path(folder).expanduser().resolve()
        self.workspace = workspace
        self.project = project
        self._lock = threading.Lock()

    @property
    def canonical(self) -> str:
        return f"comet-offline:{self.path}?workspace={self.workspace or ''}&project={self.project or ''}"

    def check(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TargetError(f"cannot create the Comet offline folder {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.W_OK):
            raise TargetError(f"the Comet offline folder {self.path} is not writable")

    def close(self) -> None:
        pass

    def archive_path(self, ref: RunRef) -> Path:
        return self.path / archive_name(ref.key)

    def project_of(self, ref: RunRef) -> str:
        return project_name(ref.project_id, self.project)

    def discard(self, ref: RunRef) -> int:
        self._clear_staging(ref)
        archive = self.archive_path(ref)
        if archive.exists():
            archive.unlink()
            return 1
        return 0

    def _clear_staging(self, ref: RunRef) -> None:
        for left in self.path.glob(f"{STAGING}{offline_id(ref.key)}*"):
            shutil.rmtree(left) if left.is_dir() else left.unlink(missing_ok=True)

    def load_run(self, run: ArchivedRun, ctx: LoadContext) -> LoadResult:
        experiment = offline_id(run.ref.key)
        result = LoadResult(target_id=experiment)
        final = self.archive_path(run.ref)
        # The stage calls this only for a run with work left (a first load, a resume, a wider selection, a refresh):
        # the archive is written whole again and replaces any earlier one in a single rename.
        self._clear_staging(run.ref)
        staging = self.path / f"{STAGING}{experiment}"
        staging.mkdir(parents=True)
        _ArchiveWriter(self, run, ctx, result, staging).write()
        partial = self.path / f"{STAGING}{experiment}.zip"
        _zip(staging, partial)
        os.replace(partial, final)
        shutil.rmtree(staging)
        return result


class _ArchiveWriter:
    """One run's staging folder: messages.json, experiment.json and the uploaded files, as comet_ml lays them out."""

    def __init__(self, target: CometOfflineTarget, run: ArchivedRun, ctx: LoadContext, result: LoadResult,
                 staging: Path) -> None:
        self.target, self.run, self.ctx, self.result, self.staging = target, run, ctx, result, staging
        self.experiment = offline_id(run.ref.key)
        self.start_ms = run.start_time_ms() or 0
        self.message_id = 0
        self.out: TextIO | None = None
        self.links: dict[str, Path] = {}  # zip member -> file of the Neptune archive

    def write(self) -> None:
        with (self.staging / MESSAGES_JSON).open("w", encoding="utf-8") as out:
            self.out = out
            self._identity()
            self._params()
            decimals = self._scales()
            self._series(decimals)
            self._files(decimals)
            self._other(STEP_SCALES, json.dumps({p: d for p, d in sorted(decimals.items()) if d}))
        (self.staging / "links.json").write_text(json.dumps({k: str(v) for k, v in self.links.items()}))
        self._experiment_json()
        if scaled := sum(1 for d in decimals.values() if d):
            self.result.approx("comet_steps_scaled", scaled)

    # -- messages -------------------------------------------------------------------------------------------
    def _emit(self, type_: str, payload: dict[str, Any]) -> None:
        self.message_id += 1
        payload["message_id"] = self.message_id
        assert self.out is not None
        self.out.write(json.dumps({"payload": payload, "type": type_}, ensure_ascii=False, allow_nan=False,
                                  separators=(",", ":")) + "\n")

    def _other(self, key: str, value: Any) -> None:
        self._emit("log_other", {"key": key, "value": value})

    def _upload(self, upload_type: str, member: str, when: int, metadata: dict[str, Any],
                additional: dict[str, Any]) -> None:
        self._emit("file_upload", {"additional_params": additional, "clean": True, "file_path": member,
                                   "local_timestamp": when, "metadata": metadata, "upload_type": upload_type})

    def _member(self) -> str:
        return f"file-{self.message_id + 1}"

    # -- run metadata and atoms -----------------------------------------------------------------------------
    def _identity(self) -> None:
        ref = self.run.ref
        self._other("offline_experiment", True)
        self._other("Name", run_name(self.run))
        self._other(RUN_KEY, ref.key)
        self._other(MAPPING_KEY, MAPPING_VERSION)
        if dropped := dropped_tags(self.run):
            self.result.approx("comet_empty_tag_dropped", dropped)
        if self.run.atom_value("sys/failed"):
            self.result.approx("comet_failed_as_error_status")

    def _params(self) -> None:
        for path, atom in sorted(self.run.atoms().items()):
            system = path.startswith("sys/")
            if not system and not self.ctx.wants_attribute(path, atom.type):
                continue
            value, kind = param_value(atom.type, atom.value)
            if kind:
                self.result.approx(kind)
            if system:  # Neptune's own fields are Comet's "other" values, beside the run's name
                self._other(path, value)
            else:
                self._emit("parameter_msg", {"local_timestamp": self.start_ms, "param": {
                    "paramName": path, "paramValue": value, "source": "manual", "step": None}})

    # -- series ---------------------------------------------------------------------------------------------
    def _scales(self) -> dict[str, int]:
        steps: dict[str, list[Decimal]] = defaultdict(list)
        for batch in self.run.batches(SERIES_WITH_STEPS, ["attribute_path", "attribute_type", "step", "step_exact"]):
            d = batch.to_pydict()
            for path, type_, step, exact in zip(d["attribute_path"], d["attribute_type"], d["step"], d["step_exact"],
                                                strict=True):
                if self.ctx.wants_attribute(path, type_):
                    steps[path].append(exact_step(step, exact))
        return {path: step_decimals(s) for path, s in steps.items()}

    def _series(self, decimals: dict[str, int]) -> None:
        for batch in self.run.batches(["float_series", "string_series", "histogram_series"], _SERIES_COLUMNS):
            if self.ctx.stop_requested():
                self.ctx.save_checkpoint({"rewrite": True})  # the next attempt writes the archive whole again
            points = 0
            for row in _rows(batch.to_pydict()):
                if not self.ctx.wants_attribute(row["attribute_path"], row["attribute_type"]):
                    continue
                points += self._point(row, decimals[row["attribute_path"]])
            self.result.points += points
            self.ctx.on_points(points)

    def _point(self, row: dict[str, Any], decimals: int) -> int:
        path, type_ = row["attribute_path"], row["attribute_type"]
        step, rounded = scaled_step(exact_step(row["step"], row["step_exact"]), decimals)
        if rounded:
            self.result.approx("comet_step_rounded")
        if row["timestamp"] is None:
            self.result.approx("comet_timestamp_missing_used_start_time")
        when = ms_of(row["timestamp"], self.start_ms)
        if type_ == "float_series":
            self._emit("metric_msg", {"local_timestamp": when, "metric": {
                "epoch": None, "metricName": path, "metricValue": number(float(row["float_value"])), "step": step}})
        elif type_ == "string_series":
            member = self._member()
            (self.staging / member).write_text(row["string_value"] or "", encoding="utf-8")
            self._upload("text-sample", member, when, {"neptune_path": path}, {
                "assetId": file_id(self.experiment, self.message_id + 1), "context": None, "epoch": None,
                "fileName": "auto-generated-in-the-backend", "overwrite": False, "runId": None, "step": step,
                "type": "text-sample"})
        else:
            return self._histogram(path, step, when, row["histogram_value"])
        return 1

    def _histogram(self, path: str, step: int, when: int, hist: dict[str, Any] | None) -> int:
        from comet_ml.data_structure import Histogram

        values = [float(v) for v in (hist or {}).get("values") or []]
        edges = [float(e) for e in (hist or {}).get("edges") or []]
        if not values or len(edges) != len(values) + 1 or not all(map(math.isfinite, values + edges)):
            self.result.approx("comet_histogram_skipped")
            return 0
        histogram = Histogram()
        histogram.add([(a + b) / 2 for a, b in pairwise(edges)], counts=values)
        if histogram.is_empty():
            self.result.approx("comet_histogram_skipped")
            return 0
        self.result.approx("comet_histogram_rebinned")
        member = self._member()
        (self.staging / member).write_text(json.dumps(histogram.to_json()), encoding="utf-8")
        assert hist is not None
        self._upload("histogram3d", member, when, histogram_metadata(hist), {
            "assetId": file_id(self.experiment, self.message_id + 1), "context": None, "epoch": None,
            "fileName": path, "overwrite": False, "runId": None, "step": step, "type": "histogram3d"})
        return 1

    # -- files ----------------------------------------------------------------------------------------------
    def _files(self, decimals: dict[str, int]) -> None:
        for batch in self.run.batches(FILE_LIKE_TYPES, _FILE_COLUMNS):
            for row in batch.to_pylist():
                path, type_ = row["attribute_path"], row["attribute_type"]
                if not self.ctx.wants_attribute(path, type_):
                    continue
                if not (row["file_value"] or {}).get("path"):
                    self.result.approx("file_row_without_path")
                    continue
                source = self.run.file_path(row["file_value"]["path"])
                if not source.exists():
                    self.result.approx("file_missing")
                    continue
                for local, entry in payload_entries(source, row["file_name"]):
                    size = local.stat().st_size
                    if self.ctx.wants_file(path, entry, size):
                        self._file(row, local, entry, decimals.get(path, 0))
                        self.result.files += 1
                        self.result.bytes += size
                        self.ctx.on_bytes(size)

    def _file(self, row: dict[str, Any], local: Path, entry: str, decimals: int) -> None:
        path, type_ = row["attribute_path"], row["attribute_type"]
        name = payload_name(path, type_, row["step"], row["step_exact"], entry)
        step = scaled_step(exact_step(row["step"], row["step_exact"]), decimals)[0] if type_ == "file_series" else None
        when = ms_of(row["timestamp"], self.start_ms)
        member = self._member()
        self.links[member] = local
        extension = entry.rsplit(".", 1)[-1] if "." in entry else ""
        if type_ == "file_series" and is_image(entry):
            if decodable_image(local):
                self._upload("visualization", member, when, {"neptune_path": path}, {
                    "context": None, "extension": extension, "figCounter": 0, "figName": name,
                    "imageId": file_id(self.experiment, self.message_id + 1), "overwrite": False, "runId": None,
                    "step": step})
                return
            self.result.approx("comet_undecodable_image_as_asset")
        self._upload("asset", member, when, {"neptune_path": path}, {
            "assetId": file_id(self.experiment, self.message_id + 1), "context": None, "extension": extension,
            "fileName": name, "overwrite": False, "runId": None, "step": step})

    def _experiment_json(self) -> None:
        failed = bool(self.run.atom_value("sys/failed"))
        end = self.run.end_time_ms()
        meta = {"offline_id": self.experiment, "project_name": self.target.project_of(self.run.ref),
                "start_time": self.start_ms, "stop_time": end if end is not None else self.start_ms,
                "tags": run_tags(self.run), "workspace": self.target.workspace, "resume_strategy": "create",
                "customer_error_reported": failed, "customer_error_message": FAILED_MESSAGE if failed else None,
                "user_provided_experiment_key": False, "comet_start_sourced": False}
        (self.staging / EXPERIMENT_JSON).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def _rows(columns: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    names = list(columns)
    for values in zip(*columns.values(), strict=True):
        yield dict(zip(names, values, strict=True))


def _zip(staging: Path, partial: Path) -> None:
    """The staging folder as comet_ml's archive: experiment.json, messages.json and one member per file, the
    Neptune archive's own files read in place rather than copied into the staging folder first."""
    links = {k: Path(v) for k, v in json.loads((staging / "links.json").read_text()).items()}
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        zf.write(staging / EXPERIMENT_JSON, EXPERIMENT_JSON)
        zf.write(staging / MESSAGES_JSON, MESSAGES_JSON)
        for member in sorted(p.name for p in staging.iterdir() if p.name.startswith("file-")):
            zf.write(staging / member, member)
        for member, source in links.items():
            zf.write(source, member)
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
