"""Compare a run loaded into W&B with the archive, through the W&B target's own read-back (`read_back(run)`).

The read-back (targets/readback.py, offline from the run folder or online through `wandb.Api`) gives one
`WandbRunData` shape; the expected side is computed here from the archive and the pure naming rules in
names.py (docs/wandb.md is the mapping). Float points are compared bit for bit, step for step and
timestamp for timestamp; histograms by step, timestamp and bins (a histogram of more than 512 bins is merged by
W&B's limit, so only its total count is compared: counted as `histogram_rebinned_to_512`); string series by
count and digest; files by count, size and sha256 per artifact entry; config by value per atom; run metadata
(name, group, notes, tags, start time, state).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import defaultdict
from datetime import UTC
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import END_TIME_RULE, ms_text
from neptune_migration.checks import ELSEWHERE, RunCheck, canonical, examples, short
from neptune_migration.hashing import file_sha256
from neptune_migration.selection import Selection
from neptune_migration.targets.wandb.config import config_value
from neptune_migration.targets.wandb.folder import names_for, runtime_seconds
from neptune_migration.targets.wandb.mapping_version import MAPPING_VERSION
from neptune_migration.targets.wandb.names import artifact_name, metric_keys, tags
from neptune_migration.targets.wandb.payloads import md5_b64, payload_entries, step_label
from neptune_migration.targets.wandb.placement import where
from neptune_migration.vocabulary import FILE_LIKE_TYPES

MAX_BINS = 512


def _bits(x: Any) -> Any:
    if isinstance(x, bool) or x is None or isinstance(x, str | dict | list):
        return x
    f = float(x)
    return b"nan" if math.isnan(f) else struct.pack("<d", f)


class WandbVerifier:
    def __init__(self, target: Any) -> None:
        self.target = target
        # The validating ledger's identity (set by the stage): copies other ledgers made are only mentioned.
        self.migration: str | None = None

    def close(self) -> None:
        pass

    def discard(self, run: ArchivedRun) -> int:
        # W&B blocks a deleted run id for about a week: a run with wrong data is resumed and rewritten, never deleted.
        return 0

    def _elsewhere(self, run: ArchivedRun, check: RunCheck) -> str:
        """Copies of the run (its W&B id) in other projects of the entity or the --wandb-dir; returns where this
        placement puts it."""
        here = self.target.placement(run)
        for copy in self.target.copies(run.ref):
            if copy.where == here.where:
                continue
            if not copy.ours(self.migration):
                check.warnings.append(f"another migration (another ledger) also holds this run in {copy.where} "
                                      f"(W&B run {copy.target_id})")
            else:
                check.mismatch("run", ELSEWHERE, f"a copy (W&B run {copy.target_id}) is in {copy.where}, outside "
                               f"this placement ({here.where}, {here.options}): load with the options that placed "
                               "it, or move it with W&B's 'Move to project' (docs/wandb.md)",
                               expected=here.where, actual=copy.where)
        return here.where

    def verify(self, run: ArchivedRun, selection: Selection) -> RunCheck:
        check = RunCheck(run.ref)
        here = self._elsewhere(run, check)
        try:
            data = self.target.read_back(run)
        except FileNotFoundError as exc:
            check.mismatch("run", "run_missing", f"the run is not in W&B at {here}: {exc}")
            return check
        except Exception as exc:
            if "could not find run" not in str(exc).lower():
                raise
            check.mismatch("run", "run_missing", f"the run is not in W&B at {here} ({self.target.run_id_for(run)})")
            return check
        found = where(getattr(data, "entity", None) if self.target.entity else None, data.project)
        if found != here:
            # Offline, a run id has one folder per --wandb-dir, whichever project it names.
            check.mismatch("run", "run_missing", f"the run is not in W&B at {here} (its folder is for {found})")
            return check
        check.target_id = getattr(data, "run_id", None)
        atoms = run.atoms()
        wants = selection.wants_attribute
        series, strings, files = _expected(run, wants, _start_ms(run, data))
        keys = metric_keys([*series, *strings, *files])
        self._metadata(run, atoms, data, check)
        self._config(atoms, data, check)
        loaded_with = (data.config.get("neptune_migration") or {}).get("mapping_version", 1)
        check.count("metadata")
        if loaded_with != MAPPING_VERSION:
            check.mismatch("run", "mapping_version", f"the run was loaded with mapping version {loaded_with}, this "
                           f"version writes {MAPPING_VERSION}: `load --refresh` reloads it",
                           expected=MAPPING_VERSION, actual=loaded_with)
        digest = hashlib.sha256()
        for path, (type_, points) in sorted(series.items()):
            key = keys[path]
            got = sorted(data.points(key), key=lambda p: (float(p[0]), p[2] or 0))
            check.count("metric_series")
            check.count("points", len(points))
            digest.update(f"{key}\0{len(points)}\0".encode())
            want = [(float(s), v, t) for s, v, t in points]
            have = [(float(s), v, t) for s, v, t in got]
            if type_ == "float_series":
                _compare(check, path, key, [(s, _bits(v), t) for s, v, t in want],
                         [(s, _bits(v), t) for s, v, t in have], [(s, v, t) for s, v, t in want],
                         [(s, v, t) for s, v, t in have])
            else:
                rebinned = {st for st, v, _t in want if len(v.get("values") or []) > MAX_BINS}
                check.approx("histogram_rebinned_to_512", sum(1 for st, _v, _t in want if st in rebinned))
                exp_cmp = [(st, _hist_key(st, v, rebinned), t) for st, v, t in want]
                have_cmp = [(st, _hist_key(st, h, rebinned), t) for st, h, t in have]
                _compare(check, path, key, exp_cmp, have_cmp, exp_cmp, have_cmp)
        check.digests["metrics"] = digest.hexdigest()
        sdigest = hashlib.sha256()
        for path, points in sorted(strings.items()):
            key = keys[path]
            got = data.string_series.get(key)
            check.count("series_artifacts")
            check.count("series_points", len(points))
            want = sorted((float(s), t, v) for s, t, v in points)
            sdigest.update(canonical(want).encode())
            if got is None:
                check.mismatch(path, "series_missing", f"string series {key!r} is missing in W&B", key,
                               expected=len(want), actual=0)
                continue
            have = sorted((float(s), t, v) for s, t, v in got)
            if len(have) != len(want):
                check.mismatch(path, "series_count", f"string series {key!r} holds {len(have)} points in W&B, "
                               f"{len(want)} expected", key, expected=len(want), actual=len(have))
            elif have != want:
                first = next(w for w, h in zip(want, have, strict=True) if w != h)
                check.mismatch(path, "series_content",
                               f"string series {key!r}: points differ from step {step_text(first[0])}", key)
        check.digests["series"] = sdigest.hexdigest()
        self._files(run, files, keys, data, check)
        return check

    def _metadata(self, run: ArchivedRun, atoms: dict[str, Any], data: Any, check: RunCheck) -> None:
        def same(attribute: str, what: str, expected: Any, actual: Any, kind: str) -> None:
            check.count("metadata")
            if expected != actual:
                check.mismatch(attribute, kind, f"{what} is {actual!r} in W&B, {expected!r} expected",
                               expected=expected, actual=actual)

        # The loader's own naming rule (3.x: run id + experiment as group; 2.x: display name, no group).
        name, group = names_for(run, atoms)
        same("sys/custom_run_id", "run name", name, data.name, "name")
        same("sys/name", "group", group[:128], data.group, "group")
        desc = atoms["sys/description"].value if "sys/description" in atoms else None
        same("sys/description", "notes", str(desc) if desc else "", data.notes, "description")
        neptune_tags = list(atoms["sys/tags"].value or []) if "sys/tags" in atoms else []
        clean, changed = tags(neptune_tags)
        check.approx("tag_shortened_or_dropped", changed)
        same("sys/tags", "tags", sorted(clean), sorted(data.tags), "tags")
        created = atoms.get("sys/creation_time")
        if created is not None and created.value is not None:
            same("sys/creation_time", "start time (ms)", round(created.value.timestamp() * 1000), data.start_time_ms,
                 "start_time")
        failed = bool(atoms["sys/failed"].value) if "sys/failed" in atoms else False
        same("sys/failed", "state", "failed" if failed else "finished", data.state, "status")
        # W&B keeps the end as a runtime in whole seconds from the start: the loader's rule, shared with MLflow.
        start_ms = _start_ms(run, data)
        end_ms = run.end_time_ms()
        want_runtime = runtime_seconds(start_ms, end_ms)
        check.count("metadata")
        if data.runtime_s is None or data.runtime_s != want_runtime:
            held = "no runtime" if data.runtime_s is None else f"a runtime of {data.runtime_s!r} s"
            check.mismatch("run", "end_time", f"W&B holds {held}, {want_runtime} s expected: the run ends at "
                           f"{ms_text(end_ms if end_ms is not None else start_ms)}, {END_TIME_RULE} "
                           f"(start {ms_text(start_ms)})", expected=want_runtime, actual=data.runtime_s)

    def _config(self, atoms: dict[str, Any], data: Any, check: RunCheck) -> None:
        digest = hashlib.sha256()
        for path, atom in sorted(atoms.items()):
            check.count("params")
            node: Any = data.config
            for seg in path.split("/"):
                node = node.get(seg) if isinstance(node, dict) else None
            if isinstance(node, dict) and "_value" in node:
                node = node["_value"]
            want = config_value(atom.type, atom.value)
            digest.update(f"{path}\0{canonical(want)}\0".encode())
            if isinstance(atom.value, float) and not math.isfinite(atom.value):
                check.approx("config_nonfinite_float_as_string")
            if node is None and want is not None:
                check.mismatch(path, "param_missing", f"config value {path!r} is missing in W&B", path,
                               expected=short(want))
            elif _bits(node) != _bits(want) or (type(node) is not type(want) and not isinstance(want, float)):
                check.mismatch(path, "param_value", f"config value {path!r} is {short(node)!r} in W&B, "
                               f"{short(want)!r} expected", path, expected=short(want), actual=short(node))
        check.digests["params"] = digest.hexdigest()

    def _files(self, run: ArchivedRun, files: dict[str, list[tuple[str, Any, int]]], keys: dict[str, str], data: Any,
               check: RunCheck) -> None:
        wandb_id = self.target.run_id_for(run)
        digest = hashlib.sha256()
        for path, entries in sorted(files.items()):
            name = artifact_name(wandb_id, keys[path])
            art = data.artifacts.get(name)
            held = art["files"] if art else {}
            for entry, source, size in entries:
                check.count("files")
                check.count("bytes", size)
                sha = file_sha256(source)
                digest.update(f"{name}/{entry}\0{size}\0{sha}\0".encode())
                got = held.get(entry)
                if got is None:
                    check.mismatch(path, "file_missing", f"artifact {name!r} has no entry {entry!r} in W&B", entry,
                                   expected=size)
                elif got.size != size:
                    check.mismatch(path, "file_size", f"artifact entry {name}/{entry} is {got.size} bytes in W&B, "
                                   f"{size} expected", entry, expected=size, actual=got.size)
                elif got.sha256 and got.sha256 != sha:
                    check.mismatch(path, "file_sha256", f"artifact entry {name}/{entry} has different bytes in W&B",
                                   entry, expected=sha, actual=got.sha256)
                elif not got.sha256 and got.md5_b64 and got.md5_b64 != md5_b64(source):
                    # Read back without downloading: the manifest's md5 is what W&B vouches for.
                    check.mismatch(path, "file_md5", f"artifact entry {name}/{entry}: W&B's manifest md5 differs",
                                   entry, actual=got.md5_b64)
        check.digests["files"] = digest.hexdigest()


# -- the expected side ----------------------------------------------------------------------------------------
def _start_ms(run: ArchivedRun, data: Any) -> int:
    created = run.atom_value("sys/creation_time")
    if created is not None:
        return round(created.astimezone(UTC).timestamp() * 1000)
    return int(data.start_time_ms or 0)


def _expected(run: ArchivedRun, wants: Any, default_ts: int) -> tuple[dict, dict, dict]:
    series: dict[str, tuple[str, list]] = {}
    strings: dict[str, list] = defaultdict(list)
    files: dict[str, list] = defaultdict(list)
    cols = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value", "string_value",
            "histogram_value"]
    for row in run.table(["float_series", "histogram_series", "string_series"], cols).to_pylist():
        path, type_ = row["attribute_path"], row["attribute_type"]
        if not wants(path, type_):
            continue
        step = row["step_exact"] if row["step_exact"] is not None else float(row["step"])
        ts = default_ts if row["timestamp"] is None else round(row["timestamp"].timestamp() * 1000)
        if type_ == "string_series":
            strings[path].append((step, ts, row["string_value"]))
        elif type_ == "float_series":
            series.setdefault(path, (type_, []))[1].append((step, row["float_value"], ts))
        elif row["histogram_value"] is not None:
            series.setdefault(path, (type_, []))[1].append((step, row["histogram_value"], ts))
    cols = ["attribute_path", "attribute_type", "step", "step_exact", "file_value", "file_name"]
    for row in run.table(FILE_LIKE_TYPES, cols).to_pylist():
        path, type_ = row["attribute_path"], row["attribute_type"]
        if not wants(path, type_) or not (row["file_value"] or {}).get("path"):
            continue
        source = run.file_path(row["file_value"]["path"])
        if not source.exists():
            continue
        prefix = ""
        if type_ == "file_series" and row["step"] is not None:
            prefix = f"step_{step_label(row['step'], row['step_exact'])}/"
        files[path] += [(prefix + entry, p, p.stat().st_size) for p, entry in payload_entries(source, row["file_name"])]
    return series, dict(strings), dict(files)


def _hist_key(step: float, h: Any, rebinned: set[float]) -> str:
    """A histogram as comparable text: bins and counts exactly, or only the total where W&B merged bins."""
    if not isinstance(h, dict):
        return short(h)
    # W&B's API gives whole floats back as JSON integers: compare numbers, not their spelling.
    values = [float(v) for v in h.get("values") or []]
    if step in rebinned:
        return f"total={sum(values)!r}"
    bins = h.get("bins") if "bins" in h else h.get("edges")
    return canonical({"values": values, "bins": [float(b) for b in bins or []]})


def step_text(step: Any) -> str:
    """A step as a message shows it, with every digit that tells two steps apart (`%g` printed both
    999999999999 and 999999999999.0001 as 1e+12)."""
    if isinstance(step, float) and step.is_integer() and abs(step) < 2**53:
        return str(int(step))
    return repr(step)


def _compare(check: RunCheck, path: str, key: str, want: list, have: list, want_shown: list, have_shown: list) -> None:
    if want == have:
        return
    exp_steps = defaultdict(list)
    got_steps = defaultdict(list)
    for (s, v, t), (_s, shown, _t) in zip(want, want_shown, strict=True):
        exp_steps[s].append((t, v, shown))
    for (s, v, t), (_s, shown, _t) in zip(have, have_shown, strict=True):
        got_steps[s].append((t, v, shown))
    missing = sorted(set(exp_steps) - set(got_steps))
    extra = sorted(set(got_steps) - set(exp_steps))
    if missing:
        check.mismatch(path, "missing_points", f"{sum(len(exp_steps[s]) for s in missing)} point(s) missing in W&B "
                       f"key {key!r} at step(s) " + examples(step_text(s) for s in missing), key,
                       expected=len(want), actual=len(have))
    if extra:
        check.mismatch(path, "extra_points", f"{sum(len(got_steps[s]) for s in extra)} point(s) in W&B key {key!r} "
                       "at step(s) the archive does not have: " + examples(step_text(s) for s in extra), key,
                       expected=len(want), actual=len(have))
    values, stamps, counts = [], [], []
    for s in sorted(set(exp_steps) & set(got_steps)):
        e, g = sorted(exp_steps[s], key=repr), sorted(got_steps[s], key=repr)
        if len(e) != len(g):
            counts.append(f"step {step_text(s)} has {len(g)} point(s), {len(e)} expected")
            continue
        for (et, ev, es), (gt, gv, gs) in zip(e, g, strict=True):
            if ev != gv:
                values.append((s, es, gs))
            if et != gt:
                stamps.append((s, et, gt))
    if counts:
        check.mismatch(path, "point_count", f"key {key!r}: " + examples(iter(counts)), key)
    if values:
        check.mismatch(path, "value", f"key {key!r}: {len(values)} value(s) differ: " + examples(
            f"step {step_text(s)}: {short(g)!r} in W&B, {short(e)!r} expected" for s, e, g in values), key,
            expected=short(values[0][1]), actual=short(values[0][2]))
    if stamps:
        check.mismatch(path, "timestamp", f"key {key!r}: {len(stamps)} timestamp(s) differ: " + examples(
            f"step {step_text(s)}: {g} ms in W&B, {e} ms expected" for s, e, g in stamps), key,
            expected=stamps[0][1], actual=stamps[0][2])
