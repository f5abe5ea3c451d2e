"""`migrate` as a pipeline: export, load and validate run side by side, each stage with its own workers.

One coordinating thread hands runs from stage to stage; each stage has a pool of its own size and is only
given work while it has a free worker. Between two stages at most `buffer` runs wait, and an upstream
stage stops taking new runs while its downstream buffer is full. So run N+1 exports while run N loads and
run N-1 is read back, and what is held in memory is bounded by the worker counts, not by the project.

A fork waits for its parent's load (when the parent is in the same migration) so the target can link the
two; a cycle or a parent that failed does not block it for ever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from neptune_migration import interrupt
from neptune_migration.archive import ArchivedRun, ArchiveWriter
from neptune_migration.checks import ERROR
from neptune_migration.errors import Interrupted
from neptune_migration.ledger import Ledger, RunClaimed
from neptune_migration.plugins import target as target_plugin
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages import converge
from neptune_migration.stages.export import (
    ExportOutcome,
    ExportSummary,
    Source,
    archive_key,
    export_one,
    list_selected,
    make_project_folders,
)
from neptune_migration.stages.load import (
    LOAD,
    LoadSummary,
    RunOutcome,
    _gap,
    _load_one,
    outdated,
    reload_stale,
)
from neptune_migration.stages.runner import (
    POLL_SECONDS,
    RunStopped,
    Stopped,
    abandon,
    claimed_delay,
    run_pool,
    settle_after_stop,
)
from neptune_migration.stages.sync import UNCHANGED, SyncPlan, plan_sync, sync_load
from neptune_migration.stages.validate import ValidationSummary, validate_run, verifier_for
from neptune_migration.targets.base import Target

log = logging.getLogger("neptune_migration")


@dataclass
class Workers:
    """Runs in flight per stage. Downloads and uploads inside a run have their own counts on the source and
    the target (`--download-workers`, `--upload-workers`)."""

    export: int = 4
    load: int = 4
    validate: int = 4

    @property
    def buffer(self) -> int:
        # Enough exported runs waiting that a loader never idles while an exporter finishes, few enough that
        # a crash leaves little exported-but-not-loaded work behind.
        return max(2, self.load * 2)


@dataclass
class StageClock:
    """Seconds per stage, summed over that stage's workers, and the wall time of the whole migration.

    `overhead` is everything that is not moving data: listing the source, the ledger's work (CPU seconds of its
    calls), and the coordinator's own bookkeeping. The scale benchmark reports it as a share of the wall time.
    `ledger_held` is the wall time the ledger was held, which under many busy threads is mostly the holder
    waiting for the interpreter lock: reported, not counted.
    """

    wall: float = 0.0
    listing: float = 0.0
    export: float = 0.0
    load: float = 0.0
    validate: float = 0.0
    ledger: float = 0.0
    ledger_held: float = 0.0
    coordinator: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            setattr(self, stage, getattr(self, stage) + seconds)

    @property
    def overhead(self) -> float:
        return self.listing + self.ledger + self.coordinator

    def to_dict(self) -> dict[str, float]:
        keys = ("wall", "listing", "export", "load", "validate", "ledger", "ledger_held", "coordinator")
        return {k: round(getattr(self, k), 3) for k in keys} | {"overhead": round(self.overhead, 3)}


@dataclass
class MigrationResult:
    exported: ExportSummary
    loaded: LoadSummary
    validated: Any = None  # validation.ValidationSummary when the pipeline validated
    clock: StageClock = field(default_factory=StageClock)


@dataclass
class _Exported:
    outcome: ExportOutcome
    run: ArchivedRun | None = None
    replace: bool = False
    already_loaded: bool = False
    parent: str | None = None  # run key of the run this one was forked from
    sync: SyncPlan | None = None  # `--sync` of a run migrated before: append its new parts (or replace it)


def refuse_elsewhere(runs: list[Any], writer: ArchiveWriter, target: Target, ledger: Ledger, canonical: str) -> None:
    """Before anything is written: runs loaded earlier at another place (another MLflow experiment layout or
    prefix) are refused in one line; `load --relocate` on this archive moves them."""
    options: str | None = None  # the placement options, from the first run read (they do not depend on the run)
    archived = []
    for ref in (run.ref for run in runs):
        if not converge.may_be_elsewhere(ledger, canonical, ref, options):
            continue  # placed by these same options: its place is this one, no need to read it
        run = writer.archived(ref)
        if run is not None:
            archived.append(run)
            place = converge.placement(target, run)
            options = place.options if place is not None else options
    found = converge.find_elsewhere(archived, target, ledger, canonical, LOAD)
    if found:
        raise converge.refusal(found, target.name, f"neptune-migrate load --archive {writer.root}")


def run_pipeline(
    source: Source,
    writer: ArchiveWriter,
    target: Target,
    selection: Selection,
    ledger: Ledger,
    tracker_factory: Callable[[int], Tracker],
    workers: Workers | None = None,
    refresh: bool = False,
    validate: bool = True,
    sync: bool = False,
    cluster: Any = None,
) -> MigrationResult:
    """Export every selected run, load it, and (with `validate`) read it back, all three stages overlapping.
    `cluster` (a `stages.remote.Cluster`): each run goes through the three stages as one task on a worker."""
    workers = workers or Workers()
    clock = StageClock()
    started = time.monotonic()
    ledger_before = ledger.cpu_seconds, ledger.seconds
    source.check()
    target.check()
    runs = list_selected(source)
    clock.listing = time.monotonic() - started
    canonical = target.canonical  # a property that may resolve paths: read once
    refuse_elsewhere(runs, writer, target, ledger, canonical)
    result = MigrationResult(ExportSummary(writer.root, listed=len(runs)), LoadSummary(target=canonical),
                             ValidationSummary(canonical) if validate else None, clock)
    make_project_folders(source, writer)
    if cluster is not None:
        _on_cluster(cluster, runs, writer, canonical, ledger, tracker_factory, result, validate)
        return _finish(result, clock, started, ledger, ledger_before)
    selected = {run.ref.key for run in runs}
    verifier = verifier_for(target) if validate else None

    def timed(stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            clock.add(stage, time.monotonic() - t0)

    mapping_version = target_plugin(target.name).mapping_version
    older: list[str] = []
    older_lock = threading.Lock()

    def export_task(run: Any) -> _Exported:
        if sync:
            planned = plan_sync(run, source, writer, ledger, canonical)
            if planned is not None:
                outcome, plan = planned
                if plan.kind == UNCHANGED or plan.run is None:
                    return _Exported(outcome)  # nothing to load: an unchanged run, or a failed export
                parent = plan.run.atom_value("sys/forking/parent")
                return _Exported(outcome, plan.run, sync=plan,
                                 parent=f"{run.ref.project_id}/{parent}" if parent else None)
        outcome = export_one(run, source, writer, ledger, refresh)
        if outcome.status == "failed":
            return _Exported(outcome)
        archived = writer.archived(run.ref)
        if archived is None:  # pragma: no cover - export_one just committed it
            outcome = ExportOutcome(run.ref.key, "failed", error="run missing from the archive after export")
            return _Exported(outcome)
        replace = outcome.status == "exported" and refresh and ledger.get(run.ref, LOAD, canonical) is not None
        if replace:
            # The run changed in Neptune since it was loaded: its target copy is replaced, not patched.
            ledger.reset(run.ref, LOAD, canonical)
        already = ledger.is_done(run.ref, LOAD, canonical)
        if already and not replace:
            gap = _gap(archived, target, selection, ledger)
            already = not (gap and gap.missing)  # this selection asks more than the target run holds
        if already and outdated(ledger, run.ref, canonical, mapping_version) is not None:
            if refresh:  # loaded with an older mapping of the target: replaced, as a changed run is
                replace, already = True, False
                ledger.reset(run.ref, LOAD, canonical)
            else:
                with older_lock:
                    older.append(run.ref.key)
        parent = archived.atom_value("sys/forking/parent")
        return _Exported(outcome, archived, replace, already,
                         f"{run.ref.project_id}/{parent}" if parent else None)

    def load_task(item: _Exported, tracker: Tracker) -> RunOutcome:
        assert item.run is not None
        if item.sync is not None:
            return sync_load(item.sync, target, selection, ledger, tracker, writer)
        if item.already_loaded:
            return RunOutcome(item.run.ref.key, "already_loaded")
        return _load_one(item.run, target, selection, ledger, tracker, replace=item.replace)

    to_export: deque[Any] = deque(runs)
    to_load: deque[_Exported] = deque()
    to_validate: deque[ArchivedRun] = deque()
    waiting_for_parent: dict[str, list[_Exported]] = {}
    loads_settled: set[str] = set()  # loaded, already there, or failed: a fork need not wait any more
    unlinked: set[str] = set()  # forks in a parent cycle: they load without waiting
    running: dict[Future[Any], tuple[str, Any]] = {}
    later: list[tuple[float, str, Any]] = []  # (not before, stage, item) of runs another driver held
    queues: dict[str, deque[Any]] = {"export": to_export, "load": to_load, "validate": to_validate}
    busy = {"export": 0, "load": 0, "validate": 0}

    def parent_pending(item: _Exported) -> str | None:
        key = item.parent
        if key is None or key == item.outcome.key or key not in selected or key in loads_settled or key in unlinked:
            return None
        return key

    def settle_load(key: str) -> None:
        loads_settled.add(key)
        to_load.extendleft(reversed(waiting_for_parent.pop(key, [])))

    pools = {
        "export": ThreadPoolExecutor(max(1, workers.export), thread_name_prefix="export"),
        "load": ThreadPoolExecutor(max(1, workers.load), thread_name_prefix="load"),
        "validate": ThreadPoolExecutor(max(1, workers.validate), thread_name_prefix="validate"),
    }

    def submit(stage: str, fn: Callable[..., Any], *args: Any) -> None:
        running[pools[stage].submit(timed, stage, fn, *args)] = (stage, args[0])
        busy[stage] += 1

    def settled(fut: Future[Any], tracker: Tracker) -> None:
        stage, given = running.pop(fut)  # the stage and the item it was handed
        busy[stage] -= 1
        exc = fut.exception()
        if isinstance(exc, RunStopped):
            return  # stopped at a checkpoint: `interrupted` in the ledger
        if isinstance(exc, RunClaimed):  # another driver holds it (a shared ledger): look again later
            later.append((time.monotonic() + claimed_delay(exc), stage, given))
            return
        value = fut.result()
        tracker.stage_done(stage)
        if stage == "export":
            result.exported.outcomes.append(value.outcome)
            if value.run is None:
                settle_load(value.outcome.key)
                tracker.run_done()
            else:
                to_load.append(value)
        elif stage == "load":
            result.loaded.outcomes.append(value)
            loaded_items.append(given)
            settle_load(value.key)
            if verifier is not None and value.status != "failed":
                to_validate.append(given.run)
            else:
                tracker.run_done()
        else:
            result.validated.checks.append(value)
            tracker.run_done()

    def interrupted() -> Interrupted:
        failed = len(result.exported.failed) + len(result.loaded.failed)
        if result.validated is not None:
            failed += result.validated.count(ERROR)
            done = len(result.validated.checks) - result.validated.count(ERROR)
        else:
            done = len(result.loaded.outcomes) - len(result.loaded.failed)
        return Interrupted("migrate", done, len(runs) - done - failed, failed)

    def reload_and_recheck(tracker: Tracker) -> None:
        """Runs loaded before a later run raised a setting they share (an MLflow experiment's step scale) are
        loaded again, and read back again, so the migration ends consistent."""
        if not any(o.result and o.result.stale for o in result.loaded.outcomes):
            return
        before = {o.key: o for o in result.loaded.outcomes}
        archived = {item.run.ref.key: item.run for item in loaded_items}
        reload_stale(list(archived.values()), result.loaded.outcomes,
                     lambda some: run_pool(some, lambda run: _load_one(run, target, selection, ledger, tracker,
                                                                       replace=True), workers.load, "load", ledger),
                     ledger, canonical, result.loaded.warnings)
        again = [archived[o.key] for o in result.loaded.outcomes
                 if before.get(o.key) is not o and o.status != "failed" and o.key in archived]
        if verifier is None or result.validated is None or not again:
            return
        rechecked = {c.ref.key: c for c in run_pool(
            again, lambda run: validate_run(run, verifier, selection, ledger, canonical), workers.validate,
            "validate", ledger)}
        result.validated.checks = [c for c in result.validated.checks if c.ref.key not in rechecked]
        result.validated.checks += list(rechecked.values())

    loaded_items: list[_Exported] = []
    unregister = interrupt.on_hard_exit(lambda: ledger.interrupt_running(timeout=1.0))
    stopped = False
    try:
        with tracker_factory(len(runs)) as tracker:
            while True:
                now = time.monotonic()
                for item in [item for item in later if item[0] <= now]:
                    later.remove(item)
                    queues[item[1]].append(item[2])
                if interrupt.requested() and (running or to_export or to_load or to_validate or waiting_for_parent
                                              or later):
                    # Hand out nothing more; what is in flight gets the grace period, then is marked interrupted.
                    stopped = True
                    for fut in settle_after_stop(list(running), ledger):
                        settled(fut, tracker)
                    raise interrupted()
                t0 = time.monotonic()
                while to_validate and verifier is not None and busy["validate"] < workers.validate:
                    submit("validate", validate_run, to_validate.popleft(), verifier, selection, ledger, canonical)
                while to_load and busy["load"] < workers.load and len(to_validate) < workers.buffer:
                    item = to_load.popleft()
                    parent = parent_pending(item)
                    if parent is not None:
                        waiting_for_parent.setdefault(parent, []).append(item)
                        continue
                    submit("load", load_task, item, tracker)
                while (to_export and busy["export"] < workers.export
                       and len(to_load) + busy["export"] < workers.buffer + workers.export):
                    submit("export", export_task, to_export.popleft())
                if not running:
                    if later:
                        time.sleep(POLL_SECONDS)
                        continue
                    if waiting_for_parent:
                        # Whatever still waits has a parent that will never load here (a cycle): load it unlinked.
                        unlinked.update(waiting_for_parent)
                        for items in waiting_for_parent.values():
                            to_load.extend(items)
                        waiting_for_parent.clear()
                        continue
                    break
                clock.add("coordinator", time.monotonic() - t0)
                # A timeout, so that a stop request is seen while every worker is busy with a long run.
                done, _ = wait(running, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                t0 = time.monotonic()
                for fut in done:
                    settled(fut, tracker)
                clock.add("coordinator", time.monotonic() - t0)
            reload_and_recheck(tracker)
    except Stopped:
        stopped = True
        raise interrupted() from None
    except KeyboardInterrupt:
        # A second Ctrl-C when the caller is not the command line (a notebook): still no row left `running`.
        stopped = True
        abandon(list(running), ledger)
        raise
    finally:
        unregister()
        for pool in pools.values():
            # After a stop the runs left in flight are marked already: never wait for one that is stuck.
            pool.shutdown(wait=not stopped, cancel_futures=True)
        if verifier is not None and not interrupt.STOP.stragglers:
            verifier.close()
    if older:
        result.loaded.warnings.append(
            f"{len(older)} run(s) were loaded with an older mapping of {target.name} (this version writes mapping "
            f"{mapping_version}), e.g. {sorted(older)[0]}: migrate again with --refresh to bring them in line")
    return _finish(result, clock, started, ledger, ledger_before)


def _finish(result: MigrationResult, clock: StageClock, started: float, ledger: Ledger,
            ledger_before: tuple[float, float]) -> MigrationResult:
    result.exported.outcomes.sort(key=lambda o: o.key)
    result.loaded.outcomes.sort(key=lambda o: o.key)
    if result.validated is not None:
        result.validated.checks.sort(key=lambda c: c.ref)
    clock.wall = time.monotonic() - started
    clock.ledger = ledger.cpu_seconds - ledger_before[0]
    clock.ledger_held = ledger.seconds - ledger_before[1]
    result.exported.seconds = result.loaded.seconds = clock.wall
    if result.validated is not None:
        result.validated.seconds = clock.wall
    return result


def _on_cluster(cluster: Any, runs: list[Any], writer: ArchiveWriter, canonical: str, ledger: Ledger,
                tracker_factory: Callable[[int], Tracker], result: MigrationResult, validate: bool) -> None:
    """One task per run on the cluster's workers. A fork whose parent is in this migration and not loaded yet comes
    back waiting; it is sent again once a round has settled its parent, and unlinked only if no round can."""
    by_key = {run.ref.key: run for run in runs}
    pending, wait_for_parent = list(runs), True
    try:
        with tracker_factory(len(runs)) as tracker:
            while pending:
                waiting: list[Any] = []
                for done in cluster.migrate(pending, ledger, canonical, archive_key(writer.root), tracker,
                                            result.loaded.workers, validate, wait_for_parent):
                    if done.waits_for is not None:
                        waiting.append(by_key[done.exported.key])
                        continue
                    result.exported.outcomes.append(done.exported)
                    tracker.stage_done("export")
                    if done.loaded is not None:
                        result.loaded.outcomes.append(done.loaded)
                        tracker.stage_done("load")
                        if done.loaded.result is not None:
                            tracker.add_points(done.loaded.result.points)
                            tracker.add_bytes(done.loaded.result.bytes)
                    if done.check is not None and result.validated is not None:
                        result.validated.checks.append(done.check)
                        tracker.stage_done("validate")
                    tracker.run_done()
                # Parents settled this round: their forks go again, linked. None settled: a cycle, or parents outside
                # what this round could load; they go unlinked.
                wait_for_parent = len(waiting) < len(pending)
                pending = waiting
    except Stopped:
        failed = len(result.exported.failed) + len(result.loaded.failed)
        done_runs = len(result.loaded.outcomes) - len(result.loaded.failed)
        raise Interrupted("migrate", done_runs, len(runs) - done_runs - failed, failed) from None
    for key, worker in result.loaded.workers.items():
        result.exported.workers[key] = worker
        if result.validated is not None:
            result.validated.workers[key] = worker
