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
from neptune_migration.checks import ELSEWHERE, Verifier
from neptune_migration.errors import ArchiveError, Interrupted, UsageError
from neptune_migration.ledger import DONE, Entry, Ledger
from neptune_migration.plugins import target as target_plugin
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages import converge
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
    relocate: bool = False,
) -> LoadSummary:
    """Load the selected runs not yet done, and what a done run lacks of this selection (into the same target run).
    `refresh`: also replace the runs loaded with an older mapping version of the target (without it they are listed
    in the summary's warnings). `cluster` (a `stages.remote.Cluster`): each run is loaded by a task on the
    cluster's workers. Runs the target holds at another place (another MLflow experiment layout or prefix) are
    refused before anything is written, unless `relocate`: each is loaded at the new place, validated there, and
    only then are its old copies deleted."""
    started = time.monotonic()
    if relocate:
        converge.check_relocate(target.name)
    selected = select(archive, selection)
    runs, incomplete, not_selected = selected.runs, selected.incomplete, selected.not_selected
    elsewhere = converge.find_elsewhere(runs, target, ledger, target.canonical, LOAD)
    if elsewhere and not relocate:
        raise converge.refusal(elsewhere, target.name)
    moving = {e.run.ref.key: e for e in elsewhere}
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
    gaps: dict[str, converge.Gap] = {}
    for run in runs:
        if run.ref.key in moving:
            continue
        if ledger.is_done(run.ref, LOAD, target.canonical):
            loaded_with = outdated(ledger, run.ref, target.canonical, version)
            if loaded_with is not None and refresh:
                replace.add(run.ref.key)
                todo.append(run)
                continue
            if loaded_with is not None:
                older.append(run.ref.key)
            gap = _gap(run, target, selection, ledger)
            if gap is not None:
                gaps[run.ref.key] = gap
            if gap is not None and gap.missing:
                todo.append(run)  # this selection asks for more than the target run holds: it gets the rest
                continue
            summary.outcomes.append(RunOutcome(run.ref.key, "already_loaded"))
        else:
            todo.append(run)
    _gap_warnings(gaps, summary.warnings)
    if older:
        summary.warnings.append(f"{len(older)} run(s) were loaded with an older mapping of {target.name} (this "
                                f"version writes mapping {version}; see the docs' mapping versions), e.g. "
                                f"{older[0]}: load again with --refresh to bring them in line")
    # Stale: loaded earlier, and out of line with what this load's runs need (the target reloads them below).
    placing = todo + [e.run for e in elsewhere]
    stale = target_plugin(target.name).prepare(target, placing, selection.wants_attribute) if placing else []
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
        for _ in range(len(runs) - len(todo) - len(elsewhere)):
            tracker.run_done()
        try:
            # Forks wait for their parents, so a target can link them (MLflow's parentRunId, W&B's lineage).
            for wave in fork_waves(todo):
                for outcome in load_many(wave, lambda run: run.ref.key in replace):
                    summary.outcomes.append(outcome)
                    tracker.run_done()
            reload_stale(runs, summary.outcomes, lambda some: load_many(some, lambda _run: True), ledger,
                         target.canonical, summary.warnings, stale)
            for outcome in relocate_runs(elsewhere, target, selection, ledger, tracker):
                summary.outcomes.append(outcome)
                tracker.run_done()
        except Stopped:
            done = summary.count("loaded") + summary.count("already_loaded")
            failed = summary.count("failed")
            raise Interrupted(LOAD, done, len(runs) + len(selected.unreadable) - done - failed, failed) from None
    summary.outcomes.sort(key=lambda o: o.key)
    summary.seconds = time.monotonic() - started
    return summary


def _gap(run: ArchivedRun, target: Target, selection: Selection, ledger: Ledger) -> converge.Gap | None:
    place = converge.placement(target, run)
    return converge.gap(run, selection, ledger.loaded(run.ref, target.canonical), place.where if place else None)


def _gap_warnings(gaps: dict[str, converge.Gap], warnings: list[str]) -> None:
    """One line for the runs that hold more than this selection asks (nothing is deleted), one for those that
    get what they lacked."""
    stays = {key: gap for key, gap in gaps.items() if gap.stays}
    if stays:
        key = min(stays)
        parts = sum(len(g.stays) for g in stays.values())
        warnings.append(f"{len(stays)} run(s) hold {parts} part(s) this selection leaves out (e.g. {key}: "
                        f"{converge.describe_part(min(stays[key].stays))}); they stay in the target, nothing is "
                        "deleted")
    more = {key: gap for key, gap in gaps.items() if gap.missing}
    if more:
        key = min(more)
        log.info("%d run(s) loaded before get what this selection adds (e.g. %s: %s), in the same target runs",
                 len(more), key, converge.describe_part(min(more[key].missing)))


def relocate_runs(elsewhere: list[converge.Elsewhere], target: Target, selection: Selection, ledger: Ledger,
                  tracker: Tracker) -> Iterable[RunOutcome]:
    """`--relocate`: each run loaded afresh at the new place and validated there; only then are its old copies
    deleted. A copy that does not validate is deleted instead, and the old one stays: never two active copies."""
    if not elsewhere:
        return
    verifier = target_plugin(target.name).verifier(target)
    try:
        for moving in elsewhere:
            yield _relocate_one(moving, target, selection, ledger, tracker, verifier)
    finally:
        verifier.close()


def _relocate_one(moving: converge.Elsewhere, target: Target, selection: Selection, ledger: Ledger,
                  tracker: Tracker, verifier: Verifier) -> RunOutcome:
    run, canonical = moving.run, target.canonical
    outcome = _load_one(run, target, selection, ledger, tracker, replace=True, placing=False)
    if outcome.status != "loaded":
        return outcome
    _tell(verifier, ledger)
    check = verifier.verify(run, selection)
    # Its old copies are still there (deleted below): the one thing a good copy here may be told.
    others = check.mismatch_count - sum(1 for m in check.mismatches if m.kind == ELSEWHERE)
    if check.error is not None or others:
        verifier.discard(run)  # the new copy; the old ones stay where they were
        error = (f"the copy loaded at {moving.here.where} did not validate ({check.error or check.summary_line()}); "
                 f"it was deleted, the copy at {moving.copies[0].where} stays")
        ledger.fail(run.ref, LOAD, canonical, error)
        return RunOutcome(run.ref.key, "failed", error=error, seconds=outcome.seconds)
    gone = converge.remove_elsewhere(target, run, moving.here.where, ledger.identity())
    log.info("run %s moved to %s (%d old copy(ies) deleted)", run.ref.key, moving.here.where, len(gone))
    version = target_plugin(target.name).mapping_version
    ledger.record_loaded(run.ref, canonical, converge.as_record(moving.here), converge.record(run, selection, None),
                         version)
    return outcome


def _tell(verifier: Verifier, ledger: Ledger) -> None:
    """A verifier that looks for copies elsewhere flags those this migration made (`Copy.ours`)."""
    if hasattr(verifier, "migration"):
        verifier.migration = ledger.identity()  # type: ignore[attr-defined]


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
    extra: dict[str, Any] | None = None, placing: bool = True,
) -> RunOutcome:
    """`extra`: kept with the run's details in the ledger (a cluster records the worker that loaded it).
    A done run is loaded again only for what this selection adds to what its target run holds. `placing`: record
    where the run goes and what it holds (False: `--relocate`, which records it once the new copy validated)."""
    canonical = target.canonical
    place = converge.placement(target, run)
    loaded = ledger.loaded(run.ref, canonical)
    gap = None if replace else converge.gap(run, selection, loaded, place.where if place else None)
    if not replace and ledger.is_done(run.ref, LOAD, canonical) and not (gap and gap.missing):
        # Loaded meanwhile by another driver or worker on a shared ledger (this run was handed out again).
        return RunOutcome(run.ref.key, "already_loaded")
    if placing and loaded is None:
        # Before the first write, so a run left half-loaded is known to be there.
        ledger.record_loaded(run.ref, canonical, converge.as_record(place))
    held = gap.held if gap is not None else set()
    # A replaced run (refresh, a raised step scale) is written afresh with what it held too: nothing is lost.
    kept = _kept(run, loaded, place) if replace and placing else set()
    wants_attribute, wants_file = converge.keeping(selection, held | kept)

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
            wants_attribute=wants_attribute,
            wants_file=wants_file,
            replace=replace,
            held=held.__contains__,
            migration=ledger.identity(),
        )
        return target.load_run(run, ctx)

    try:
        done = attempt(ledger, run.ref, LOAD, canonical, work, "load")
    finally:
        run.release_files()  # payloads fetched from object storage: one run's worth of disk at a time
    if done.error is not None or done.value is None:
        return RunOutcome(run.ref.key, "failed", error=done.error, seconds=done.seconds)
    version = target_plugin(target.name).mapping_version
    details = _details(done.value) | {"mapping_version": version} | (extra or {})
    if held:
        details = _added(details, ledger.get(run.ref, LOAD, canonical))
    ledger.finish(run.ref, LOAD, canonical, done.value.target_id, details=details)
    if placing:
        earlier = loaded.selection if loaded is not None and (gap is not None or kept) else None
        ledger.record_loaded(run.ref, canonical, converge.as_record(place), converge.record(run, selection, earlier),
                             version)
    return RunOutcome(run.ref.key, "loaded", done.value, seconds=done.seconds)


def _kept(run: ArchivedRun, loaded: Any, place: Any) -> set[str]:
    """What a run about to be replaced holds at this place, per the ledger (nothing when it does not say)."""
    if loaded is None or not loaded.selection or not converge.same_place(loaded, place.where if place else None):
        return set()
    return converge.held_parts(run, loaded.selection)


def _added(details: dict[str, Any], before: Entry | None) -> dict[str, Any]:
    """The run's totals after a wider load added to it (the earlier load's counts plus this one's)."""
    earlier = (before.details if before else None) or {}
    return details | {k: int(earlier.get(k, 0)) + int(details.get(k, 0)) for k in ("points", "files", "bytes")}


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
