"""The stages over a worker pool: select runs from an archive, load them into a target, record everything.

Every run ends in the ledger as done, skipped (with the reason), failed (with the full error) or, after Ctrl-C,
interrupted. A rerun skips what is done and resumes what is not, from the target's own checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from neptune_migration import interrupt
from neptune_migration.archive import Archive, ArchivedRun, IncompleteRun, UnreadableRun
from neptune_migration.errors import ArchiveError, Interrupted, UsageError
from neptune_migration.ledger import DONE, Entry, Ledger
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages.runner import Stopped, attempt, run_pool
from neptune_migration.targets.base import LoadContext, LoadResult, Target
from neptune_migration.vocabulary import folder_name

log = logging.getLogger("neptune_migration")

LOAD = "load"


@dataclass
class RunOutcome:
    key: str
    status: str  # loaded, already_loaded, failed
    result: LoadResult | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class LoadSummary:
    target: str
    outcomes: list[RunOutcome] = field(default_factory=list)
    incomplete: list[IncompleteRun] = field(default_factory=list)
    not_selected: int = 0
    seconds: float = 0.0
    workers: dict[str, str] = field(default_factory=dict)  # run key -> the cluster worker that loaded it

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[RunOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def points(self) -> int:
        return sum(o.result.points for o in self.outcomes if o.result)

    @property
    def files(self) -> int:
        return sum(o.result.files for o in self.outcomes if o.result)

    @property
    def bytes(self) -> int:
        return sum(o.result.bytes for o in self.outcomes if o.result)

    def approximations(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            if o.result:
                for kind, n in o.result.approximations.items():
                    out[kind] = out.get(kind, 0) + n
        return out


@dataclass
class Selected:
    runs: list[ArchivedRun]
    incomplete: list[IncompleteRun]
    # Runs the archive cannot read that the selection may mean: each fails alone, the others go on.
    unreadable: list[UnreadableRun]
    not_selected: int


def select(archive: Archive, selection: Selection) -> Selected:
    """The archive's complete runs that the selection matches, in a stable order; also the incomplete and the
    unreadable ones."""
    scan = archive.scan()
    projects = {r.ref.project_id for r in scan.runs} | {u.ref.project_id for u in scan.unreadable if u.ref}
    # A project whose only runs cannot even be identified is still "there": its runs are reported below.
    unnamed = {u.project_dir.name for u in scan.unreadable if u.ref is None}
    unknown = [p for p in selection.projects if p not in projects and folder_name(p) not in unnamed]
    if unknown:
        listed = ", ".join(sorted(projects)) or "none"
        raise UsageError(f"project {unknown[0]!r} is not in the archive (projects there: {listed})")
    chosen = []
    broken = list(scan.unreadable)
    for run in scan.runs:
        try:
            atoms = {path: atom.value for path, atom in run.atoms().items()}
        except ArchiveError as exc:  # a damaged part: this run fails alone
            broken.append(UnreadableRun(run.project_dir, folder_name(run.ref.run_id), str(exc), run.ref))
            continue
        if selection.matches_run(run.ref.project_id, run.ref.run_id, atoms):
            chosen.append(run)
        if selection.limit is not None and len(chosen) >= selection.limit:
            break
    unreadable = [u for u in broken if _may_be_selected(u, selection)]
    return Selected(chosen, scan.incomplete, unreadable, len(scan.runs) - len(chosen))


def _may_be_selected(run: UnreadableRun, selection: Selection) -> bool:
    """Its atoms cannot be read, so only the filters on ids can rule it out: when in doubt it is reported."""
    if run.ref is None:
        return not selection.projects or run.project_dir.name in {folder_name(p) for p in selection.projects}
    if selection.projects and run.ref.project_id not in selection.projects:
        return False
    return selection.runs is None or bool(selection.runs.search(run.ref.run_id))


def select_runs(archive: Archive, selection: Selection) -> tuple[list[ArchivedRun], list[IncompleteRun], int]:
    """`select` without the unreadable runs."""
    selected = select(archive, selection)
    return selected.runs, selected.incomplete, selected.not_selected


def record_unreadable(ledger: Ledger, run: UnreadableRun, stage: str, target: str) -> None:
    """A run that cannot be read fails in the ledger with its reason (when its ids are known at all)."""
    log.error("run %s cannot be read from the archive: %s", run.key, run.reason)
    if run.ref is not None:
        ledger.start(run.ref, stage, target)
        ledger.fail(run.ref, stage, target, run.reason)


def load(
    archive: Archive,
    target: Target,
    selection: Selection,
    ledger: Ledger,
    tracker_factory: Callable[[int], Tracker],
    workers: int = 4,
    cluster: Any = None,
) -> LoadSummary:
    """`cluster` (a `stages.remote.Cluster`): each run is loaded by a task on the cluster's workers."""
    started = time.monotonic()
    selected = select(archive, selection)
    runs, incomplete, not_selected = selected.runs, selected.incomplete, selected.not_selected
    for item in incomplete:
        log.warning(
            "incomplete run in archive (no part_0, export interrupted?): %s/%s", item.project_dir.name, item.run_folder
        )
    summary = LoadSummary(target=target.canonical, incomplete=incomplete, not_selected=not_selected)
    for bad in selected.unreadable:
        record_unreadable(ledger, bad, LOAD, target.canonical)
        summary.outcomes.append(RunOutcome(bad.key, "failed", error=bad.reason))
    todo = []
    for run in runs:
        if ledger.is_done(run.ref, LOAD, target.canonical):
            summary.outcomes.append(RunOutcome(run.ref.key, "already_loaded"))
        else:
            todo.append(run)
    with tracker_factory(len(runs)) as tracker:
        for _ in range(len(runs) - len(todo)):
            tracker.run_done()
        try:
            # Forks wait for their parents, so a target can link them (MLflow's parentRunId, W&B's lineage).
            for wave in fork_waves(todo):
                if cluster is not None:
                    outcomes = cluster.load(wave, ledger, target.canonical, tracker, summary.workers)
                else:
                    outcomes = run_pool(wave, lambda run: _load_one(run, target, selection, ledger, tracker),
                                        workers, "load", ledger)
                for outcome in outcomes:
                    summary.outcomes.append(outcome)
                    tracker.run_done()
        except Stopped:
            done = summary.count("loaded") + summary.count("already_loaded")
            failed = summary.count("failed")
            raise Interrupted(LOAD, done, len(runs) + len(selected.unreadable) - done - failed, failed) from None
    summary.outcomes.sort(key=lambda o: o.key)
    summary.seconds = time.monotonic() - started
    return summary


def fork_waves(runs: list[ArchivedRun]) -> list[list[ArchivedRun]]:
    """Runs grouped by fork depth within the selection: parents in an earlier wave than their forks."""
    by_key = {run.ref.key: run for run in runs}

    def depth(run: ArchivedRun, seen: frozenset[str]) -> int:
        parent = run.atom_value("sys/forking/parent")
        key = f"{run.ref.project_id}/{parent}" if parent else None
        if key is None or key not in by_key or key in seen:
            return 0
        return 1 + depth(by_key[key], seen | {key})

    waves: dict[int, list[ArchivedRun]] = {}
    for run in runs:
        waves.setdefault(depth(run, frozenset({run.ref.key})), []).append(run)
    return [waves[d] for d in sorted(waves)]


def _load_one(
    run: ArchivedRun, target: Target, selection: Selection, ledger: Ledger, tracker: Tracker, replace: bool = False,
    extra: dict[str, Any] | None = None,
) -> RunOutcome:
    """`extra`: kept with the run's details in the ledger (a cluster records the worker that loaded it)."""
    canonical = target.canonical
    if not replace and ledger.is_done(run.ref, LOAD, canonical):
        # Loaded meanwhile by another driver or worker on a shared ledger (this run was handed out again).
        return RunOutcome(run.ref.key, "already_loaded")

    def save_checkpoint(state: dict[str, Any]) -> None:
        ledger.save_checkpoint(run.ref, LOAD, canonical, state)
        # Just saved, so this is where a stopped run can unwind and later resume without losing anything.
        interrupt.checkpoint()

    def work(entry: Entry) -> LoadResult:
        ctx = LoadContext(
            checkpoint=entry.checkpoint,
            save_checkpoint=save_checkpoint,
            stop_requested=interrupt.requested,
            on_points=tracker.add_points,
            on_bytes=tracker.add_bytes,
            wants_attribute=selection.wants_attribute,
            wants_file=selection.wants_file,
            replace=replace,
        )
        return target.load_run(run, ctx)

    try:
        done = attempt(ledger, run.ref, LOAD, canonical, work, "load")
    finally:
        run.release_files()  # payloads fetched from object storage: one run's worth of disk at a time
    if done.error is not None or done.value is None:
        return RunOutcome(run.ref.key, "failed", error=done.error, seconds=done.seconds)
    ledger.finish(run.ref, LOAD, canonical, done.value.target_id, details=_details(done.value) | (extra or {}))
    return RunOutcome(run.ref.key, "loaded", done.value, seconds=done.seconds)


def _details(result: LoadResult) -> dict[str, Any]:
    return {
        "points": result.points,
        "files": result.files,
        "bytes": result.bytes,
        "approximations": result.approximations,
        "renamed": result.renamed,
        "warnings": result.warnings,
    }


__all__ = ["DONE", "LOAD", "LoadSummary", "RunOutcome", "Selected", "load", "select", "select_runs"]
