"""Export from a source into an archive (and the per-run export step that `migrate` pipelines).

Resumable through the ledger: a run exported before is not fetched again (unless `--refresh` sees that its
Neptune modification time moved). `migrate` itself lives in `stages/migrate.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchiveWriter
from neptune_migration.errors import Interrupted
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.sources.base import Source
from neptune_migration.stages.runner import Stopped, attempt, run_pool

log = logging.getLogger("neptune_migration")

EXPORT = "export"


@dataclass
class ExportOutcome:
    key: str
    status: str  # exported, already_exported, failed
    stats: Any = None
    error: str | None = None


@dataclass
class ExportSummary:
    archive: str | Path  # a folder, or a URL on object storage
    listed: int = 0
    outcomes: list[ExportOutcome] = field(default_factory=list)
    seconds: float = 0.0
    workers: dict[str, str] = field(default_factory=dict)  # run key -> the cluster worker that exported it

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[ExportOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def archive_key(root: str | Path) -> str:
    """The ledger's name for an archive: its absolute folder, or its URL on object storage."""
    return "archive:" + (root if isinstance(root, str) else str(root.resolve()))


def list_selected(source: Source) -> list[Any]:
    runs: list[Any] = []
    for project in source.projects:
        runs += source.list_runs(project)
    return runs


def export_one(run: Any, source: Source, writer: ArchiveWriter, ledger: Ledger, refresh: bool = False) -> ExportOutcome:
    key = archive_key(writer.root)
    entry = ledger.get(run.ref, EXPORT, key)
    if entry is not None and entry.status == "done" and writer.has_run(run.ref):
        before = (entry.details or {}).get("modification_time")
        now = getattr(run, "modification_time", None)
        if not refresh or (before is not None and before == now):
            return ExportOutcome(run.ref.key, "already_exported")
    done = attempt(ledger, run.ref, EXPORT, key, lambda _entry: source.export_run(run, writer), "export")
    if done.error is not None:
        return ExportOutcome(run.ref.key, "failed", error=done.error)
    stats = done.value
    details = {k: v for k, v in vars(stats).items()} if stats is not None else None
    ledger.finish(run.ref, EXPORT, key, target_id=None, details=details)
    return ExportOutcome(run.ref.key, "exported", stats)


def make_project_folders(source: Source, writer: ArchiveWriter) -> None:
    """A selected project with no runs still gets its (empty) folder: the archive then reads as "nothing to load
    or validate" instead of "not an archive", and exporting or migrating an empty project succeeds."""
    writer.make_project_folders(source.projects)


def export(
    source: Source,
    writer: ArchiveWriter,
    ledger: Ledger,
    tracker_factory: Callable[[int], Tracker],
    workers: int = 4,
    refresh: bool = False,
    cluster: Any = None,
) -> ExportSummary:
    """`cluster` (a `stages.remote.Cluster`): each run is exported by a task on the cluster's workers."""
    started = time.monotonic()
    source.check()
    runs = list_selected(source)
    summary = ExportSummary(writer.root, listed=len(runs))
    make_project_folders(source, writer)
    with tracker_factory(len(runs)) as tracker:
        try:
            outcomes = (cluster.export(runs, ledger, archive_key(writer.root), tracker, summary.workers)
                        if cluster is not None else
                        run_pool(runs, lambda run: export_one(run, source, writer, ledger, refresh), workers, "export",
                                 ledger))
            for outcome in outcomes:
                summary.outcomes.append(outcome)
                if outcome.stats is not None:
                    tracker.add_points(getattr(outcome.stats, "points", 0))
                    tracker.add_bytes(getattr(outcome.stats, "bytes", 0))
                tracker.run_done()
        except Stopped:
            done = summary.count("exported") + summary.count("already_exported")
            failed = summary.count("failed")
            raise Interrupted(EXPORT, done, len(runs) - done - failed, failed) from None
    summary.outcomes.sort(key=lambda o: o.key)
    summary.seconds = time.monotonic() - started
    return summary
