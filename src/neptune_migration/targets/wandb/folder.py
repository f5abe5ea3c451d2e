"""Write one archived run as a self-contained, sync-ready W&B offline run folder.

Why a hand-written `.wandb` file rather than `wandb.init(mode="offline")`: wandb-core overwrites the run
start time and `_runtime`, offline artifacts stay symlinked/staged outside the folder, and every `log()` call
costs 200-400 us. `wandb sync` replays a `.wandb` file as written: start time, per-row `_timestamp` and
`_runtime`, summary and the exit code all survive (see ../shared/notes/wandb.md).

Layout under the target root (the folder given to `--to wandb-offline DIR`):
    wandb/offline-run-<YYYYmmdd_HHMMSS>-<run id>/run-<run id>.wandb
                                                /files/media/table/...    string series (<= 10k rows)
                                                /artifacts/<name>/...     file payloads (copies)
Artifact manifests name payloads relative to the root, so `wandb sync` must run with the root as working
directory (the command we print does `cd` first); the folder can be moved to another machine as a whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import decimal_micros, decimal_steps
from neptune_migration.errors import ArchiveError, UnsafePathError
from neptune_migration.targets.base import LoadContext, LoadResult
from neptune_migration.targets.wandb.config import config_value
from neptune_migration.targets.wandb.history import History, build
from neptune_migration.targets.wandb.mapping_version import MAPPING_VERSION
from neptune_migration.targets.wandb.names import STEP_KEY, artifact_name, metric_keys, project_name, run_id, tags
from neptune_migration.targets.wandb.payloads import md5_b64, payload_entries, step_label
from neptune_migration.targets.wandb.readback import note_run_folder
from neptune_migration.targets.wandb.records import RecordWriter
from neptune_migration.vocabulary import FILE_LIKE_TYPES, RunRef

WANDB_VERSION = "0.31.0"
TABLE_ROWS_IN_HISTORY = 10_000  # W&B cuts a history table at 10k rows...
TABLE_ROWS_IN_ARTIFACT = 200_000  # ...and an artifact table at 200k.
_ART_TYPE = {
    "file": "neptune-file",
    "file_series": "neptune-file-series",
    "file_set": "neptune-file-set",
    "artifact": "neptune-artifact",
}


@dataclass
class RunSpec:
    """Where a run goes: resolved before writing so the caller can look it up or resume it."""

    entity: str | None
    project: str
    run_id: str
    # A run re-exported by `--refresh` gets a new id; the id of the run it replaces (see targets/wandb/generations.py).
    supersedes: str | None = None


@dataclass
class WrittenRun:
    spec: RunSpec
    folder: Path
    result: LoadResult
    artifacts: list[str] = field(default_factory=list)
    history_rows: int = 0


def folder_for(root: Path, spec: RunSpec, start: datetime, suffix: str = "") -> Path:
    # `wandb sync` skips folders named `run-*` unless asked (they are online runs): ours are `offline-run-*`.
    # A sync's folder (`suffix` `_sync001`, ...) sorts after the run's first folder: `wandb sync` replays them in
    # that order, each resuming the run.
    return root / "wandb" / f"offline-run-{start.strftime('%Y%m%d_%H%M%S')}{suffix}-{spec.run_id}"


def write_run(
    run: ArchivedRun,
    ctx: LoadContext,
    root: Path,
    spec: RunSpec,
    skip_history_rows: int = 0,
    only: set[str] | None = None,
    suffix: str = "",
) -> WrittenRun:
    """Write the run folder atomically (a temporary folder renamed into place) and return what it holds.

    `skip_history_rows` leaves out the first history rows: the ones a server already holds from an
    interrupted sync (wandb-core appends a resumed run's history after the server's line count).
    """
    atoms = run.atoms()
    result = LoadResult(target_id=_target_id(spec))
    start = _start_time(run, atoms)
    final = folder_for(root, spec, start, suffix)
    tmp = final.with_name(".tmp-" + final.name)
    for old in (tmp, final):
        if old.exists():
            shutil.rmtree(old)  # our own earlier, unfinished or superseded output: rewritten identically
    tmp.mkdir(parents=True)
    try:
        writer = RecordWriter(tmp / f"run-{spec.run_id}.wandb")
        try:
            artifacts, rows = _write(run, ctx, root, tmp, final, spec, atoms, start, writer, result,
                                     skip_history_rows, only)
        finally:
            writer.close()
        os.replace(tmp, final)
        note_run_folder(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WrittenRun(spec, final, result, artifacts, rows)


def _target_id(spec: RunSpec) -> str:
    return "/".join(p for p in (spec.entity, spec.project, spec.run_id) if p)


def _start_time(run: ArchivedRun, atoms: dict[str, Any]) -> datetime:
    created = atoms.get("sys/creation_time")
    if created is not None and isinstance(created.value, datetime):
        return created.value.astimezone(UTC)
    # No creation time: the earliest point is the best witness of when the run started.
    earliest = None
    for batch in run.batches(None, ["timestamp"]):
        v = pc.min(batch.column("timestamp")).as_py()
        if v is not None:
            earliest = v if earliest is None else min(earliest, v)
    return (earliest or datetime.fromtimestamp(0, UTC)).astimezone(UTC)


def _write(
    run: ArchivedRun,
    ctx: LoadContext,
    root: Path,
    tmp: Path,
    final: Path,
    spec: RunSpec,
    atoms: dict[str, Any],
    start: datetime,
    w: RecordWriter,
    result: LoadResult,
    skip_history_rows: int = 0,
    only: set[str] | None = None,
) -> tuple[list[str], int]:
    """`only`: a sync's folder holds the string series and files of these paths (the ones that changed)."""
    from wandb.proto import wandb_internal_pb2 as pb

    start_ms = round(start.timestamp() * 1000)
    hist = build(run, ctx.wants_attribute, start_ms)
    if hist.missing_timestamps:
        result.approx("timestamp_missing_used_start_time", hist.missing_timestamps)
    if hist.rebinned:
        result.approx("histogram_rebinned_to_512", hist.rebinned)
    if len(hist.paths) > 10_000:
        result.warnings.append(f"{len(hist.paths)} metrics: W&B recommends fewer than 10,000 per project")

    strings = _string_series_paths(run, ctx)
    file_rows = _file_rows(run, ctx)
    file_paths = sorted(file_rows)
    keys = metric_keys([*hist.paths, *strings, *file_paths])
    for path, key in keys.items():
        if key != path:
            result.renamed[path] = key

    header = pb.Record()
    header.header.version_info.producer = WANDB_VERSION
    header.header.version_info.min_consumer = "0.70.0"
    w.write(header)

    rec = pb.Record()
    r = rec.run
    r.run_id = spec.run_id
    if spec.entity:
        r.entity = spec.entity
    r.project = spec.project
    name, group = names_for(run, atoms)
    r.display_name = name
    if group:
        r.run_group = group[:128]
    desc = atoms.get("sys/description")
    if desc is not None and desc.value:
        r.notes = str(desc.value)
    neptune_tags = list(atoms["sys/tags"].value or []) if "sys/tags" in atoms else []
    clean_tags, changed = tags(neptune_tags)
    if changed:
        result.approx("tag_shortened_or_dropped", changed)
    r.tags.extend(clean_tags)
    r.start_time.FromMilliseconds(start_ms)
    r.host = "neptune-migration"
    if only is not None:
        # A sync's folder continues the run that the earlier folders hold: same id, history after theirs.
        r.resumed = True
        r.resume = True
    config = _config(run, atoms, hist, neptune_tags, result, spec.supersedes, ctx.migration)
    for k, v in config.items():
        item = r.config.update.add()
        item.key = k
        item.value_json = _json(v)
    w.write(rec)

    # wandb-core turns this into wandb-metadata.json: `startedAt` is where W&B shows the original start time
    # (the server's own `createdAt` is always the sync time and cannot be set by a client).
    env = pb.Record()
    env.environment.started_at.FromMilliseconds(start_ms)
    env.environment.program = "neptune-migration"
    env.environment.host = "neptune-migration"
    env.environment.writer_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "neptune-migration:" + run.ref.key))
    owner = atoms.get("sys/owner")
    if owner is not None and owner.value:
        env.environment.username = str(owner.value)
    w.write(env)

    # A provenance file. Also: wandb-core uploads the run's own files (config.yaml, wandb-summary.json,
    # wandb-metadata.json) at the end of a sync only if the run saved at least one file.
    provenance = tmp / "files" / "neptune_migration.json"
    provenance.parent.mkdir(parents=True, exist_ok=True)
    provenance.write_text(_json({"run_key": run.ref.key, "project_id": run.ref.project_id, "run_id": run.ref.run_id,
                                 "step_mode": hist.step_mode, "mapping_version": MAPPING_VERSION,
                                 "writer": "neptune-migration"}))
    f = pb.Record()
    item = f.files.files.add()
    item.path = provenance.name
    item.policy = pb.FilesItem.PolicyType.NOW
    w.write(f)

    if hist.step_mode == "ordinal":
        m = pb.Record()
        m.metric.name = STEP_KEY
        m.metric.options.defined = True
        w.write(m)
        for path in hist.paths:
            m = pb.Record()
            m.metric.name = keys[path]
            m.metric.step_metric = STEP_KEY
            m.metric.options.defined = True
            m.metric.options.step_sync = True
            w.write(m)

    summary: dict[str, Any] = {}
    rel_final = final.relative_to(root)
    artifacts: list[str] = []
    for path in strings:
        if only is not None and path not in only:
            continue
        points = _string_points(run, path, start_ms, result)
        art = _write_string_series(pb, w, tmp, rel_final, spec, keys[path], path, points, summary, result,
                                   ctx.on_points)
        del points
        if art:
            artifacts.append(art)
    for path in file_paths:
        if only is not None and path not in only:
            continue
        art = _write_files(pb, w, run, ctx, tmp, rel_final, spec, keys[path], path, file_rows[path], result)
        if art:
            artifacts.append(art)

    last_row = None
    last_runtime = 0.0
    points = reported = 0
    if skip_history_rows > hist.rows:
        raise ValueError(f"the server holds {skip_history_rows} history rows, the archive only {hist.rows}")
    for n_row, row in enumerate(hist.iter_rows()):
        if n_row < skip_history_rows:
            for m_idx, value in row.values.items():
                summary[keys[hist.paths[m_idx]]] = value
            points += len(row.values)
            last_row, last_runtime = row, (row.timestamp_ms - start_ms) / 1000.0
            continue
        h = pb.Record()
        hr = h.history
        hr.step.num = row.step
        for m_idx, value in row.values.items():
            key = keys[hist.paths[m_idx]]
            item = hr.item.add()
            item.nested_key.append(key)
            item.value_json = _json(value)
            summary[key] = value
        if hist.step_mode == "ordinal":
            item = hr.item.add()
            item.nested_key.append(STEP_KEY)
            item.value_json = _json(row.neptune_step)
        runtime = (row.timestamp_ms - start_ms) / 1000.0
        for k, v in (("_step", row.step), ("_timestamp", row.timestamp_ms / 1000.0), ("_runtime", runtime)):
            item = hr.item.add()
            item.nested_key.append(k)
            item.value_json = _json(v)
        w.write(h)
        points += len(row.values)
        last_row, last_runtime = row, runtime
        if points - reported >= 10_000:
            ctx.on_points(points - reported)
            reported = points
    ctx.on_points(points - reported)
    result.points += points

    if last_row is not None:
        summary["_step"] = last_row.step
        summary["_timestamp"] = last_row.timestamp_ms / 1000.0
        summary["_runtime"] = last_runtime
        if hist.step_mode == "ordinal":
            summary[STEP_KEY] = last_row.neptune_step
    # The archive's one end-time rule, shared with MLflow, so both targets show the same duration.
    runtime_s = runtime_seconds(start_ms, run.end_time_ms())
    summary["_wandb"] = {"runtime": runtime_s}
    s = pb.Record()
    for k, v in summary.items():
        item = s.summary.update.add()
        item.nested_key.append(k)
        item.value_json = _json(v)
    w.write(s)

    e = pb.Record()
    failed = atoms.get("sys/failed")
    e.exit.exit_code = 1 if failed is not None and failed.value else 0
    e.exit.runtime = runtime_s
    w.write(e)
    return artifacts, hist.rows


def names_for(run: ArchivedRun, atoms: dict[str, Any]) -> tuple[str, str]:
    """(run name, group). Neptune 3.x runs are keyed by `sys/custom_run_id` and `sys/name` is their
    experiment: name = run id, group = experiment. In 2.x `sys/name` is only a display name: it becomes the
    run name and there is no group."""
    custom = atoms.get("sys/custom_run_id")
    sys_name = atoms.get("sys/name")
    sys_name_value = str(sys_name.value) if sys_name is not None and sys_name.value else ""
    if custom is not None and custom.value == run.ref.run_id:
        return run.ref.run_id, sys_name_value
    return sys_name_value or run.ref.run_id, ""


def runtime_seconds(start_ms: int, end_ms: int | None) -> int:
    """The run's runtime as W&B holds it (whole seconds in the exit record and `_wandb.runtime`)."""
    return 0 if end_ms is None else max(0, round((end_ms - start_ms) / 1000))


# -- config ----------------------------------------------------------------------------------------------


def _config(
    run: ArchivedRun, atoms: dict[str, Any], hist: History, neptune_tags: list[str], result: LoadResult,
    supersedes: str | None = None, migration: str | None = None,
) -> dict[str, Any]:
    """Atoms nested by `/` with native JSON types; a leaf that is also a branch keeps its value under `_value`."""
    root: dict[str, Any] = {}
    nonfinite = 0
    for path in sorted(atoms):
        atom = atoms[path]
        value = config_value(atom.type, atom.value)
        if isinstance(atom.value, float) and not math.isfinite(atom.value):
            nonfinite += 1
        parts = path.split("/")
        node = root
        for depth, seg in enumerate(parts[:-1]):
            child = node.get(seg)
            if child is not None and not isinstance(child, dict):
                # `a` is a value and `a/b` exists too: both survive, `a` moves to `a/_value`.
                child = {"_value": child}
                result.renamed["/".join(parts[: depth + 1])] = "/".join(parts[: depth + 1]) + "/_value"
            node[seg] = child = child if child is not None else {}
            node = child
        leaf = parts[-1]
        if isinstance(node.get(leaf), dict):
            node[leaf]["_value"] = value
            result.renamed[path] = path + "/_value"
        else:
            node[leaf] = value
    if nonfinite:
        result.approx("config_nonfinite_float_as_string", nonfinite)
    fork: dict[str, Any] = {}
    parent = fork_parent(run)
    if parent is not None:
        # W&B's `fork_from` is a preview feature absent on self-managed servers: the link lives in the config.
        fork["parent"] = parent.run_id
        fork["parent_wandb_run_id"] = run_id(parent.key)
        if "sys/forking/step" in atoms:
            fork["step"] = atoms["sys/forking/step"].value
    root["neptune_migration"] = {
        "run_key": run.ref.key,
        "project_id": run.ref.project_id,
        "run_id": run.ref.run_id,
        "step_mode": hist.step_mode,
        "mapping_version": MAPPING_VERSION,
        "tags": sorted(neptune_tags),
        **({"fork": fork} if fork else {}),
        **({"supersedes": supersedes} if supersedes else {}),
        # The ledger that wrote it: copies another migration made of the same run are told apart (placement.py).
        **({"migration": migration} if migration else {}),
    }
    return root


# -- string series -----------------------------------------------------------------------------------------


def _string_series_paths(run: ArchivedRun, ctx: LoadContext) -> list[str]:
    seen: set[str] = set()
    for batch in run.batches(["string_series"], ["attribute_path", "attribute_type"]):
        seen.update(pc.unique(batch.column("attribute_path")).to_pylist())
    return sorted(p for p in seen if p is not None and ctx.wants_attribute(p, "string_series"))


def _string_points(run: ArchivedRun, path: str, default_ts: int, result: LoadResult) -> pa.Table:
    """One string series as a compact Arrow table (step, ts, value) sorted by step, then timestamp.

    One attribute at a time, in Arrow rather than Python objects: a million log lines stay a few tens of MB.
    """
    parts = []
    cols = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "string_value"]
    for batch in run.batches(["string_series"], cols):
        batch = batch.filter(pc.equal(batch.column("attribute_path"), path))
        if batch.num_rows == 0:
            continue
        stepf = decimal_steps(batch.column("step"))
        exact = batch.column("step_exact")
        if exact.null_count < len(exact):
            ex = exact.to_numpy(zero_copy_only=False)
            stepf = np.where(np.asarray(exact.is_valid()) & ~np.isnan(ex), ex, stepf)
        ts = batch.column("timestamp")
        if ts.null_count:
            result.approx("timestamp_missing_used_start_time", ts.null_count)
        parts.append(pa.table({
            "step": pa.array(stepf, pa.float64()),
            "ts": ts.cast(pa.int64()).fill_null(default_ts),
            "value": batch.column("string_value"),
        }))
    if not parts:
        return pa.table({"step": pa.array([], pa.float64()), "ts": pa.array([], pa.int64()),
                         "value": pa.array([], pa.string())})
    table = pa.concat_tables(parts)
    # The value breaks ties so equal (step, timestamp) rows come out the same on every attempt.
    order = pc.sort_indices(table, [("step", "ascending"), ("ts", "ascending"), ("value", "ascending")])
    return table.take(order)


def _write_string_series(
    pb: Any,
    w: RecordWriter,
    tmp: Path,
    rel_final: Path,
    spec: RunSpec,
    key: str,
    path: str,
    points: pa.Table,
    summary: dict[str, Any],
    result: LoadResult,
    ctx_points: Any,
) -> str | None:
    """<= 10k rows: a table file in the run's files, shown from the summary; beyond: an artifact of tables."""
    total = points.num_rows
    result.points += total
    ctx_points(total)
    columns = ["step", "timestamp", "value"]

    def rows(lo: int, n: int) -> list[list[Any]]:
        part = points.slice(lo, n)
        return [[s, t / 1000.0, v] for s, t, v in zip(
            part.column("step").to_pylist(), part.column("ts").to_pylist(), part.column("value").to_pylist(),
            strict=True,
        )]

    if total <= TABLE_ROWS_IN_HISTORY:
        data = _json({"columns": columns, "data": rows(0, total)}).encode("utf-8")
        sha = hashlib.sha256(data).hexdigest()
        rel = f"media/table/{key}_{sha[:20]}.table.json"
        target = tmp / "files" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        f = pb.Record()
        item = f.files.files.add()
        item.path = rel
        item.policy = pb.FilesItem.PolicyType.NOW
        w.write(f)
        summary[key] = {
            "_type": "table-file",
            "path": rel,
            "sha256": sha,
            "size": len(data),
            "ncols": len(columns),
            "nrows": total,
        }
        return None
    name = artifact_name(spec.run_id, key)
    entries = []
    for n, lo in enumerate(range(0, total, TABLE_ROWS_IN_ARTIFACT)):
        data = _json({"columns": columns, "data": rows(lo, TABLE_ROWS_IN_ARTIFACT)}).encode("utf-8")
        entry = f"part_{n:05d}.table.json"
        target = tmp / "artifacts" / name / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entries.append((entry, target, rel_final / "artifacts" / name / entry))
    _artifact_record(pb, w, spec, name, "neptune-string-series", path, "string_series", entries)
    summary[key] = {"_type": "neptune-string-series", "artifact": name, "nrows": total}
    return name


# -- files -------------------------------------------------------------------------------------------------


@dataclass
class _FileRow:
    type: str
    rel: str | None  # `file_value.path`
    step_label: str | None  # file series: the per-step folder name
    file_name: str | None


def _file_rows(run: ArchivedRun, ctx: LoadContext) -> dict[str, list[_FileRow]]:
    """Every wanted file row of the run grouped by attribute path, in one pass over the archive."""
    out: dict[str, list[_FileRow]] = {}
    cols = ["attribute_path", "attribute_type", "step", "step_exact", "file_value", "file_name"]
    for batch in run.batches(FILE_LIKE_TYPES, cols):
        micros = decimal_micros(batch.column("step"))
        steps_valid = batch.column("step").is_valid().to_pylist()
        exact = batch.column("step_exact").to_pylist()
        fvals = batch.column("file_value").to_pylist()
        fnames = batch.column("file_name").to_pylist()
        for i, (path, type_) in enumerate(
            zip(batch.column("attribute_path").to_pylist(), batch.column("attribute_type").to_pylist(), strict=True)
        ):
            if not ctx.wants_attribute(path, type_):
                continue
            label = None
            if type_ == "file_series" and steps_valid[i]:
                label = step_label(Decimal(int(micros[i])).scaleb(-6), exact[i])
            out.setdefault(path, []).append(_FileRow(type_, (fvals[i] or {}).get("path"), label, fnames[i]))
    return out


def _write_files(
    pb: Any,
    w: RecordWriter,
    run: ArchivedRun,
    ctx: LoadContext,
    tmp: Path,
    rel_final: Path,
    spec: RunSpec,
    key: str,
    path: str,
    rows: list[_FileRow],
    result: LoadResult,
) -> str | None:
    """One artifact per run and attribute: payloads copied byte for byte, file series under `step_<n>/`."""
    name = artifact_name(spec.run_id, key)
    entries: list[tuple[str, Path, Path]] = []
    used: set[str] = set()
    type_seen = "file"
    for row in rows:
        type_seen = row.type
        if not row.rel:
            result.warnings.append(f"{path}: a file row without a path was skipped")
            result.approx("file_row_without_path")
            continue
        try:
            source = run.file_path(row.rel)
        except (ArchiveError, UnsafePathError) as exc:
            result.warnings.append(f"{path}: {exc}")
            result.approx("file_missing")
            continue
        if not source.exists():
            result.warnings.append(f"{path}: payload {row.rel} is not in the files root")
            result.approx("file_missing")
            continue
        prefix = f"step_{row.step_label}/" if row.step_label is not None else ""
        for src, entry_name in payload_entries(source, row.file_name):
            size = src.stat().st_size
            if not ctx.wants_file(path, entry_name, size):
                continue
            entry = prefix + entry_name
            n = 2
            while entry in used:  # two payloads under one name (a repeated row): both survive
                entry = f"{prefix}{entry_name}~{n}"
                n += 1
            used.add(entry)
            dest = tmp / "artifacts" / name / entry
            entries.append((entry, src, rel_final / "artifacts" / name / entry))
            _copy(src, dest)
    if not entries:
        return None
    stored = []
    for entry, _src, rel in entries:
        stored.append((entry, tmp / "artifacts" / name / entry, rel))
    total = _artifact_record(pb, w, spec, name, _ART_TYPE.get(type_seen, "neptune-file"), path, type_seen, stored)
    result.files += len(stored)
    result.bytes += total
    ctx.on_bytes(total)
    return name


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    try:
        os.link(src, dest)  # same bytes, no extra disk, and not a symlink into the archive
    except OSError:
        shutil.copyfile(src, dest)


def _artifact_record(
    pb: Any,
    w: RecordWriter,
    spec: RunSpec,
    name: str,
    art_type: str,
    path: str,
    neptune_type: str,
    entries: list[tuple[str, Path, Path]],
) -> int:
    rec = pb.Record()
    a = rec.artifact
    a.run_id = spec.run_id
    a.project = spec.project
    if spec.entity:
        a.entity = spec.entity
    a.type = art_type
    a.name = name
    a.metadata = _json({"neptune_attribute": path, "neptune_type": neptune_type})
    a.aliases.append("latest")
    a.finalize = True
    a.digest_algorithm = "MANIFEST_MD5"
    seed = hashlib.sha512(f"{spec.run_id}\x00{name}".encode()).hexdigest()
    a.client_id = seed
    a.sequence_client_id = hashlib.sha512(f"seq\x00{spec.run_id}\x00{name}".encode()).hexdigest()
    m = a.manifest
    m.version = 1
    m.storage_policy = "wandb-storage-policy-v1"
    cfg = m.storage_policy_config.add()
    cfg.key = "storageLayout"
    cfg.value_json = '"V2"'
    digests = {}
    total = 0
    for entry, local, rel in sorted(entries):
        e = m.contents.add()
        e.path = entry
        e.digest = md5_b64(local)
        e.size = local.stat().st_size
        e.local_path = rel.as_posix()
        digests[entry] = e.digest
        total += e.size
    manifest_md5 = hashlib.md5(b"wandb-artifact-manifest-v1\n", usedforsecurity=False)
    for entry in sorted(digests):
        manifest_md5.update(f"{entry}:{digests[entry]}\n".encode())
    a.digest = manifest_md5.hexdigest()
    w.write(rec)
    return total


_INF = float("inf")


def _json(value: Any) -> str:
    """JSON as wandb writes it: NaN and +-Infinity as bare words, floats in shortest round-trip form."""
    if type(value) is float:  # the hot path: one call per history value
        if value != value:
            return "NaN"
        if value == _INF:
            return "Infinity"
        if value == -_INF:
            return "-Infinity"
        return repr(value)
    if type(value) is int:
        return str(value)
    if isinstance(value, np.floating):
        value = float(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fork_parent(run: ArchivedRun) -> RunRef | None:
    """The run this one was forked from (Neptune 3.x `sys/forking/parent`), to load parents first."""
    parent = run.atom_value("sys/forking/parent")
    return RunRef(run.ref.project_id, str(parent)) if parent else None


def spec_for(
    run: ArchivedRun, entity: str | None, project: str | None, prefix: str, generation: str | None = None
) -> RunSpec:
    return RunSpec(entity, project or project_name(run.ref.project_id, prefix), run_id(run.ref.key, generation))
