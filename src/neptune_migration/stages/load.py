"""The stages over a worker pool: select runs from an archive, load them into a target, record everything.

Every run ends in the ledger as done, skipped (with the reason), failed (with the full error) or, after Ctrl-C,
interrupted. A rerun skips what is done and resumes what is not, from the target's own checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from neptune_migration import interrupt
from neptune_migration.archive import Archive, ArchivedRun, IncompleteRun, UnreadableRun
from neptune_migration.errors import ArchiveError, Interrupted, UsageError
from neptune_migration.ledger import DONE, Entry, Ledger
from neptune_migration.plugins import target as target_plugin
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages.runner import Stopped, attempt, run_pool
from neptune_migration.targets.base import LoadContext, LoadResult, Target
from neptune_migration.vocabulary import RunRef, folder_name

log = logging.getLogger("neptune_migration")

LOAD = "load"


@dataclass
class RunOutcome:
    key: str
    status: str  # loaded, already_loaded, failed
    result: LoadResult | None = None
    error: str | None = None
    seconds: float = 0.0
    # `migrate --sync`: what the run gained at the source (points per series, atoms, files) or why it was replaced.
    sync: dict[str, Any] | None = None


@dataclass
class LoadSummary:
    target: str
    outcomes: list[RunOutcome] = field(default_factory=list)
    incomplete: list[IncompleteRun] = field(default_factory=list)
    not_selected: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
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
    refresh: bool = False,
    cluster: Any = None,
) -> LoadSummary:
    """Load the selected runs not yet done. `refresh`: also replace the runs loaded with an older mapping version
    of the target (without it they are listed in the summary's warnings). `cluster` (a `stages.remote.Cluster`):
    each run is loaded by a task on the cluster's workers."""
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
    replace: set[str] = set()
    version = target_plugin(target.name).mapping_version
    older: list[str] = []
    for run in runs:
        if ledger.is_done(run.ref, LOAD, target.canonical):
            loaded_with = outdated(ledger, run.ref, target.canonical, version)
            if loaded_with is not None and refresh:
                replace.add(run.ref.key)
                todo.append(run)
                continue
            if loaded_with is not None:
                older.append(run.ref.key)
            summary.outcomes.append(RunOutcome(run.ref.key, "already_loaded"))
        else:
            todo.append(run)
    if older:
        summary.warnings.append(f"{len(older)} run(s) were loaded with an older mapping of {target.name} (this "
                                f"version writes mapping {version}; see the docs' mapping versions), e.g. "
                                f"{older[0]}: load again with --refresh to bring them in line")
    # Stale: loaded earlier, and out of line with what this load's runs need (the target reloads them below).
    stale = target_plugin(target.name).prepare(target, todo, selection.wants_attribute) if todo else []
    def load_many(some: list[ArchivedRun], replacing: Callable[[ArchivedRun], bool]) -> Iterable[RunOutcome]:
        """Load `some` on the cluster or the local pool; `replacing(run)`: replace its copy in the target."""
        if cluster is None:
            return run_pool(some, lambda run: _load_one(run, target, selection, ledger, tracker,
                                                        replace=replacing(run)), workers, "load", ledger)
        return chain(cluster.load([r for r in some if not replacing(r)], ledger, target.canonical, tracker,
                                  summary.workers),
                     cluster.load([r for r in some if replacing(r)], ledger, target.canonical, tracker,
                                  summary.workers, replace=True))

    with tracker_factory(len(runs)) as tracker:
        for _ in range(len(runs) - len(todo)):
            tracker.run_done()
        try:
            # Forks wait for their parents, so a target can link them (MLflow's parentRunId, W&B's lineage).
            for wave in fork_waves(todo):
                for outcome in load_many(wave, lambda run: run.ref.key in replace):
                    summary.outcomes.append(outcome)
                    tracker.run_done()
            reload_stale(runs, summary.outcomes, lambda some: load_many(some, lambda _run: True), ledger,
                         target.canonical, summary.warnings, stale)
        except Stopped:
            done = summary.count("loaded") + summary.count("already_loaded")
            failed = summary.count("failed")
            raise Interrupted(LOAD, done, len(runs) + len(selected.unreadable) - done - failed, failed) from None
    summary.outcomes.sort(key=lambda o: o.key)
    summary.seconds = time.monotonic() - started
    return summary


def outdated(ledger: Ledger, ref: RunRef, target: str, version: int) -> int | None:
    """The mapping version a loaded run was loaded with, when older than `version` (None: current)."""
    entry = ledger.get(ref, LOAD, target)
    loaded_with = int(((entry.details if entry else None) or {}).get("mapping_version", 1))
    return loaded_with if loaded_with < version else None


def reload_stale(runs: list[ArchivedRun], outcomes: list[RunOutcome],
                 reload: Callable[[list[ArchivedRun]], Iterable[RunOutcome]], ledger: Ledger, target: str,
                 warnings: list[str], stale_before: list[RunRef] | None = None) -> None:
    """Load again the runs that later loads made stale (a target setting shared across runs, such as an MLflow
    experiment's step scale, rose after they were loaded). Runs not in this archive's selection cannot be
    reloaded here: they are marked failed in the ledger, so a load of their own archive redoes them."""
    by_key = {run.ref.key: run for run in runs}
    for _round in range(10):  # settings only grow, so this ends; the bound guards a target that disagrees
        stale = {ref.key: ref for o in outcomes if o.result for ref in o.result.stale}
        stale |= {ref.key: ref for ref in stale_before or ()}
        stale_before = None
        for o in outcomes:
            if o.result:
                o.result.stale = []
        here = [by_key[k] for k in sorted(stale) if k in by_key]
        for key in sorted(set(stale) - set(by_key)):
            if ledger.get(stale[key], LOAD, target) is not None:
                ledger.start(stale[key], LOAD, target)
                ledger.fail(stale[key], LOAD, target, "a later load raised a setting this run shares with its "
                            "experiment (its step scale); load its archive again to bring it in line")
            warnings.append(f"run {key} was loaded earlier with an older experiment step scale and is not in this "
                            "selection: load it again (validate reports it until then)")
        if not here:
            return
        log.info("%d run(s) loaded before their experiment's step scale rose: loading them again", len(here))
        for outcome in reload(here):
            outcomes[:] = [o for o in outcomes if o.key != outcome.key] + [outcome]


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
    details = _details(done.value) | {"mapping_version": target_plugin(target.name).mapping_version} | (extra or {})
    ledger.finish(run.ref, LOAD, canonical, done.value.target_id, details=details)
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
