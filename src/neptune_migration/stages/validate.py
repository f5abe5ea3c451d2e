"""Validation: read every selected run back from the target and compare it with the archive, attribute by attribute.

A target's verifier (targets/mlflow/verify.py, targets/wandb/verify.py) turns one archived run into a `RunCheck`:
what was compared, every mismatch naming the run, the Neptune attribute and what differs, and the documented
approximations counted apart. This module runs verifiers over a worker pool, records the outcome in the ledger
(stage `validate`: done, or mismatch with the details), and offers the source check that proves an export holds
what the source listed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from neptune_migration import interrupt
from neptune_migration.archive import Archive, ArchivedRun, IncompleteRun
from neptune_migration.checks import ERROR, MISMATCHED, VALIDATED, Mismatch, RunCheck, Verifier
from neptune_migration.errors import Interrupted
from neptune_migration.ledger import FAILED, INTERRUPTED, MISMATCH, Ledger
from neptune_migration.plugins import target as target_plugin
from neptune_migration.progress import Tracker
from neptune_migration.secrets import redact, redact_tree
from neptune_migration.selection import Selection
from neptune_migration.stages.load import LOAD, _tell, record_unreadable, select, select_runs
from neptune_migration.stages.load import load as run_load
from neptune_migration.stages.runner import Stopped, attempt, run_pool
from neptune_migration.vocabulary import FILE_LIKE_TYPES, SERIES_TYPES, RunRef

log = logging.getLogger("neptune_migration")

VALIDATE = "validate"
def verifier_for(target: Any) -> Verifier:
    """The read-back of a target, as its plug-in declares it."""
    return target_plugin(target.name).verifier(target)


@dataclass
class ValidationSummary:
    target: str
    checks: list[RunCheck] = field(default_factory=list)
    incomplete: list[IncompleteRun] = field(default_factory=list)
    not_selected: int = 0
    seconds: float = 0.0
    workers: dict[str, str] = field(default_factory=dict)  # run key -> the cluster worker that read it back

    def count(self, status: str) -> int:
        return sum(1 for c in self.checks if c.status == status)

    @property
    def ok(self) -> bool:
        return all(c.status == VALIDATED for c in self.checks) and not self.incomplete

    @property
    def points(self) -> int:
        return sum(c.checked.get("points", 0) for c in self.checks)

    def approximations(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.checks:
            for kind, n in c.approximations.items():
                out[kind] = out.get(kind, 0) + n
        return dict(sorted(out.items()))


def validate(
    archive: Archive,
    target: Any,
    selection: Selection,
    ledger: Ledger,
    tracker_factory: Callable[[int], Tracker] | None = None,
    workers: int = 4,
    only: Iterable[RunRef] | None = None,
    verifier: Verifier | None = None,
    cluster: Any = None,
) -> ValidationSummary:
    """Validate every selected run of the archive against the target; each result lands in the ledger.

    A run that never reached the target is a mismatch (`run_missing`), so nothing selected goes unnoticed.
    `only` narrows the work to some runs (what `retry` repaired). `cluster` (a `stages.remote.Cluster`): each run
    is read back by a task on the cluster's workers, each with its own verifier.
    """
    started = time.monotonic()
    if only is not None and not only:
        # Nothing was migrated (an empty project): no run to read back, and the selection's projects cannot be
        # looked up in an archive that holds no run of them.
        return ValidationSummary(getattr(target, "canonical", str(target)), incomplete=[], not_selected=0)
    selected = select(archive, selection)
    runs, unreadable = selected.runs, selected.unreadable
    if only is not None:
        wanted = set(only)
        runs = [r for r in runs if r.ref in wanted]
        unreadable = [u for u in unreadable if u.ref in wanted]
    summary = ValidationSummary(getattr(target, "canonical", str(target)), incomplete=selected.incomplete,
                                not_selected=selected.not_selected)
    for bad in unreadable:
        # Read back nothing: the archive side of the comparison is what is broken.
        check = RunCheck(bad.ref or RunRef(bad.project_dir.name, bad.run_folder), error=bad.reason)
        if bad.ref is not None:
            record_unreadable(ledger, bad, VALIDATE, summary.target)
            record_problem(ledger, bad.ref, summary.target, check)
        summary.checks.append(check)
    own_verifier = verifier is None and cluster is None
    if cluster is None:
        verifier = verifier or verifier_for(target)
    factory = tracker_factory or (lambda n: Tracker("validate", n, _quiet_console(), enabled=False))
    try:
        with factory(len(runs)) as tracker:
            checks = (cluster.validate(runs, ledger, summary.target, tracker, summary.workers) if cluster is not None
                      else run_pool(runs, lambda run: validate_run(run, verifier, selection, ledger, summary.target),
                                    workers, "validate", ledger))
            for check in checks:
                summary.checks.append(check)
                tracker.add_points(check.checked.get("points", 0))
                tracker.add_bytes(check.checked.get("bytes", 0))
                tracker.run_done()
    except Stopped:
        own_verifier = own_verifier and not interrupt.STOP.stragglers  # a read-back still uses it
        done = summary.count(VALIDATED) + summary.count(MISMATCHED)
        failed = summary.count(ERROR)
        raise Interrupted(VALIDATE, done, len(runs) + len(unreadable) - done - failed, failed) from None
    finally:
        if own_verifier and verifier is not None:
            verifier.close()
    summary.checks.sort(key=lambda c: c.ref)
    summary.seconds = time.monotonic() - started
    return summary


def validate_run(run: ArchivedRun, verifier: Verifier, selection: Selection, ledger: Ledger, target: str) -> RunCheck:
    """Validate one run and record it: done when every value matches, mismatch (with details) otherwise."""
    _tell(verifier, ledger)
    try:
        done = attempt(ledger, run.ref, VALIDATE, target, lambda _entry: verifier.verify(run, selection), "validate",
                       record_failure=False)
    finally:
        run.release_files()  # payloads fetched from object storage for the comparison
    # A read-back that failed is recorded like any failed stage (below), and retried.
    check = done.value if done.value is not None else RunCheck(run.ref, error=done.error)
    check.seconds = done.seconds
    details = check.to_dict()
    if check.status == VALIDATED:
        ledger.finish(run.ref, VALIDATE, target, check.target_id, details=redact_tree(details))
    else:
        record_problem(ledger, run.ref, target, check)
        if check.status == MISMATCHED:
            log.warning("run %s: %s", run.ref.key, redact(check.summary_line()))
    return check


def record_problem(ledger: Ledger, ref: RunRef, target: str, check: RunCheck) -> None:
    """Store a mismatch (or a failed read-back) with its details in one write."""
    status = FAILED if check.status == ERROR else MISMATCH
    # Ledger.fail() takes no details; one UPDATE keeps status, error and details consistent.
    ledger._update(
        ref, VALIDATE, target, status=status, last_error=redact(check.summary_line()), target_id=check.target_id,
        checkpoint=None, details=json.dumps(redact_tree(check.to_dict()), sort_keys=True, default=str),
    )


def stored_checks(ledger: Ledger, target: str) -> list[RunCheck]:
    """Every validation result the ledger holds for a target (what `report` renders without re-reading)."""
    out = []
    for entry in ledger.entries(stage=VALIDATE, target=target):
        if entry.details:
            out.append(RunCheck.from_dict(entry.details))
        else:
            check = RunCheck(entry.ref, entry.target_id)
            if entry.status != "done":
                check.error = entry.last_error or entry.status
            out.append(check)
    return out


# -- source check ---------------------------------------------------------------------------------------
@dataclass
class SourceCounts:
    """What a source listed for one run (from `discover`), or what the archive holds. None: not known."""

    attributes: int | None = None
    points: int | None = None
    files: int | None = None


@dataclass
class SourceCheck:
    """What the selection listed at the source against what the archive holds."""

    listed_runs: int = 0
    archived_runs: int = 0
    missing: list[RunRef] = field(default_factory=list)  # listed, not (completely) in the archive
    unexpected: list[RunRef] = field(default_factory=list)  # in the archive, not listed
    incomplete: list[str] = field(default_factory=list)  # archive folders whose export died half-way
    differences: list[Mismatch] = field(default_factory=list)
    differing_runs: list[RunRef] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.differences or self.incomplete)

    def to_dict(self) -> dict[str, Any]:
        return {
            "listed_runs": self.listed_runs,
            "archived_runs": self.archived_runs,
            "missing": [r.key for r in self.missing],
            "unexpected": [r.key for r in self.unexpected],
            "incomplete": list(self.incomplete),
            "differences": [m.to_dict() | {"run": r.key} for m, r in zip(self.differences, self.differing_runs,
                                                                          strict=True)],
            "ok": self.ok,
        }


def archive_counts(run: ArchivedRun, selection: Selection | None = None) -> SourceCounts:
    """Attributes, series points and files of one archived run, counted the way a source lists them.

    Attributes: distinct paths of every type. Points: rows of float, string and histogram series.
    Files: rows of the file-like types (a file series counts one per step).
    """
    import pyarrow as pa

    wants = selection.wants_attribute if selection is not None else (lambda _p, _t: True)
    paths: set[str] = set()
    points = files = 0
    for batch in run.batches(None, ["attribute_path", "attribute_type"]):
        pairs = pa.table({"p": batch.column("attribute_path"), "t": batch.column("attribute_type")})
        grouped = pairs.group_by(["p", "t"]).aggregate([("p", "count")])
        for path, type_, n in zip(grouped.column("p").to_pylist(), grouped.column("t").to_pylist(),
                                  grouped.column("p_count").to_pylist(), strict=True):
            if not wants(path, type_):
                continue
            paths.add(path)
            if type_ in SERIES_TYPES:
                points += n
            elif type_ in FILE_LIKE_TYPES:
                files += n
    return SourceCounts(len(paths), points, files)


def check_source(
    listed: Mapping[RunRef, SourceCounts],
    archive: Archive,
    selection: Selection | None = None,
) -> SourceCheck:
    """Compare what a source listed (run -> counts) with the archive, so a failed export is never silent.

    Counts a source did not know (None) are not compared. Every listed run must be complete in the archive.
    """
    scan = archive.scan()
    held = {r.ref: r for r in scan.runs}
    result = SourceCheck(listed_runs=len(listed), archived_runs=len([r for r in held if r in listed]))
    result.incomplete = [f"{i.project_dir.name}/{i.run_folder}" for i in scan.incomplete]
    for ref in sorted(listed):
        run = held.get(ref)
        if run is None:
            result.missing.append(ref)
            continue
        want = listed[ref]
        have = archive_counts(run, selection)
        for what in ("attributes", "points", "files"):
            expected, actual = getattr(want, what), getattr(have, what)
            if expected is not None and expected != actual:
                result.differences.append(Mismatch(
                    "run", f"source_{what}", f"the source listed {expected} {what}, the archive holds {actual}",
                    expected=expected, actual=actual))
                result.differing_runs.append(ref)
    result.unexpected = sorted(ref for ref in held if ref not in listed and (
        selection is None or selection.matches_run(ref.project_id, ref.run_id,
                                                   {p: a.value for p, a in held[ref].atoms().items()})))
    return result


def _quiet_console() -> Any:
    from rich.console import Console

    return Console(quiet=True)


# -- retry ----------------------------------------------------------------------------------------------------
@dataclass
class RetryOutcome:
    reloaded: list[RunRef]
    revalidated: list[RunRef]
    load: Any  # pipeline.LoadSummary of the reloaded runs
    validation: ValidationSummary


def runs_to_retry(ledger: Ledger, target: str) -> tuple[set[RunRef], set[RunRef]]:
    """(runs to load again, runs to validate again) for a target, from the ledger.

    A failed load is resumed by the loader. A mismatch means the target holds wrong data: the run is discarded
    and loaded afresh. A read-back that failed (network, server) is only validated again.
    """
    reload: set[RunRef] = set()
    recheck: set[RunRef] = set()
    for entry in ledger.entries(target=target):
        if (entry.stage, entry.status) in (("load", FAILED), ("load", INTERRUPTED), (VALIDATE, MISMATCH)):
            # A load a stopped retry left half-done is continued here, not only by a full `load`.
            reload.add(entry.ref)
        elif entry.stage == VALIDATE and entry.status in (FAILED, INTERRUPTED):
            recheck.add(entry.ref)
    return reload, recheck | reload


def retry(
    archive: Archive,
    target: Any,
    selection: Selection,
    ledger: Ledger,
    tracker_factory: Callable[[int], Tracker] | None = None,
    workers: int = 4,
    cluster: Any = None,
    relocate: bool = False,
) -> RetryOutcome:
    """Load again the runs that failed or mismatched (only those, within the selection), then validate them.

    A mismatched run is deleted in the target first when the target can (MLflow: the run goes to MLflow's
    trash), so the new load writes every value exactly once; no duplicate point, param or file survives.
    """

    canonical = target.canonical
    reload, recheck = runs_to_retry(ledger, canonical)
    selected, _incomplete, _ = select_runs(archive, selection)
    by_ref = {r.ref: r for r in selected}
    reload = {ref for ref in reload if ref in by_ref}
    recheck = {ref for ref in recheck if ref in by_ref}
    verifier = verifier_for(target)
    factory = tracker_factory or (lambda n: Tracker("retry", n, _quiet_console(), enabled=False))
    try:
        mismatched = {e.ref for e in ledger.entries(stage=VALIDATE, target=canonical) if e.status == MISMATCH}
        for ref in sorted(reload):
            if ref in mismatched:
                n = verifier.discard(by_ref[ref])
                log.info("run %s: discarded %d target run(s) holding wrong data", ref.key, n)
                if n:
                    ledger.forget_loaded(ref, canonical)  # the next load starts from nothing
            ledger.reset(ref, LOAD, canonical)
        load_summary = None
        if reload:
            ids = sorted({ref.run_id for ref in reload})
            narrowed = dataclasses.replace(
                selection, projects=sorted({ref.project_id for ref in reload}), limit=None,
                runs=re.compile("^(?:" + "|".join(re.escape(i) for i in ids) + ")$"))
            load_summary = run_load(archive, target, narrowed, ledger, factory, workers, cluster=cluster,
                                    relocate=relocate)
        keys = {ref.key: ref for ref in reload}
        failed_again = {keys[o.key] for o in (load_summary.failed if load_summary else []) if o.key in keys}
        validation = validate(archive, target, selection, ledger, factory, workers,
                              only=[ref for ref in recheck if ref not in failed_again],
                              verifier=None if cluster is not None else verifier, cluster=cluster)
    finally:
        if not interrupt.STOP.stragglers:  # a read-back that outlived an interruption still uses it
            verifier.close()
    return RetryOutcome(sorted(reload), sorted(recheck), load_summary, validation)
