"""Per-run work on a cluster's workers: picklable functions of picklable inputs.

The driver ships a `Plan` (plug-in names, their options dataclasses and settings, the selection, the archive's
location, the ledger's URI) and one run reference per task, never an open object. Each worker process opens its
ledger, target, verifier, source and archive once, lazily, on the first task that needs them (`_opened`, keyed by
what they were opened from) and reuses them for every later run. Workers write their runs' rows (start, checkpoints,
finish or fail) into the shared PostgreSQL ledger themselves, so a driver killed at any moment loses nothing: the
next driver reads from the ledger what is done, and a run still held by a worker is waited for, not doubled.

Whatever a worker returns is plain data (outcomes, counts, the worker's address); a failed attempt raises
`AttemptFailed`, so the engine tries the run on another worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from neptune_migration import plugins
from neptune_migration.archive import Archive, ArchiveWriter, is_remote
from neptune_migration.checks import ERROR, RunCheck
from neptune_migration.errors import describe
from neptune_migration.executors import AttemptFailed, Done, Engine, FailedOnWorkers, current_worker
from neptune_migration.ledger import Ledger, RunClaimed, open_ledger
from neptune_migration.secrets import redact
from neptune_migration.selection import Selection
from neptune_migration.stages.export import EXPORT, ExportOutcome, export_one
from neptune_migration.stages.load import LOAD, RunOutcome, _load_one
from neptune_migration.stages.runner import run_pool
from neptune_migration.stages.validate import VALIDATE, validate_run, verifier_for
from neptune_migration.targets.base import TargetSettings
from neptune_migration.vocabulary import RunRef

log = logging.getLogger("neptune_migration")


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to open what a run's work uses. Picklable; holds no open object."""

    ledger: str  # the PostgreSQL URI (its password is registered for redaction wherever it is opened)
    selection: Selection
    archive: str  # an object-store URL or an absolute path every worker can read
    files: str | None = None
    target: str | None = None
    target_options: Any = None
    settings: TargetSettings = field(default_factory=TargetSettings)
    source: str | None = None
    source_options: Any = None
    projects: tuple[str, ...] = ()
    refresh: bool = False


@dataclass
class Cluster:
    """The driver's side: the engine the runs go to, and the plan every task carries. The stages call these
    methods in place of their local thread pools; each yields the same outcomes a local run would."""

    engine: Engine
    plan: Plan

    def _runs(self, task: Callable[..., Done], refs: list[Any], name: str, ledger: Ledger, stage: str,
              target: str, tracker: Any, workers: dict[str, str],
              failed: Callable[[Any, str, str], Any], targets: dict[str, str] | None = None) -> Iterator[Any]:
        def on_error(item: Any, exc: BaseException) -> Any:
            ref = getattr(item, "ref", item)
            where = failed_stage(exc, stage)
            return failed(item, record_failure(ledger, ref, where, (targets or {}).get(where, target), exc), where)

        tracker.note(f"workers connected: {self.engine.workers()}")
        for done in run_pool(refs, partial(task, self.plan), 1, name, ledger, engine=self.engine, on_error=on_error):
            if isinstance(done, Done):
                value = done.value
                workers[_key(value)] = done.worker
            else:
                value = done
            tracker.note(f"workers connected: {self.engine.workers()}")
            yield value

    def load(self, runs: list[Any], ledger: Ledger, target: str, tracker: Any,
             workers: dict[str, str], replace: bool = False) -> Iterator[RunOutcome]:
        """`replace`: the target's copy of each run is replaced (a refresh, a run made stale by a later one)."""
        if not runs:
            return
        task = partial(load_task, replace=True) if replace else load_task
        for outcome in self._runs(task, [run.ref for run in runs], "load", ledger, LOAD, target, tracker,
                                  workers, lambda ref, error, _stage: RunOutcome(ref.key, "failed", error=error)):
            if outcome.result is not None:
                tracker.add_points(outcome.result.points)
                tracker.add_bytes(outcome.result.bytes)
            yield outcome

    def validate(self, runs: list[Any], ledger: Ledger, target: str, tracker: Any,
                 workers: dict[str, str]) -> Iterator[RunCheck]:
        yield from self._runs(validate_task, [run.ref for run in runs], "validate", ledger, VALIDATE, target,
                              tracker, workers, lambda ref, error, _stage: RunCheck(ref, error=error))

    def export(self, listed: list[Any], ledger: Ledger, target: str, tracker: Any,
               workers: dict[str, str]) -> Iterator[ExportOutcome]:
        yield from self._runs(export_task, listed, "export", ledger, EXPORT, target, tracker, workers,
                              lambda item, error, _stage: ExportOutcome(item.ref.key, "failed", error=error))

    def migrate(self, listed: list[Any], ledger: Ledger, target: str, archive: str, tracker: Any,
                workers: dict[str, str], validate: bool, wait_for_parent: bool) -> Iterator[Migrated]:
        """Each listed run exported, loaded and read back by one task; a run every attempt failed comes back with
        the failure in the stage where it happened."""
        def failed(item: Any, error: str, stage: str) -> Migrated:
            key = item.ref.key
            if stage == EXPORT:
                return Migrated(ExportOutcome(key, "failed", error=error))
            exported = ExportOutcome(key, "exported")
            if stage == LOAD:
                return Migrated(exported, RunOutcome(key, "failed", error=error))
            return Migrated(exported, RunOutcome(key, "loaded"), RunCheck(item.ref, error=error))

        task = partial(migrate_task, validate=validate, wait_for_parent=wait_for_parent)
        yield from self._runs(task, listed, "migrate", ledger, LOAD, target, tracker, workers, failed,
                              targets={EXPORT: archive, LOAD: target, VALIDATE: target})


def _key(value: Any) -> str:
    if isinstance(value, RunCheck):
        return value.ref.key
    if isinstance(value, Migrated):
        return value.exported.key
    return str(value.key)


def location(path: str | Path | None) -> str | None:
    """An archive location as every worker must see it: object-store URLs as given, folders made absolute (a
    worker's working directory is not the driver's)."""
    if path is None:
        return None
    text = str(path)
    return text if is_remote(text) else str(Path(text).expanduser().resolve())


# -- what a worker process opens once -------------------------------------------------------------------
_opened: dict[tuple[Any, ...], Any] = {}
_opening = threading.RLock()  # a verifier opens its target inside


def _once(key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    with _opening:  # also keeps two tasks of one worker from opening the same target twice
        if key not in _opened:
            _opened[key] = make()
        return _opened[key]


def _ledger(plan: Plan) -> Ledger:
    return _once(("ledger", plan.ledger), lambda: open_ledger(plan.ledger))  # type: ignore[no-any-return]


def _target_key(plan: Plan) -> tuple[Any, ...]:
    return ("target", plan.target, repr(plan.target_options), plan.settings)


def _target(plan: Plan) -> Any:
    def make() -> Any:
        assert plan.target is not None
        target = plugins.target(plan.target).build(plan.target_options, plan.settings)
        target.check()
        return target

    return _once(_target_key(plan), make)


def _verifier(plan: Plan) -> Any:
    return _once(("verifier", *_target_key(plan)), lambda: verifier_for(_target(plan)))


def _archive(plan: Plan) -> Archive:
    return _once(("archive", plan.archive, plan.files), lambda: Archive(plan.archive, plan.files))  # type: ignore


def _writer(plan: Plan) -> ArchiveWriter:
    def make() -> ArchiveWriter:
        if not is_remote(plan.archive):
            Path(plan.archive).mkdir(parents=True, exist_ok=True)
        return ArchiveWriter(plan.archive)

    return _once(("writer", plan.archive), make)  # type: ignore[no-any-return]


def _source(plan: Plan) -> Any:
    def make() -> Any:
        assert plan.source is not None
        return plugins.source(plan.source).build(plan.source_options, list(plan.projects), plan.selection)

    return _once(("source", plan.source, repr(plan.source_options), plan.projects, repr(plan.selection)), make)


class _Quiet:
    """The tracker a worker hands the stage code: counts travel back in the outcome, not through calls."""

    def add_points(self, n: int) -> None:
        pass

    def add_bytes(self, n: int) -> None:
        pass


# -- the tasks ------------------------------------------------------------------------------------------
def probe(plan: Plan, write: bool) -> tuple[str, str | None]:
    """On one worker, before any run is handed out: can it open the ledger, the archive and the target?
    Returns (worker, the first problem or None)."""
    worker = current_worker()
    steps: list[tuple[str, Callable[[], Any]]] = [("open the ledger", lambda: _ledger(plan))]
    if write:
        steps.append((f"write the archive {plan.archive}", lambda: _writer(plan)))
    else:
        steps.append((f"read the archive {plan.archive}", lambda: _archive(plan)))
    if plan.target is not None:
        steps.append((f"reach the target ({plan.target})", lambda: _target(plan)))
    if plan.source is not None:
        steps.append((f"open the source ({plan.source})", lambda: _source(plan).check()))
    for what, step in steps:
        try:
            step()
        except Exception as exc:
            return worker, f"cannot {what}: {redact(describe(exc))}"
    return worker, None


def load_task(plan: Plan, ref: RunRef, replace: bool = False) -> Done:
    worker = current_worker()
    run = _archive(plan).run(ref)
    if run is None:
        raise AttemptFailed(f"run {ref.key} is not complete in the archive as this worker sees it", worker)
    outcome = _load_one(run, _target(plan), plan.selection, _ledger(plan), _Quiet(), replace,  # type: ignore
                        extra={"worker": worker})
    if outcome.status == "failed":
        raise AttemptFailed(outcome.error or "failed", worker, LOAD)
    return Done(outcome, worker)


def validate_task(plan: Plan, ref: RunRef) -> Done:
    worker = current_worker()
    run = _archive(plan).run(ref)
    if run is None:
        raise AttemptFailed(f"run {ref.key} is not complete in the archive as this worker sees it", worker)
    check = validate_run(run, _verifier(plan), plan.selection, _ledger(plan), _target(plan).canonical)
    if check.status == ERROR:  # a read-back that failed (network, server): another worker may get through
        raise AttemptFailed(check.error or "read-back failed", worker, VALIDATE)
    return Done(check, worker)


def export_task(plan: Plan, listed: Any) -> Done:
    worker = current_worker()
    outcome = export_one(listed, _source(plan), _writer(plan), _ledger(plan), plan.refresh)
    if outcome.status == "failed":
        raise AttemptFailed(outcome.error or "failed", worker, EXPORT)
    return Done(outcome, worker)


@dataclass
class Migrated:
    """One run through export, load and (optionally) validate on one worker."""

    exported: ExportOutcome
    loaded: RunOutcome | None = None
    check: RunCheck | None = None
    waits_for: str | None = None  # its parent's key: loaded once the parent has settled


def migrate_task(plan: Plan, listed: Any, validate: bool, wait_for_parent: bool) -> Done:
    """Export, load and read back one run on this worker: one task per run, so the three stages overlap across
    runs as every worker works on its own. A fork whose parent has not been loaded yet comes back `waits_for`
    (the driver sends it again once the parent settled) unless `wait_for_parent` is off."""
    worker = current_worker()
    ledger, writer, target = _ledger(plan), _writer(plan), _target(plan)
    canonical = target.canonical
    exported = export_one(listed, _source(plan), writer, ledger, plan.refresh)
    if exported.status == "failed":
        raise AttemptFailed(exported.error or "failed", worker, EXPORT)
    run = writer.archived(listed.ref)
    if run is None:
        raise AttemptFailed(f"run {listed.ref.key} is missing from the archive after export", worker, EXPORT)
    parent = run.atom_value("sys/forking/parent")
    parent_key = f"{listed.ref.project_id}/{parent}" if parent else None
    if (wait_for_parent and parent_key and parent_key != listed.ref.key
            and not ledger.is_done(RunRef(listed.ref.project_id, str(parent)), LOAD, canonical)):
        return Done(Migrated(exported, waits_for=parent_key), worker)
    replace = exported.status == "exported" and plan.refresh and ledger.get(listed.ref, LOAD, canonical) is not None
    if replace:  # changed in Neptune since it was loaded: its target copy is replaced, not patched
        ledger.reset(listed.ref, LOAD, canonical)
    loaded = _load_one(run, target, plan.selection, ledger, _Quiet(), replace, extra={"worker": worker})  # type: ignore
    if loaded.status == "failed":
        raise AttemptFailed(loaded.error or "failed", worker, LOAD)
    check = None
    if validate:
        check = validate_run(run, _verifier(plan), plan.selection, ledger, canonical)
        if check.status == ERROR:
            raise AttemptFailed(check.error or "read-back failed", worker, VALIDATE)
    return Done(Migrated(exported, loaded, check), worker)


# -- the driver's side ----------------------------------------------------------------------------------
def check_workers(cluster: Cluster, write: bool) -> str:
    """Ask one worker whether it can open what the runs need; a clear error before any run is handed out."""
    from neptune_migration.errors import UsageError

    worker, problem = cluster.engine.submit(probe, cluster.plan, write).result()
    if problem is not None:
        hint = ("" if is_remote(cluster.plan.archive) else
                " (with --cluster the archive must be on object storage, s3://... or gs://..., or a path every "
                "worker can read)")
        raise UsageError(f"worker {worker} {problem}{hint}")
    return worker


def failure_message(exc: BaseException) -> str:
    if isinstance(exc, FailedOnWorkers):
        return redact(str(exc))
    return redact(describe(exc))


def record_failure(ledger: Ledger, ref: RunRef, stage: str, target: str, exc: BaseException) -> str:
    """The driver's verdict on a run every attempt failed: the ledger names each worker and its error."""
    message = failure_message(exc)
    log.error("run %s failed to %s: %s", ref.key, stage, message)
    try:
        if ledger.get(ref, stage, target) is None:
            ledger.start(ref, stage, target)
        ledger.fail(ref, stage, target, message)
    except RunClaimed:  # a worker still holds it (a task that outlived its driver's view): its own row stands
        pass
    return message


def failed_stage(exc: BaseException, default: str) -> str:
    return getattr(exc, "stage", None) or default
