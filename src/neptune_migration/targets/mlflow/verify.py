"""Read a migrated run back from MLflow and compare it with the archive (the mapping is docs/mlflow.md).

The expected side is derived from the archive with the same pure mapping functions the loader uses, never from
what the target says about itself: a step scale, a key name or an artifact path is recomputed here, so a loader
bug shows up as a mismatch instead of being validated against its own output.

Reading is the expensive part. Metric histories come over REST as raw JSON (no per-point MLflow entities),
several series in flight; for stores opened in-process a run's points come in one query (readback.py).
Artifacts are downloaded once per run through the client into a temporary folder and hashed there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import END_TIME_RULE, decimal_micros, ms_text, timestamps_ms, to_ms
from neptune_migration.checks import ELSEWHERE, RunCheck, canonical, examples, short
from neptune_migration.hashing import file_sha256
from neptune_migration.naming import resolve_collisions
from neptune_migration.retry import retrying
from neptune_migration.selection import Selection
from neptune_migration.targets.mlflow.filesets import unpack
from neptune_migration.targets.mlflow.mapping import (
    LOG_SUFFIX,
    MAPPING_TAG,
    MAX_TAG_LENGTH,
    PICTURE_SUFFIX,
    SCALE_ARTIFACT,
    SCALE_IN_ARTIFACT,
    SCALE_TAG,
    STATE_TAG,
    file_destination,
    file_series_widths,
    fold_key,
    joined,
    log_line,
    metric_key,
    nul_tags,
    param_text,
    param_value,
    payload_files,
    sanitize_key,
    scale_exact,
    scale_micros,
    series_artifact_path,
    series_line,
    step_decimals,
    text_value,
)
from neptune_migration.targets.mlflow.readback import MetricReader, empty_columns
from neptune_migration.targets.mlflow.scales import EXPERIMENT_SCALE_TAG
from neptune_migration.targets.mlflow.scales import decode as scales_of
from neptune_migration.targets.mlflow.sync import LIVE_PARAM, LIVE_TAG_PREFIX
from neptune_migration.targets.mlflow.views import SOURCE_KEY, picture_source, png_text
from neptune_migration.vocabulary import FILE_LIKE_TYPES

MAX_DOUBLE = 1.7976931348623157e308
CANONICAL_NAN = np.array([math.nan]).view(np.uint64)[0]
HISTORY_PAGE = 100_000

# Tags whose Neptune source is one attribute: so a wrong tag is reported on the attribute a person knows.
_TAG_ATTRIBUTE = {
    "mlflow.user": "sys/owner",
    "mlflow.note.content": "sys/description",
    "neptune.tags": "sys/tags",
    "neptune.group_tags": "sys/group_tags",
    "neptune.experiment": "sys/name",
    "neptune.fork_parent": "sys/forking/parent",
    "neptune.fork_step": "sys/forking/step",
}


@dataclass
class Series:
    """One metric series as sorted arrays: step (int64), timestamp in ms (int64), value bits (uint64)."""

    steps: np.ndarray
    timestamps: np.ndarray
    bits: np.ndarray
    # -0.0 compares as 0.0 (`bits` drop the sign); how many there were before that, to measure which stores keep
    # the sign (PostgreSQL does; SQLite and MySQL store 0.0).
    negative_zeros: int = 0

    @classmethod
    def build(cls, steps: np.ndarray, timestamps: np.ndarray, values: np.ndarray) -> Series:
        bits = normalise_values(values)
        order = np.lexsort((bits, timestamps, steps))
        v = np.asarray(values, dtype=np.float64)
        return cls(steps[order], timestamps[order], bits[order], int(((v == 0) & np.signbit(v)).sum()))

    def __len__(self) -> int:
        return len(self.steps)

    def unique(self) -> Series:
        """The series with exact repeats (same step, timestamp and value bits) kept once, as MLflow stores them:
        a metric row is keyed by all three, so the server merges a point logged twice."""
        if len(self) < 2:
            return self
        keep = np.ones(len(self), dtype=bool)
        keep[1:] = ((self.steps[1:] != self.steps[:-1]) | (self.timestamps[1:] != self.timestamps[:-1])
                    | (self.bits[1:] != self.bits[:-1]))
        return self if keep.all() else Series(self.steps[keep], self.timestamps[keep], self.bits[keep],
                                              self.negative_zeros)

    def equals(self, other: Series) -> bool:
        return (len(self) == len(other) and np.array_equal(self.steps, other.steps)
                and np.array_equal(self.timestamps, other.timestamps) and np.array_equal(self.bits, other.bits))

    def digest(self) -> str:
        h = hashlib.sha256()
        for arr in (self.steps, self.timestamps, self.bits):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()


def _changed_param(check: RunCheck, run: ArchivedRun, path: str, key: str, text: str, held: str,
                   live: str | None) -> None:
    """A param MLflow holds with an older value: while the Neptune run is live, its current value in the tag
    `neptune.live/<key>` is the documented approximation (the run is replaced once it has finished)."""
    if run.live and live == text:
        check.approx(LIVE_PARAM)
        return
    why = ""
    if run.live:
        why = f"; the run is live and tag {LIVE_TAG_PREFIX + key!r} is {short(live) if live else 'missing'!r}"
    elif live is not None:
        why = "; the run has finished since it changed: the next `migrate --sync` replaces it with its final values"
    check.mismatch(path, "param_value", f"param {key!r} is {short(held)!r} in MLflow, {short(text)!r} expected{why}",
                   key, expected=short(text), actual=short(held))


def normalise_values(values: np.ndarray) -> np.ndarray:
    """Values as MLflow gives them back, as comparable bits: +-inf clamped, -0.0 as 0.0, one NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isposinf(v), MAX_DOUBLE, np.where(np.isneginf(v), -MAX_DOUBLE, v)) + 0.0
    bits = v.view(np.uint64).copy()
    bits[np.isnan(v)] = CANONICAL_NAN
    return bits


def bits_to_float(bits: int) -> float:
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


@dataclass
class ExpectedFile:
    attribute: str
    source: Path | None  # an archive payload, or None when `content` holds the bytes (a long param's text)
    size: int
    content: bytes | None = None
    recorded_sha256: str | None = None  # what the archive's row says, when it says
    known_sha256: str | None = None  # a file set member's, hashed from the archive's zip

    def sha256(self) -> str:
        if self.known_sha256 is not None:
            return self.known_sha256
        if self.content is not None:
            return hashlib.sha256(self.content).hexdigest()
        assert self.source is not None
        return file_sha256(self.source)


class MlflowVerifier:
    """Compares archived runs with an MLflow tracking store through an `MlflowTarget` (same URI and naming)."""

    def __init__(self, target: Any, read_workers: int = 4) -> None:
        # A tqdm bar per run download would bury the validation progress.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.target = target
        self.client = target.client
        store = self.client._tracking_client.store  # the only way to the REST credentials
        self._rest_creds = store.get_host_creds if type(store).__name__ == "RestStore" else None
        self._reader = MetricReader(self.client)
        self._pool = ThreadPoolExecutor(max(1, read_workers), thread_name_prefix="mlflow-read")
        # Experiment ids by name, once found (thousands of runs share a handful of experiments).
        self._experiments: dict[str, str] = {}
        # Every active experiment {id: name}, listed once: where copies of a run at another place are looked for.
        self._all: dict[str, str] | None = None
        # The validating ledger's identity (set by the stage): copies other ledgers made are only mentioned.
        self.migration: str | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # -- identity -----------------------------------------------------------------------------------------
    def find_runs(self, run: ArchivedRun) -> list[Any]:
        """Active MLflow runs carrying this Neptune run's key, oldest first; never creates anything."""
        name = self.target.experiment_name(run)
        exp_id = self._experiments.get(name)
        if exp_id is None:
            exp = self.client.get_experiment_by_name(name)
            if exp is None or exp.lifecycle_stage == "deleted":
                return []
            exp_id = self._experiments.setdefault(name, exp.experiment_id)
        return self.target.find_runs(exp_id, run.ref)

    def discard(self, run: ArchivedRun) -> int:
        """Delete every MLflow run of this Neptune run (for `retry`): the next load creates it afresh."""
        found = retrying(lambda: self.find_runs(run))
        for mlflow_run in found:
            retrying(lambda r=mlflow_run: self.client.delete_run(r.info.run_id))
        return len(found)

    # -- the comparison -------------------------------------------------------------------------------------
    def _elsewhere(self, run: ArchivedRun, check: RunCheck) -> None:
        """Copies of the run outside the experiment this placement names (another layout or prefix loaded it)."""
        with self._lock:
            if self._all is None:
                self._all = self.target.experiments()
            names = dict(self._all)
        here = self.target.placement(run)
        for copy in self.target.copies(run.ref, names):
            if copy.where == here.where:
                continue
            if not copy.ours(self.migration):
                check.warnings.append(f"another migration (another ledger) also holds this run in {copy.where} "
                                      f"(MLflow run {copy.target_id})")
            else:
                check.mismatch("run", ELSEWHERE, f"an active copy (MLflow run {copy.target_id}) is in {copy.where}, "
                               f"outside this placement ({here.where}, {here.options}): `load --relocate` moves it "
                               "here and deletes it there", expected=here.where, actual=copy.where)

    def verify(self, run: ArchivedRun, selection: Selection) -> RunCheck:
        check = RunCheck(run.ref)
        found = retrying(lambda: self.find_runs(run))
        self._elsewhere(run, check)
        if not found:
            check.mismatch("run", "run_missing", f"no MLflow run in experiment {self.target.experiment_name(run)!r} "
                           f"carries this run's key (tag neptune.run_key = {run.ref.key!r})")
            return check
        if len(found) > 1:
            check.mismatch("run", "duplicate_runs", f"{len(found)} MLflow runs carry this run's key: "
                           + ", ".join(r.info.run_id for r in found), expected=1, actual=len(found))
        run_id = found[0].info.run_id
        check.target_id = run_id
        mlflow_run = retrying(lambda: self.client.get_run(run_id))
        expected_files: dict[str, ExpectedFile] = {}
        self._check_metadata(run, mlflow_run, check)
        self._check_params(run, selection, mlflow_run, check, expected_files)
        self._check_metrics(run, selection, mlflow_run, check, expected_files)
        with tempfile.TemporaryDirectory(prefix="neptune-validate-") as tmp:
            local = Path(retrying(lambda: self.client.download_artifacts(run_id, "", tmp)))
            actual = {p.relative_to(local).as_posix(): p for p in sorted(local.rglob("*")) if p.is_file()}
            series_paths = self._check_text_series(run, selection, actual, check)
            self._expected_payloads(run, selection, check, expected_files)
            self._check_files(expected_files, actual, series_paths, check)
        return check

    # -- run metadata ---------------------------------------------------------------------------------------
    def _check_metadata(self, run: ArchivedRun, mlflow_run: Any, check: RunCheck) -> None:
        atoms = run.atoms()
        info, tags = mlflow_run.info, mlflow_run.data.tags

        def same(attribute: str, what: str, expected: Any, actual: Any, kind: str) -> None:
            check.count("metadata")
            if expected != actual:
                check.mismatch(attribute, kind, f"{what} is {actual!r} in MLflow, {expected!r} expected",
                               expected=expected, actual=actual)

        same("run", "run name", run.ref.run_id, info.run_name, "name")
        failed = bool(atoms["sys/failed"].value) if "sys/failed" in atoms else False
        same("sys/failed", "status", "FAILED" if failed else "FINISHED", info.status, "status")
        # The loader's rule too: creation time, else the earliest point, never the load time.
        start = run.start_time_ms()
        if start is not None:
            same("sys/creation_time", "start time (ms)", max(start, 1), info.start_time, "start_time")
        # The loader's rule; a run with no time at all ends where MLflow started it. An end time left to MLflow
        # (the load time) is what this catches: the run would show a duration of months or years.
        end = run.end_time_ms()
        expected_end = end if end is not None else info.start_time
        check.count("metadata")
        if info.end_time != expected_end:
            check.mismatch("run", "end_time", f"end time is {ms_text(info.end_time)} in MLflow, "
                           f"{ms_text(expected_end)} expected ({END_TIME_RULE})",
                           expected=expected_end, actual=info.end_time)
        owner = run.atom_value("sys/owner")
        if owner:
            same("sys/owner", "owner (user_id)", text_value(str(owner)), info.user_id, "owner")

        expected_tags = dict(self.target.run_tags(run))
        # The parent link depends on which run was loaded first; the Neptune parent is checked by its own tag.
        expected_tags.pop("mlflow.parentRunId", None)
        check.approx("nul_replaced_in_tags", nul_tags(expected_tags))
        expected_tags[STATE_TAG] = "complete"
        sys_tags = {sanitize_key("neptune." + p): p for p in atoms if p.startswith("sys/")}
        for key, value in sorted(expected_tags.items()):
            check.count("tags")
            attribute = _TAG_ATTRIBUTE.get(key) or sys_tags.get(key) or _tag_set_attribute(key) or "run"
            if key == MAPPING_TAG and tags.get(key) != value:
                check.mismatch("run", "mapping_version", f"the run was loaded with mapping version "
                               f"{tags.get(key, '1')}, this version writes {value}: `load --refresh` reloads it",
                               key, expected=value, actual=tags.get(key))
            elif key not in tags:
                check.mismatch(attribute, "tag_missing", f"tag {key!r} is missing in MLflow", key, expected=value)
            elif tags[key] != value:
                check.mismatch(attribute, "tag_value", f"tag {key!r} is {short(tags[key])!r} in MLflow, "
                               f"{short(value)!r} expected", key, expected=value, actual=tags[key])
        repeated = sorted(k for k in tags if k.startswith("neptune.sys/") and k not in expected_tags)
        if repeated:
            # Written by an older mapping, which repeated fields MLflow already holds: harmless, but noise.
            check.warnings.append(f"{len(repeated)} tag(s) repeat fields held elsewhere: " + ", ".join(repeated[:5]))
        for key in sorted(tags):
            if key.startswith(("neptune.tag.", "neptune.group_tag.")) and key not in expected_tags:
                check.mismatch("sys/tags" if key.startswith("neptune.tag.") else "sys/group_tags", "tag_extra",
                               f"tag {key!r} is in MLflow but the run has no such tag", key, actual=tags[key])

    # -- params ---------------------------------------------------------------------------------------------
    def _check_params(self, run: ArchivedRun, selection: Selection, mlflow_run: Any, check: RunCheck,
                      expected_files: dict[str, ExpectedFile]) -> None:
        atoms = run.atoms()
        wanted = {p: a for p, a in atoms.items() if not p.startswith("sys/") and selection.wants_attribute(p, a.type)}
        names = resolve_collisions(wanted, sanitize_key, fold_key)
        params = mlflow_run.data.params
        live = {k[len(LIVE_TAG_PREFIX):]: v for k, v in mlflow_run.data.tags.items() if k.startswith(LIVE_TAG_PREFIX)}
        digest = hashlib.sha256()
        for path, atom in sorted(wanted.items()):
            key = names[path]
            text, where, kinds = param_value(key, param_text(atom.type, atom.value))
            if where is not None:
                data = param_text(atom.type, atom.value).encode("utf-8")
                expected_files[where] = ExpectedFile(path, None, len(data), content=data)
            for kind in kinds:
                check.approx(kind)
            check.count("params")
            digest.update(f"{key}\0{text}\0".encode())
            if key not in params:
                check.mismatch(path, "param_missing", f"param {key!r} is missing in MLflow", key, expected=text)
            elif params[key] != text:
                _changed_param(check, run, path, key, text, params[key], live.get(key))
            elif key in live and live[key] != text:
                check.mismatch(path, "live_tag", f"tag {LIVE_TAG_PREFIX + key!r} is {short(live[key])!r} in MLflow, "
                               f"but the param holds the current value {short(text)!r}", LIVE_TAG_PREFIX + key,
                               expected=short(text), actual=short(live[key]))
        extra = sorted(set(params) - set(names.values()))
        if extra:
            check.warnings.append(f"{len(extra)} param(s) in MLflow not in the archive selection: "
                                  + ", ".join(extra[:5]))
        check.digests["params"] = digest.hexdigest()

    # -- metrics --------------------------------------------------------------------------------------------
    def expected_series(self, run: ArchivedRun, selection: Selection, check: RunCheck,
                        experiment: dict[str, int] | None = None, logged: dict[str, int] | None = None
                        ) -> tuple[dict[str, str], dict[str, int], dict[str, Series], dict[str, int]]:
        """Per float series: MLflow key, step scale, and every point as the mapping says MLflow holds it; also
        {path: scale} the experiment says the run should be at. `experiment`: the experiment's {key: decimals},
        which a run's own need never exceeds. `logged`: {key: decimals} the run says it was logged at; where that
        is a valid scale for the run's steps the points are compared at it, so a run the experiment outgrew shows
        one mismatch (its scale), not one per point."""
        needed = _series_plan(run, selection)
        names = resolve_collisions(needed, metric_key, fold_key)
        experiment = experiment or {}
        for path, d in sorted(needed.items()):
            if experiment and experiment.get(names[path], 0) < d:
                check.mismatch(path, "step_scale", f"the experiment draws {names[path]!r} at step scale "
                               f"10^{experiment.get(names[path], 0)}, but this run's steps need 10^{d}",
                               EXPERIMENT_SCALE_TAG, expected=10**d, actual=10 ** experiment.get(names[path], 0))
        wanted = {p: max(d, experiment.get(names[p], 0)) for p, d in needed.items()}
        plan = dict(wanted)
        if logged is not None:
            plan.update({p: logged.get(names[p], 0) for p, d in needed.items() if logged.get(names[p], 0) >= d})
        scales = {path: 10**d for path, d in plan.items()}
        check.approx("series_with_scaled_steps", sum(1 for d in plan.values() if d))
        fallback_ts = to_ms(run.atom_value("sys/creation_time")) or 0
        parts: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = defaultdict(list)
        cols = ["attribute_path", "step", "step_exact", "timestamp", "float_value"]
        for batch in run.batches(["float_series"], cols):
            keep = pc.is_in(batch.column("attribute_path"), value_set=pa.array(list(plan), pa.string()))
            batch = batch.filter(keep)
            if batch.num_rows == 0:
                continue
            encoded = pc.dictionary_encode(batch.column("attribute_path"))
            names_in_batch = encoded.dictionary.to_pylist()
            codes = encoded.indices.to_numpy(zero_copy_only=False)
            micros = decimal_micros(batch.column("step"))
            ts = timestamps_ms(batch.column("timestamp"), fallback_ts)
            check.approx("negative_timestamp_clamped", int((ts < 0).sum()))
            ts = np.maximum(ts, 0)
            values = batch.column("float_value").to_numpy(zero_copy_only=False).astype(np.float64)
            check.approx("inf_clamped_by_mlflow", int(np.isinf(values).sum()))
            exact_col = batch.column("step_exact")
            exact = exact_col.to_pylist() if exact_col.null_count < batch.num_rows else None
            # Group rows by series with one stable sort, not one mask per series (runs can have thousands).
            order = np.argsort(codes, kind="stable")
            bounds = np.flatnonzero(np.diff(codes[order])) + 1
            for rows in np.split(order, bounds):
                path = names_in_batch[int(codes[rows[0]])]
                steps = scale_micros(micros[rows], plan[path])
                if exact is not None:
                    for j, i in enumerate(rows.tolist()):
                        if exact[i] is not None:
                            steps[j] = scale_exact(exact[i], plan[path])
                parts[path].append((steps, ts[rows], values[rows]))
        series = {}
        for path in plan:
            chunks = parts.get(path, [])
            if chunks:
                series[path] = Series.build(*(np.concatenate([c[k] for c in chunks]) for k in range(3)))
            else:
                series[path] = Series.build(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))
        return names, scales, series, {path: 10**d for path, d in wanted.items()}

    def _check_metrics(self, run: ArchivedRun, selection: Selection, mlflow_run: Any, check: RunCheck,
                       expected_files: dict[str, ExpectedFile]) -> None:
        exp = retrying(lambda: self.client.get_experiment(mlflow_run.info.experiment_id))
        logged = _logged_decimals(mlflow_run.data.tags.get(SCALE_TAG))
        names, scales, expected, wanted = self.expected_series(run, selection, check, scales_of(dict(exp.tags)),
                                                               logged)
        scale_map = {names[p]: s for p, s in sorted(wanted.items()) if s != 1}
        if scale_map:
            text = json.dumps(scale_map, sort_keys=True)
            check.count("tags")
            actual = mlflow_run.data.tags.get(SCALE_TAG)
            if len(text) > MAX_TAG_LENGTH:
                data = text.encode("utf-8")
                expected_files[SCALE_ARTIFACT] = ExpectedFile("run", None, len(data), content=data)
                if actual != SCALE_IN_ARTIFACT:
                    check.mismatch("run", "step_scale", f"tag {SCALE_TAG} is {short(actual)!r} in MLflow, "
                                   f"{SCALE_IN_ARTIFACT!r} expected", SCALE_TAG, expected=SCALE_IN_ARTIFACT,
                                   actual=actual)
            elif actual is None or _loads(actual) != scale_map:
                logged = _loads(actual) if actual else {}
                behind = sorted(k for k, v in scale_map.items() if isinstance(logged, dict) and logged.get(k, 1) < v)
                why = (f"; the experiment's scale for {behind[0]!r} rose after this run was loaded (run `retry` to "
                       "reload it)" if behind else "")
                check.mismatch("run", "step_scale", f"tag {SCALE_TAG} is {short(actual)!r} in MLflow, "
                               f"{short(text)!r} expected{why}", SCALE_TAG, expected=text, actual=actual)
        run_id = mlflow_run.info.run_id
        keys = {path: names[path] for path in sorted(expected)}
        # A store opened in-process answers for the whole run at once (readback.py); REST goes key by key.
        batch = None
        if self._reader.batched:
            total = sum(len(s) for s in expected.values())
            batch = retrying(lambda: self._reader.run(run_id, keys.values(), total))
        futures = {} if batch is not None else {
            path: self._pool.submit(retrying, lambda k=key: self.history(run_id, k)) for path, key in keys.items()}
        digest = hashlib.sha256()
        for path in keys:
            actual = Series.build(*batch.get(keys[path], empty_columns())) if batch is not None \
                else futures[path].result()
            want = expected[path].unique()
            if len(want) < len(expected[path]):
                check.approx("duplicate_points_stored_once", len(expected[path]) - len(want))
            check.count("metric_series")
            check.count("points", len(want))
            # Measured, not assumed: the store behind a REST server is unknown, and only some drop the sign.
            check.approx("negative_zero_stored_as_zero", max(0, want.negative_zeros - actual.negative_zeros))
            digest.update(f"{names[path]}\0{want.digest()}\0".encode())
            if not want.equals(actual):
                compare_series(check, path, names[path], scales[path], want, actual)
        extra = sorted(set(mlflow_run.data.metrics) - set(names.values()))
        if extra:
            check.warnings.append(f"{len(extra)} metric(s) in MLflow not in the archive selection: "
                                  + ", ".join(extra[:5]))
        check.digests["metrics"] = digest.hexdigest()

    def history(self, run_id: str, key: str) -> Series:
        """Every stored point of one metric, read the cheapest way the store allows."""
        if self._reader.batched:
            return Series.build(*self._reader.run(run_id, [key]).get(key, empty_columns()))
        if self._rest_creds is not None:
            return self._history_rest(run_id, key)
        points = self.client.get_metric_history(run_id, key)
        return Series.build(np.array([m.step for m in points], np.int64),
                            np.array([m.timestamp for m in points], np.int64),
                            np.array([m.value for m in points], np.float64))

    def _history_rest(self, run_id: str, key: str) -> Series:
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/metrics/get-history"
        steps: list[int] = []
        stamps: list[int] = []
        values: list[float] = []
        token = None
        while True:
            query: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": HISTORY_PAGE}
            if token:
                query["page_token"] = token
            response = http_request(self._rest_creds(), endpoint, "GET", params=query)
            verify_rest_response(response, endpoint)
            data = response.json()
            for m in data.get("metrics", ()):
                steps.append(int(m.get("step", 0)))
                stamps.append(int(m.get("timestamp", 0)))
                values.append(_json_float(m.get("value", 0.0)))
            token = data.get("next_page_token")
            if not token:
                break
        return Series.build(np.array(steps, np.int64), np.array(stamps, np.int64), np.array(values, np.float64))

    # -- string and histogram series (JSON-lines artifacts) -----------------------------------------------
    def _check_text_series(self, run: ArchivedRun, selection: Selection, actual: dict[str, Path],
                           check: RunCheck) -> set[str]:
        """Count and digest of every line of each series artifact; returns the artifact paths it covered."""
        cols = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "string_value",
                "histogram_value"]
        table = run.table(["string_series", "histogram_series"], cols)
        expected: dict[str, list[str]] = defaultdict(list)
        # The loader's order for the log: by step (in millionths), equal steps in archive order.
        ordered: dict[str, list[tuple[int, int, dict[str, Any]]]] = defaultdict(list)
        types: dict[str, str] = {}
        micros = decimal_micros(table.column("step")).tolist() if table.num_rows else []
        for index, (row, step_key) in enumerate(zip(table.to_pylist(), micros, strict=True)):
            path, type_ = row["attribute_path"], row["attribute_type"]
            if not selection.wants_attribute(path, type_):
                continue
            step = row["step_exact"] if row["step_exact"] is not None else row["step"]
            value = row["string_value"] if type_ == "string_series" else row["histogram_value"]
            line = series_line(step, row["timestamp"], value)
            expected[path].append(canonical(line))
            types[path] = type_
            if type_ == "string_series":
                ordered[path].append((step_key, index, line))
        covered = set()
        digest = hashlib.sha256()
        for path in sorted(expected):
            where = series_artifact_path(path)
            covered.add(where)
            want = sorted(expected[path])
            check.count("series_artifacts")
            check.count("series_points", len(want))
            check.approx("series_points_in_artifacts", len(want))
            digest.update(f"{where}\0{_lines_digest(want)}\0".encode())
            local = actual.get(where)
            view = series_artifact_path(path, LOG_SUFFIX if types[path] == "string_series" else PICTURE_SUFFIX)
            covered.add(view)
            if types[path] == "string_series":
                log = "".join(log_line(line) for _k, _i, line in sorted(ordered[path], key=lambda t: t[:2]))
                self._check_log(path, view, log.encode("utf-8"), actual.get(view), check)
            else:
                self._check_picture(path, view, local, len(want), actual.get(view), check)
            if local is None:
                check.mismatch(path, "series_missing", f"artifact {where!r} is missing in MLflow ({len(want)} "
                               "points)", where, expected=len(want), actual=0)
                continue
            try:
                got = sorted(canonical(json.loads(line)) for line in
                             local.read_text(encoding="utf-8").splitlines() if line.strip())
            except (ValueError, UnicodeDecodeError) as exc:
                check.mismatch(path, "series_unreadable", f"artifact {where!r} is not JSON lines: {exc}", where)
                continue
            if len(got) != len(want):
                check.mismatch(path, "series_count", f"artifact {where!r} holds {len(got)} points, {len(want)} "
                               "expected", where, expected=len(want), actual=len(got))
            elif got != want:
                differing = sum(1 for a, b in zip(got, want, strict=True) if a != b)
                first = next(b for a, b in zip(got, want, strict=True) if a != b)
                check.mismatch(path, "series_content", f"artifact {where!r}: {differing} point(s) differ, the first "
                               f"expected being {short(first)}", where, expected=_lines_digest(want),
                               actual=_lines_digest(got))
        check.digests["series"] = digest.hexdigest()
        return covered

    @staticmethod
    def _check_log(path: str, where: str, want: bytes, local: Path | None, check: RunCheck) -> None:
        """The plain-text log of a string series, byte for byte as the mapping writes it from the archive."""
        check.count("series_views")
        if local is None:
            check.mismatch(path, "series_log_missing", f"log {where!r} is missing in MLflow", where)
            return
        got = local.read_bytes()
        if got != want:
            lines = sum(1 for a, b in zip(got.split(b"\n"), want.split(b"\n"), strict=False) if a != b)
            check.mismatch(path, "series_log_content", f"log {where!r} differs from the series ({lines} line(s), "
                           f"{len(got)} bytes in MLflow, {len(want)} expected)", where,
                           expected=hashlib.sha256(want).hexdigest(), actual=hashlib.sha256(got).hexdigest())

    @staticmethod
    def _check_picture(path: str, where: str, series: Path | None, points: int, local: Path | None,
                       check: RunCheck) -> None:
        """The histogram picture: a PNG that names the series file it was drawn from (its sha256) and its
        point count, so a picture of other data, or of a partial series, does not pass."""
        check.count("series_views")
        if local is None:
            check.mismatch(path, "series_picture_missing", f"picture {where!r} is missing in MLflow", where)
            return
        text = png_text(local.read_bytes())
        if not text:
            check.mismatch(path, "series_picture_unreadable", f"picture {where!r} is not a PNG", where)
            return
        if series is None:
            return  # the missing series is the mismatch
        want = picture_source(file_sha256(series), points)
        if text.get(SOURCE_KEY) != want:
            check.mismatch(path, "series_picture_source", f"picture {where!r} was not drawn from the series "
                           f"artifact as it is in MLflow ({text.get(SOURCE_KEY)!r}, {want!r} expected)", where,
                           expected=want, actual=text.get(SOURCE_KEY))

    # -- files ----------------------------------------------------------------------------------------------
    def _expected_payloads(self, run: ArchivedRun, selection: Selection, check: RunCheck,
                           expected: dict[str, ExpectedFile]) -> None:
        """Where every file payload lands, by the loader's rules (docs/mlflow.md, files)."""
        cols = ["attribute_path", "attribute_type", "step", "step_exact", "file_value", "file_name", "file_size",
                "file_sha256"]
        widths = file_series_widths(run)
        for batch in run.batches(FILE_LIKE_TYPES, cols):
            for row in batch.to_pylist():
                path, type_ = row["attribute_path"], row["attribute_type"]
                if not selection.wants_attribute(path, type_) or row["file_value"] is None:
                    continue
                source = run.file_path(row["file_value"]["path"])
                if not source.exists():
                    check.mismatch(path, "archive_file_missing", f"the archive has no payload at {source}")
                    continue
                step = row["step_exact"] if row["step_exact"] is not None else row["step"]
                for local, relative in payload_files(source):
                    name = row["file_name"] if (row["file_name"] and local == source) else local.name
                    size = local.stat().st_size
                    if not selection.wants_file(path, name, size):
                        continue
                    if type_ == "file_set" and (unpacked := unpack(local, path, relative, name)) is not None:
                        # The members as the zip holds them, and the manifest naming the zip's size and sha256.
                        expected[unpacked.manifest_path] = ExpectedFile(path, None, len(unpacked.manifest),
                                                                        content=unpacked.manifest)
                        for member in unpacked.members:
                            expected[member.path] = ExpectedFile(path, None, member.size,
                                                                 known_sha256=member.sha256)
                        continue
                    where, target_name = file_destination(path, type_, step, widths.get(path, 1), relative, name)
                    dest = joined(where, target_name)
                    recorded = row["file_sha256"] if local == source else None
                    expected[dest] = ExpectedFile(path, local, size, recorded_sha256=recorded)

    def _check_files(self, expected: dict[str, ExpectedFile], actual: dict[str, Path], series_paths: set[str],
                     check: RunCheck) -> None:
        digest = hashlib.sha256()
        for dest, want in sorted(expected.items()):
            check.count("files")
            check.count("bytes", want.size)
            want_sha = want.sha256()
            digest.update(f"{dest}\0{want.size}\0{want_sha}\0".encode())
            if want.recorded_sha256 and want.recorded_sha256 != want_sha:
                check.mismatch(want.attribute, "archive_payload_corrupt", f"the archive payload for {dest!r} no "
                               "longer matches the sha256 recorded at export", dest,
                               expected=want.recorded_sha256, actual=want_sha)
            local = actual.get(dest)
            if local is None:
                check.mismatch(want.attribute, "file_missing", f"artifact {dest!r} ({want.size} bytes) is missing "
                               "in MLflow", dest, expected=want.size, actual=None)
                continue
            size = local.stat().st_size
            if size != want.size:
                check.mismatch(want.attribute, "file_size", f"artifact {dest!r} is {size} bytes in MLflow, "
                               f"{want.size} expected", dest, expected=want.size, actual=size)
                continue
            got_sha = file_sha256(local)
            if got_sha != want_sha:
                check.mismatch(want.attribute, "file_sha256", f"artifact {dest!r} has different bytes in MLflow "
                               "(sha256 differs)", dest, expected=want_sha, actual=got_sha)
        extra = sorted(set(actual) - set(expected) - series_paths)
        if extra:
            check.warnings.append(f"{len(extra)} artifact(s) in MLflow not in the archive selection: "
                                  + ", ".join(extra[:5]))
        check.digests["files"] = digest.hexdigest()


# -- series comparison ----------------------------------------------------------------------------------------
def compare_series(check: RunCheck, path: str, key: str, scale: int, want: Series, got: Series) -> None:
    """Explain how two series differ, one mismatch per kind of difference, each naming example steps."""
    def label(step: int) -> str:
        return str(step) if scale == 1 else f"{step} (Neptune step {step / scale:g})"

    expected = _by_step(want)
    actual = _by_step(got)
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed_value: list[tuple[int, float, float]] = []
    changed_ts: list[tuple[int, int, int]] = []
    recount: list[tuple[int, int, int]] = []
    for step in sorted(set(expected) & set(actual)):
        e, a = expected[step], actual[step]
        if e == a:
            continue
        if len(e) != len(a):
            recount.append((step, len(e), len(a)))
            continue
        for (et, ev), (at, av) in zip(e, a, strict=True):
            if ev != av:
                changed_value.append((step, bits_to_float(ev), bits_to_float(av)))
            if et != at:
                changed_ts.append((step, et, at))
    if missing:
        n = sum(len(expected[s]) for s in missing)
        check.mismatch(path, "missing_points", f"{n} point(s) missing in MLflow metric {key!r} at step(s) "
                       + examples(label(s) for s in missing), key, expected=len(want), actual=len(got))
    if extra:
        n = sum(len(actual[s]) for s in extra)
        check.mismatch(path, "extra_points", f"{n} point(s) in MLflow metric {key!r} at step(s) the archive does "
                       "not have: " + examples(label(s) for s in extra), key, expected=len(want), actual=len(got))
    if recount:
        check.mismatch(path, "point_count", f"metric {key!r}: " + examples(
            f"step {label(s)} has {a} point(s), {e} expected" for s, e, a in recount), key,
            expected=len(want), actual=len(got))
    if changed_value:
        _, e, a = changed_value[0]
        check.mismatch(path, "value", f"metric {key!r}: {len(changed_value)} value(s) differ: " + examples(
            f"step {label(s)}: {a!r} in MLflow, {e!r} expected" for s, e, a in changed_value), key,
            expected=e, actual=a)
    if changed_ts:
        _, e, a = changed_ts[0]
        check.mismatch(path, "timestamp", f"metric {key!r}: {len(changed_ts)} timestamp(s) differ: " + examples(
            f"step {label(s)}: {a} ms in MLflow, {e} ms expected" for s, e, a in changed_ts), key,
            expected=e, actual=a)


def _by_step(series: Series) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for step, ts, bits in zip(series.steps.tolist(), series.timestamps.tolist(), series.bits.tolist(), strict=True):
        out[step].append((ts, bits))
    return {s: sorted(v) for s, v in out.items()}


def _logged_decimals(tag: str | None) -> dict[str, int] | None:
    """{key: decimals} from a run's step-scale tag; None when it names no valid scale (absent means none scaled)."""
    if tag is None:
        return {}
    scales = _loads(tag)
    if not isinstance(scales, dict):
        return None
    out = {}
    for key, scale in scales.items():
        d = len(str(scale)) - 1
        if not isinstance(scale, int) or scale <= 0 or 10**d != scale:
            return None
        out[key] = d
    return out


# -- the loader's first pass, recomputed from the mapping (docs/mlflow.md) ----------------------------------
def _series_plan(run: ArchivedRun, selection: Selection) -> dict[str, int]:
    """Decimal places each float series needs so every step is an exact integer (the loader's first pass)."""
    plan: dict[str, int] = {}
    for batch in run.batches(["float_series"], ["attribute_path", "step", "step_exact"]):
        exact = batch.column("step_exact")
        needed = step_decimals(decimal_micros(batch.column("step")),
                               exact.to_pylist() if exact.null_count < len(exact) else None)
        grouped = pa.table({"p": batch.column("attribute_path"), "d": needed}).group_by("p").aggregate(
            [("d", "max")])
        for path, d in zip(grouped.column("p").to_pylist(), grouped.column("d_max").to_pylist(), strict=True):
            plan[path] = max(plan.get(path, 0), int(d))
    return {p: d for p, d in plan.items() if selection.wants_attribute(p, "float_series")}


def _tag_set_attribute(key: str) -> str | None:
    if key.startswith("neptune.tag."):
        return "sys/tags"
    if key.startswith("neptune.group_tag."):
        return "sys/group_tags"
    return None


# -- reading ------------------------------------------------------------------------------------------------
def _json_float(value: Any) -> float:
    special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
    return special[value] if isinstance(value, str) and value in special else float(value)



def _lines_digest(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
