"""The Aim target: one Aim run per Neptune run in a local Aim repository, found again by its Neptune run key.

Aim keeps one point per (sequence, step): writing a point again at its step replaces it. So a run is (re)written
whole on every attempt, and an attempt cut short (SIGKILL) and run again leaves each sequence exact, never doubled.
The run is marked `complete` in its `neptune_migration` param only after everything else is written.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.errors import TargetError
from neptune_migration.targets.aim.mapping import (
    ARTIFACTS_DIR,
    COMPLETE,
    LOADING,
    STATE_KEY,
    decodable_image,
    even_edges,
    experiment_name,
    param_value,
    run_tags,
    seconds,
)
from neptune_migration.targets.aim.mapping_version import MAPPING_VERSION
from neptune_migration.targets.base import LoadContext, LoadResult
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
# Checked between sequences: a stop request unwinds the run there (the next attempt rewrites it whole).
_SERIES_COLUMNS = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value",
                   "string_value", "histogram_value"]


def check_repo_spec(given: str | Path) -> Path:
    """The local folder of `--aim-repo` (a string or, from the Python API, a path), refusing what this target
    cannot write yet (a remote tracking server)."""
    spec = str(given)
    if spec.startswith("aim://"):
        raise TargetError("--aim-repo aim://...: a remote Aim tracking server is not supported yet; load into a local "
                          "repository folder and serve it with `aim up --repo PATH`")
    if "://" in spec:
        raise TargetError(f"--aim-repo {spec!r}: give a local folder (created if absent)")
    return Path(spec).expanduser().resolve()


def release(repo: Any) -> None:
    """Close an Aim repository for good: every RocksDB handle Aim's pools still hold (a handle keeps its run's lock,
    so after a load in a notebook no other process could write to the run), and the process-wide caches that
    would hand the closed repository out again."""
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager

    for pool in (repo.container_pool, repo.persistent_pool):
        for container in list(pool.values()):
            container.close()
        pool.clear()
    repo.close()
    if Repo._pool.get(repo.path) is repo:
        del Repo._pool[repo.path]
    RepoIndexManager.index_manager_pool.pop(repo.path, None)


class AimTarget:
    name = "aim"

    def __init__(self, repo: str | Path) -> None:
        self.path = check_repo_spec(str(repo))
        self._repo: Any = None
        # Aim's Repo shares one SQLite session and one pool of RocksDB containers between threads: runs are written
        # one at a time (a local repository is bound by the disk, not by round trips).
        self._lock = threading.RLock()
        self._keys: dict[str, list[str]] | None = None

    @property
    def canonical(self) -> str:
        return f"aim:{self.path}"

    @property
    def repo(self) -> Any:
        if self._repo is None:
            from aim import Repo

            self.path.mkdir(parents=True, exist_ok=True)
            self._repo = Repo.from_path(str(self.path), init=not Repo.exists(str(self.path)))
        return self._repo

    @property
    def artifacts_uri(self) -> str:
        # Not percent-encoded: Aim's file storage takes the URI's path as it is.
        return f"file://{self.path / ARTIFACTS_DIR}"

    def check(self) -> None:
        try:
            with self._lock:
                self.repo  # noqa: B018 - opening creates the repository
        except Exception as exc:
            raise TargetError(f"cannot open the Aim repository {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._repo is not None:
                release(self._repo)
                self._repo = None

    # -- identity -----------------------------------------------------------------------------------------
    def _key_of(self, run_hash: str) -> str | None:
        """A run's Neptune key, read from its own chunk (a run cut short is not in Aim's index yet)."""
        from aim.storage.rockscontainer import RocksContainer

        chunk = Path(self.repo.path) / "meta" / "chunks" / run_hash
        if not (chunk / "CURRENT").exists():  # a deleted run Aim still lists: its database is gone
            return None
        # Opened and closed here, outside Aim's pool: a pooled handle would outlive a deleted run's files.
        container = RocksContainer(str(chunk), read_only=True)
        try:
            return container.tree()[("meta", "chunks", run_hash, "attrs", STATE_KEY, "run_key")]
        except (KeyError, TypeError):
            return None
        finally:
            container.close()

    def find_runs(self, ref: RunRef) -> list[str]:
        """The hashes of the Aim runs carrying this Neptune run's key, oldest first."""
        with self._lock:
            if self._keys is None:
                keys: dict[str, list[str]] = defaultdict(list)
                for run_hash in sorted(self.repo.list_all_runs()):
                    key = self._key_of(run_hash)
                    if key is not None:
                        keys[key].append(run_hash)
                self._keys = keys
            return list(self._keys.get(ref.key, []))

    def discard(self, ref: RunRef) -> int:
        with self._lock:
            found = self.find_runs(ref)
            for run_hash in found:
                self._delete(run_hash)
            assert self._keys is not None
            self._keys.pop(ref.key, None)
            return len(found)

    def _delete(self, run_hash: str) -> None:
        # Aim's pool keeps RocksDB handles of the run open; closed first, they cannot flush into deleted files later.
        for config, container in list(self.repo.container_pool.items()):
            if config.sub == run_hash:
                container.close()
                self.repo.container_pool.pop(config, None)
        if not self.repo.delete_run(run_hash):  # Aim logs its reason and returns False
            raise TargetError(f"Aim could not delete run {run_hash} of {self.path}")
        shutil.rmtree(self.path / ARTIFACTS_DIR / run_hash, ignore_errors=True)

    @contextmanager
    def _open(self, run: ArchivedRun, replace: bool) -> Iterator[Any]:
        from aim import Run

        if replace:
            self.discard(run.ref)
        found = self.find_runs(run.ref)
        opts: dict[str, Any] = dict(repo=self.repo, system_tracking_interval=None, capture_terminal_logs=False,
                                    log_system_params=False)
        # The ledger gives this process the run: a lock left by a killed attempt is stale.
        aim_run = Run(found[0], force_resume=True, **opts) if found else Run(**opts)
        if not found:
            aim_run[STATE_KEY] = {"run_key": run.ref.key, "state": LOADING}
            assert self._keys is not None
            self._keys.setdefault(run.ref.key, []).append(aim_run.hash)
        end = run.end_time_ms()
        # Aim stamps the close time as the end; the run's own end replaces it.
        resources = aim_run._resources
        resources.set_run_end_time = lambda: _set_end(resources.meta_run_tree, end)
        try:
            yield aim_run
        finally:
            aim_run.close()

    # -- the load -----------------------------------------------------------------------------------------
    def load_run(self, run: ArchivedRun, ctx: LoadContext) -> LoadResult:
        with self._lock:
            with self._open(run, ctx.replace) as aim_run:
                result = LoadResult(target_id=aim_run.hash)
                self._metadata(run, aim_run, result)
                self._params(run, aim_run, ctx, result)
                start_ms = run.start_time_ms() or 0
                decimals = self._series(run, aim_run, ctx, result, start_ms)
                self._files(run, aim_run, ctx, result, start_ms, decimals)
                aim_run[STATE_KEY] = {**self._state(run, COMPLETE),
                                      "step_decimals": {p: d for p, d in sorted(decimals.items()) if d}}
            self._index(result.target_id)
            return result

    def _state(self, run: ArchivedRun, state: str) -> dict[str, Any]:
        return {"run_key": run.ref.key, "project_id": run.ref.project_id, "run_id": run.ref.run_id,
                "mapping_version": MAPPING_VERSION, "state": state}

    def _index(self, run_hash: str) -> None:
        """Put the finished run in Aim's index, which the SDK's `Repo.iter_runs` and the UI read (`aim up` would do it
        too, when it next runs)."""
        from aim.sdk.index_manager import RepoIndexManager

        try:
            RepoIndexManager.get_index_manager(self.repo).index(run_hash)
        except Exception as exc:  # another process (`aim up`) holds the index: it indexes the run itself
            log.warning("Aim run %s is not indexed yet (%s): `aim up` indexes it", run_hash, exc)

    def _metadata(self, run: ArchivedRun, aim_run: Any, result: LoadResult) -> None:
        from aim.storage.structured.sql_engine.entities import session_commit_or_flush

        aim_run[STATE_KEY] = self._state(run, LOADING)
        aim_run.name = run_name(run)
        aim_run.experiment = experiment_name(run)
        description = run.atom_value("sys/description")
        aim_run.description = str(description) if description else ""
        for tag in sorted(set(run_tags(run)) - set(aim_run.tags)):
            aim_run.add_tag(tag)
        if dropped := dropped_tags(run):
            result.approx("aim_empty_tag_dropped", dropped)
        start = run.start_time_ms()
        if start is not None:
            # Aim takes its creation time from the clock; its SQL row is the only place that holds it.
            aim_run.props._model.created_at = datetime.fromtimestamp(start / 1000, UTC).replace(tzinfo=None)
            session_commit_or_flush(aim_run.props._session)
        if run.atom_value("sys/failed"):
            result.approx("aim_failed_state_as_param")

    def _params(self, run: ArchivedRun, aim_run: Any, ctx: LoadContext, result: LoadResult) -> None:
        for path, atom in sorted(run.atoms().items()):
            if not path.startswith("sys/") and not ctx.wants_attribute(path, atom.type):
                continue
            value, kind = param_value(atom.type, atom.value)
            if kind:
                result.approx(kind)
            aim_run[path] = value

    # -- sequences ----------------------------------------------------------------------------------------
    def _scales(self, run: ArchivedRun, ctx: LoadContext) -> dict[str, int]:
        """Pass one: the decimals each series' steps need (mapping.step_decimals)."""
        steps: dict[str, list[Decimal]] = defaultdict(list)
        for batch in run.batches(SERIES_WITH_STEPS, ["attribute_path", "attribute_type", "step", "step_exact"]):
            d = batch.to_pydict()
            for path, type_, step, exact in zip(d["attribute_path"], d["attribute_type"], d["step"], d["step_exact"],
                                                strict=True):
                if ctx.wants_attribute(path, type_):
                    steps[path].append(exact_step(step, exact))
        return {path: step_decimals(s) for path, s in steps.items()}

    def _series(self, run: ArchivedRun, aim_run: Any, ctx: LoadContext, result: LoadResult,
                start_ms: int) -> dict[str, int]:
        from aim import Distribution, Text

        decimals = self._scales(run, ctx)
        seen: dict[str, set[int]] = defaultdict(set)
        track = aim_run._tracker._track  # the one call that takes the point's own time
        for batch in run.batches(["float_series", "string_series", "histogram_series"], _SERIES_COLUMNS):
            if ctx.stop_requested():
                ctx.save_checkpoint({"rewrite": True})
            rows = batch.to_pydict()
            points = 0
            for i, path in enumerate(rows["attribute_path"]):
                type_ = rows["attribute_type"][i]
                if not ctx.wants_attribute(path, type_):
                    continue
                step, rounded = scaled_step(exact_step(rows["step"][i], rows["step_exact"][i]), decimals[path])
                if rounded:
                    result.approx("aim_step_rounded")
                if step in seen[path]:
                    result.approx("aim_duplicate_step_kept_last")
                seen[path].add(step)
                if rows["timestamp"][i] is None:
                    result.approx("aim_timestamp_missing_used_start_time")
                when = seconds(ms_of(rows["timestamp"][i], start_ms))
                if type_ == "float_series":
                    value: Any = float(rows["float_value"][i])
                elif type_ == "string_series":
                    value = Text(rows["string_value"][i] or "")
                else:
                    value = _distribution(Distribution, rows["histogram_value"][i], result)
                    if value is None:
                        continue
                track(value, when, path, step, None, context={})
                points += 1
            result.points += points
            ctx.on_points(points)
        if scaled := sum(1 for d in decimals.values() if d):
            result.approx("aim_steps_scaled", scaled)
        return decimals

    def _files(self, run: ArchivedRun, aim_run: Any, ctx: LoadContext, result: LoadResult, start_ms: int,
               decimals: dict[str, int]) -> None:
        from aim import Image

        aim_run.set_artifacts_uri(self.artifacts_uri)
        cols = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "file_value", "file_name"]
        track = aim_run._tracker._track
        for batch in run.batches(FILE_LIKE_TYPES, cols):
            for row in batch.to_pylist():
                path, type_ = row["attribute_path"], row["attribute_type"]
                if not ctx.wants_attribute(path, type_):
                    continue
                if not (row["file_value"] or {}).get("path"):
                    result.approx("file_row_without_path")
                    continue
                source = run.file_path(row["file_value"]["path"])
                if not source.exists():
                    result.approx("file_missing")
                    continue
                for local, entry in payload_entries(source, row["file_name"]):
                    size = local.stat().st_size
                    if not ctx.wants_file(path, entry, size):
                        continue
                    aim_run.log_artifact(str(local), payload_name(path, type_, row["step"], row["step_exact"], entry),
                                         block=True)
                    result.files += 1
                    result.bytes += size
                    ctx.on_bytes(size)
                    if type_ == "file_series" and is_image(entry):
                        if not decodable_image(local):
                            result.approx("aim_undecodable_image_kept_as_file")
                            continue
                        step, _ = scaled_step(exact_step(row["step"], row["step_exact"]), decimals.get(path, 0))
                        when = seconds(ms_of(row["timestamp"], start_ms))
                        track(Image(str(local), caption=entry), when, path, step, None, context={})


def _distribution(factory: Any, hist: dict[str, Any] | None, result: LoadResult) -> Any:
    """An Aim distribution of a Neptune histogram: its counts over evenly spaced bins from the first to the last edge
    (what Aim draws), with Neptune's exact edges kept in the object beside them."""
    if not hist or not hist.get("values"):
        result.approx("aim_empty_histogram_skipped")
        return None
    values = [float(v) for v in hist["values"]]
    edges = [float(e) for e in hist.get("edges") or []] or [0.0, float(len(values))]
    dist = factory(hist=values, bin_range=(edges[0], edges[-1]))
    dist.storage["edges"] = edges
    dist.storage["neptune_type"] = hist.get("type") or ""
    if not even_edges(edges, len(values)):
        result.approx("aim_histogram_uneven_edges_drawn_even")
    return dist


def _set_end(meta_run_tree: Any, end_ms: int | None) -> None:
    meta_run_tree["end_time"] = seconds(end_ms) if end_ms is not None else datetime.now(UTC).timestamp()
