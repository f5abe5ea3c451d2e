"""`migrate --sync`: bring a target up to date with runs that kept changing in Neptune after their migration.

Per run, in the pipeline's export and load stages (stages/migrate.py):
- not exported or not loaded yet: migrated as `migrate` always does;
- `sys/modification_time` as recorded at the last export, and the target holds every archived part: unchanged,
  nothing read beyond the listing (which carries the modification time);
- changed: the source writes only what is new into one more archive part (archive/delta.py), and the target
  appends that part to the same target run (`Target.sync_run`);
- history that no append can reach (points gone, a series deleted, a different value at the last archived step):
  exported again whole and replaced in the target, as `--refresh` does, and named in the report.

Crash safety: the ledger's `sync_state` row says how many of the run's archive parts the target holds. It is
written before the first appended part exists, and moved forward only after the target acknowledged the part, so
a rerun after a crash loads exactly the parts the target lacks. A part is renamed into place whole (or not at all);
the source's delta is always taken from what the archive holds, so a part that landed is never fetched twice.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from neptune_migration import interrupt
from neptune_migration.archive import Archive, ArchivedRun, ArchiveWriter
from neptune_migration.archive.delta import DeltaWriter, Gained, HistoryRewritten, RunTip
from neptune_migration.checks import RunCheck
from neptune_migration.errors import Interrupted
from neptune_migration.ledger import DONE, Entry, Ledger
from neptune_migration.plugins import target as target_plugin
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages.export import EXPORT, ExportOutcome, archive_key, export_one
from neptune_migration.stages.load import LOAD, RunOutcome, _details, _load_one
from neptune_migration.stages.runner import Stopped, attempt, run_pool
from neptune_migration.stages.validate import VALIDATE, ValidationSummary, validate_run, verifier_for
from neptune_migration.targets.base import LoadContext, LoadResult, ReplaceNeeded, Target
from neptune_migration.vocabulary import RunRef

log = logging.getLogger("neptune_migration")

SYNC = "sync"

# Outcome statuses of a sync (beside export's exported / already_exported and load's loaded / failed).
UNCHANGED, SYNCED, REPLACED = "unchanged", "synced", "replaced"


def sync_key(canonical: str, writer: ArchiveWriter) -> str:
    """The sync_state rows are per target and archive: another archive is another record of the run."""
    return f"{canonical} {archive_key(writer.root)}"


@dataclass
class SyncPlan:
    kind: str  # UNCHANGED, SYNCED (parts to append), REPLACED (re-exported whole)
    run: ArchivedRun | None = None
    delta: ArchivedRun | None = None
    gained: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None


def plan_sync(run: Any, source: Any, writer: ArchiveWriter, ledger: Ledger, canonical: str
              ) -> tuple[ExportOutcome, SyncPlan] | None:
    """The export half of a sync for one listed run; None when the run is new here (migrate it as usual)."""
    akey = archive_key(writer.root)
    exported = ledger.get(run.ref, EXPORT, akey)
    loaded = ledger.get(run.ref, LOAD, canonical)
    if exported is None or loaded is None or loaded.status != DONE:
        return None
    if exported.status != DONE and not writer.has_run(run.ref):
        return None  # never exported whole here: the ordinary path
    # An export row that is not `done` over a loaded run is a sync's delta that failed or was interrupted: the
    # archive still holds the run complete, so this stays a sync (never a whole re-export the target would miss).
    skey = sync_key(canonical, writer)
    state = ledger.sync_state(run.ref, skey)
    if state is not None and loaded.updated_at > state.updated_at:
        # Loaded whole since the last sync (a `--refresh`, a `retry`): the target holds the archive as it is now.
        state = None
    before = (exported.details or {}).get("modification_time")
    now = getattr(run, "modification_time", None)
    same = exported.status == DONE and now is not None and before == now
    if same and (state is None or state.loaded_parts >= state.archive_parts):
        return ExportOutcome(run.ref.key, UNCHANGED), SyncPlan(UNCHANGED)
    archived = Archive(writer.root).run(run.ref)
    if archived is None:
        return None  # the archive lost the run: export it again
    if state is None:
        # Before anything is appended: the target holds every part the archive has now.
        ledger.set_sync_parts(run.ref, skey, archive_parts=len(archived.parts), loaded_parts=len(archived.parts))
        state = ledger.sync_state(run.ref, skey)
    assert state is not None
    gained = Gained()
    parts_before = len(archived.parts)
    if not same:
        try:
            gained = _export_delta(run, source, writer, ledger, akey, exported, archived)
        except HistoryRewritten as exc:
            reason = str(exc)
            log.warning("run %s: %s; exported again and replaced in the target", run.ref.key, reason)
            outcome = export_one(run, source, writer, ledger, refresh=True)
            if outcome.status == "failed":
                return outcome, SyncPlan(REPLACED, reason=reason)
            ledger.reset(run.ref, LOAD, canonical)
            full = Archive(writer.root).run(run.ref)
            return ExportOutcome(run.ref.key, REPLACED, outcome.stats), SyncPlan(REPLACED, full, reason=reason)
        except _ExportFailed as exc:
            return ExportOutcome(run.ref.key, "failed", error=str(exc)), SyncPlan(UNCHANGED)
        archived = Archive(writer.root).run(run.ref)
        assert archived is not None
        ledger.set_sync_parts(run.ref, skey, archive_parts=len(archived.parts), loaded_parts=state.loaded_parts)
    pending = archived.parts[state.loaded_parts:]
    if not pending:
        return ExportOutcome(run.ref.key, UNCHANGED), SyncPlan(UNCHANGED, gained=gained.to_dict())
    delta = dataclasses.replace(archived, parts=list(pending), _atoms=None, _ts_range=None, _fetched=set())
    gained_dict = gained.to_dict()
    if len(pending) > len(archived.parts) - parts_before:
        # Parts an interrupted sync appended and never loaded: what they hold is not known here, only that it lands.
        gained_dict["resumed"] = True
    return ExportOutcome(run.ref.key, SYNCED), SyncPlan(SYNCED, archived, delta, gained_dict)


class _ExportFailed(Exception):
    pass


def _export_delta(run: Any, source: Any, writer: ArchiveWriter, ledger: Ledger, akey: str, exported: Entry,
                  archived: ArchivedRun) -> Gained:
    export_delta = getattr(source, "export_delta", None)
    if export_delta is None:
        raise HistoryRewritten(f"the {getattr(source, 'name', 'source')} source cannot sync by appending")
    holder: dict[str, Any] = {}

    def work(_entry: Entry) -> Any:
        tip = RunTip.of(archived)
        delta = DeltaWriter(writer, run.ref, tip)
        stats = export_delta(run, delta)
        holder["gained"] = delta.gained
        return stats

    rewritten: list[HistoryRewritten] = []

    def guarded(entry: Entry) -> Any:
        try:
            return work(entry)
        except HistoryRewritten as exc:
            rewritten.append(exc)
            return None

    done = attempt(ledger, run.ref, EXPORT, akey, guarded, "export")
    if rewritten:
        raise rewritten[0]
    if done.error is not None:
        raise _ExportFailed(done.error)
    details = dict(exported.details or {})
    details["modification_time"] = getattr(run, "modification_time", None)
    ledger.finish(run.ref, EXPORT, akey, target_id=None, details=details)
    return holder["gained"]


def sync_load(plan: SyncPlan, target: Target, selection: Selection, ledger: Ledger, tracker: Tracker,
              writer: ArchiveWriter) -> RunOutcome:
    """The load half: append the pending parts to the same target run, or replace it."""
    assert plan.run is not None
    run = plan.run
    canonical = target.canonical
    skey = sync_key(canonical, writer)
    if plan.kind == REPLACED:
        outcome = _load_one(run, target, selection, ledger, tracker, replace=True)
        if outcome.status == "loaded":
            ledger.start(run.ref, SYNC, canonical)  # the report reads why from here
            ledger.finish(run.ref, SYNC, canonical, outcome.result.target_id if outcome.result else None,
                          details={"replaced": plan.reason})
            ledger.record_sync(run.ref, skey, len(run.parts), {"replaced": plan.reason})
            outcome.status = REPLACED
            outcome.sync = {"replaced": plan.reason}
        return outcome
    assert plan.delta is not None
    delta = plan.delta
    sync_run = target_plugin(target.name).sync_run

    def save_checkpoint(state: dict[str, Any]) -> None:
        ledger.save_checkpoint(run.ref, SYNC, canonical, state)
        interrupt.checkpoint()

    replace: list[str] = []
    stale: list[RunRef] = []

    def work(entry: Entry) -> LoadResult | None:
        ctx = LoadContext(checkpoint=_same_parts(entry, len(run.parts)), save_checkpoint=save_checkpoint,
                          stop_requested=interrupt.requested, on_points=tracker.add_points,
                          on_bytes=tracker.add_bytes, wants_attribute=selection.wants_attribute,
                          wants_file=selection.wants_file)
        if sync_run is None:
            replace.append(f"the {target.name} target cannot append to a run")
            return None
        try:
            result = sync_run(target, run, delta, ctx)
        except ReplaceNeeded as exc:
            replace.append(str(exc))
            stale.extend(exc.stale)
            return None
        ledger.save_checkpoint(run.ref, SYNC, canonical, {"parts": len(run.parts), "done": True})
        return result

    started = time.monotonic()
    try:
        done = attempt(ledger, run.ref, SYNC, canonical, work, "sync")
    finally:
        run.release_files()
    if done.error is not None:
        return RunOutcome(run.ref.key, "failed", error=done.error, seconds=done.seconds)
    if replace:
        ledger.finish(run.ref, SYNC, canonical, details={"replaced": replace[0]})
        log.warning("run %s: %s; replaced in the target", run.ref.key, replace[0])
        ledger.reset(run.ref, LOAD, canonical)
        outcome = _load_one(run, target, selection, ledger, tracker, replace=True)
        if outcome.result is not None:
            outcome.result.stale += stale  # the other runs whose experiment setting the sync raised
        if outcome.status == "loaded":
            ledger.record_sync(run.ref, skey, len(run.parts), {"replaced": replace[0]})
            outcome.status, outcome.sync = REPLACED, {"replaced": replace[0]}
        return outcome
    assert done.value is not None
    gained = dict(plan.gained)
    gained["sent_points"] = done.value.points
    if done.value.approximations.get("live_param"):
        # Params that changed while the run is live: it is replaced once it has finished (the report names it).
        gained["live_params"] = done.value.approximations["live_param"]
    ledger.finish(run.ref, SYNC, canonical, done.value.target_id, details=_details(done.value) | {"gained": gained})
    ledger.record_sync(run.ref, skey, len(run.parts), gained)
    return RunOutcome(run.ref.key, SYNCED, done.value, seconds=time.monotonic() - started, sync=gained)


# -- the report of a sync covers the whole selection ------------------------------------------------------------
MIGRATED, FAILED_NOW = "migrated", "failed"


def whole_selection(exported: Any, loaded: Any, validated: ValidationSummary, ledger: Ledger, target: Target,
                    selection: Selection, writer: ArchiveWriter, workers: int = 4
                    ) -> tuple[ValidationSummary, dict[str, dict[str, Any]]]:
    """Every run the sync listed, with its validation: this pass's read-back, else the ledger's when it was made
    after the run's last load or sync, else the run is read back now (a validation an earlier pass never finished).
    Also, per run key, what this pass did to it (the report's `this_pass`): a pass that found nothing new must not
    replace the report of the whole migration with an empty one."""
    canonical = target.canonical
    listed = [o.key for o in exported.outcomes]
    passed = _pass_actions(exported, loaded)
    checked = {c.ref.key for c in validated.checks}
    # One query per stage, not per run: a sync of 10,000 unchanged runs reports them all.
    loads = {e.ref.key: e for e in ledger.entries(stage=LOAD, target=canonical)}
    syncs = {e.ref.key: e for e in ledger.entries(stage=SYNC, target=canonical)}
    stored = {e.ref.key: e for e in ledger.entries(stage=VALIDATE, target=canonical)}
    summary = dataclasses.replace(validated, checks=list(validated.checks))
    for key in checked:
        passed.setdefault(key, {"action": UNCHANGED})["validated"] = "now"
    again: list[ArchivedRun] = []
    archive = Archive(writer.root)
    for key in listed:
        if key in checked or key not in loads:
            continue  # read back now, or never loaded here (its failure is in the report's errors)
        ref = loads[key].ref
        check = _stored_check(stored.get(key), [loads[key], syncs.get(key)])
        if check is not None:
            summary.checks.append(check)
            passed.setdefault(key, {"action": UNCHANGED})["validated"] = _iso(stored[key].updated_at)
        elif (run := archive.run(ref)) is not None:
            again.append(run)
    if again:
        for check in _read_back(again, target, selection, ledger, workers):
            summary.checks.append(check)
            passed.setdefault(check.ref.key, {"action": UNCHANGED})["validated"] = "now"
    summary.checks.sort(key=lambda c: c.ref)
    for check in summary.checks:
        if check.approximations.get("live_param"):
            passed.setdefault(check.ref.key, {"action": UNCHANGED})["waits_for_end"] = True
    return summary, passed


def _read_back(runs: list[ArchivedRun], target: Target, selection: Selection, ledger: Ledger, workers: int
               ) -> list[RunCheck]:
    verifier = verifier_for(target)
    checks: list[RunCheck] = []
    try:
        for check in run_pool(runs, lambda r: validate_run(r, verifier, selection, ledger, target.canonical),
                              workers, "validate", ledger):
            checks.append(check)
    except Stopped:
        raise Interrupted(VALIDATE, len(checks), len(runs) - len(checks)) from None
    finally:
        if not interrupt.STOP.stragglers:  # a read-back still running uses it
            verifier.close()
    return checks


def _pass_actions(exported: Any, loaded: Any) -> dict[str, dict[str, Any]]:
    actions: dict[str, dict[str, Any]] = {}
    for o in exported.outcomes:
        actions[o.key] = {"action": FAILED_NOW if o.status == "failed" else UNCHANGED}
    for o in loaded.outcomes:
        action = {"loaded": MIGRATED, "already_loaded": UNCHANGED}.get(o.status, o.status)
        actions[o.key] = {"action": action} | ({"added": o.sync} if o.sync else {})
    return actions


def _stored_check(entry: Entry | None, changes: list[Entry | None]) -> RunCheck | None:
    """The ledger's validation of a run, when it read back what the target holds now (made after the run's last
    load or sync, finished or not: a failed sync may have appended half); None when the run must be read back."""
    if entry is None or entry.status not in (DONE, "mismatch") or not entry.details:
        return None
    changed = [e.updated_at for e in changes if e is not None]
    if changed and entry.updated_at < max(changed):
        return None
    return RunCheck.from_dict(entry.details)


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _same_parts(entry: Entry, parts: int) -> dict[str, Any] | None:
    """An interrupted attempt's checkpoint, only when it was appending the same parts."""
    cp = entry.checkpoint
    if cp is None or cp.get("parts") != parts or cp.get("done"):
        return {"parts": parts}
    return cp


__all__ = ["REPLACED", "SYNC", "SYNCED", "UNCHANGED", "SyncPlan", "plan_sync", "sync_key", "sync_load",
           "whole_selection"]
