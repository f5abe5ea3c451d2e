"""The public Python API: one function per command, each opening and closing what it needs.

    import neptune_migration as nm
    result = nm.load(archive="./archive", to="mlflow", mlflow_tracking_uri="http://127.0.0.1:5000")
    print(nm.validate(archive="./archive", to="mlflow", mlflow_tracking_uri="http://127.0.0.1:5000").ok)

Keyword arguments are named like the command-line options with underscores. Beside each function's own
arguments, `**options` takes the selection (`project`, `runs`, `experiments`, `since`, `until`, `tag`, `limit`,
...: see `selection.SelectionOptions`) and the options of the chosen source and target (`mlflow_tracking_uri`,
`wandb_dir`, `api_token_file`, ...: each plug-in's options dataclass). Options of another installed source or
target are accepted and ignored, so one set of keywords can serve several calls; a name no one declares is a
`UsageError`. Errors are the `MigrationError` family, never `SystemExit`.

export, load, validate, retry and migrate stop cleanly on Ctrl-C or SIGTERM when called in the main thread
(handlers are installed only for the call): they raise `Interrupted` (exit code 130) with the counts of runs done
and interrupted; calling again continues. A second Ctrl-C raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neptune_migration import interrupt, plugins
from neptune_migration.archive import Archive, ArchiveWriter, archive_location
from neptune_migration.errors import UsageError
from neptune_migration.executors import open_cluster
from neptune_migration.ledger import (
    Entry,
    Ledger,
    LedgerView,
    SyncState,
    default_state_path,
    is_database_uri,
    open_ledger,
    open_view,
    redact_uri,
)
from neptune_migration.options import build as build_options
from neptune_migration.progress import Tracker
from neptune_migration.report import build_report, write_reports
from neptune_migration.selection import Selection, SelectionOptions
from neptune_migration.sources.base import Source, SourcePlugin
from neptune_migration.stages.converge import check_relocate
from neptune_migration.stages.discover import discover as run_discover
from neptune_migration.stages.export import ExportSummary
from neptune_migration.stages.export import export as run_export
from neptune_migration.stages.load import LoadSummary
from neptune_migration.stages.load import load as run_load
from neptune_migration.stages.migrate import StageClock, Workers, run_pipeline
from neptune_migration.stages.model_registry import export_registry, load_registry
from neptune_migration.stages.preflight import check_archive, check_options, check_output, check_state, state_of
from neptune_migration.stages.remote import Cluster, Plan, check_workers, location
from neptune_migration.stages.sync import whole_selection
from neptune_migration.stages.validate import ValidationSummary
from neptune_migration.stages.validate import retry as run_retry
from neptune_migration.stages.validate import validate as run_validate
from neptune_migration.targets.base import Target, TargetPlugin, TargetSettings

log = logging.getLogger("neptune_migration")

DEFAULT_REPORT_DIR = Path("neptune-migration-report")
DEFAULT_MIGRATE_ARCHIVE = ".neptune-migration/archive"
DEFAULT_EXPORT_ARCHIVE = "neptune-archive"


# -- summaries ---------------------------------------------------------------------------------------------
@dataclass
class RegistryOutcome:
    """One model or model version of Neptune 2.x's model registry, exported or loaded."""

    key: str
    status: str
    error: str | None = None
    stage: str = "export"  # or "load"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _registry_ok(outcomes: list[RegistryOutcome]) -> bool:
    return not any(o.status == "failed" for o in outcomes)


@dataclass
class DiscoverResult:
    """What the selection matches at the source: per project, runs, experiments and attribute counts."""

    source: str
    runs: int
    file_bytes: int
    projects: list[dict[str, Any]]
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "runs": self.runs, "file_bytes": self.file_bytes, "projects": self.projects}


@dataclass
class ExportResult:
    summary: ExportSummary
    registry: list[RegistryOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.summary.failed and _registry_ok(self.registry)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **_export_dict(self.summary), "registry": [r.to_dict() for r in self.registry]}


@dataclass
class LoadResult:
    summary: LoadSummary
    registry: list[RegistryOutcome] = field(default_factory=list)
    hint: str | None = None  # how to look at what arrived (the target's UI, a sync command)

    @property
    def ok(self) -> bool:
        # A run skipped as incomplete is not loaded: the verdict says so, as validate's does.
        return not self.summary.failed and not self.summary.incomplete and _registry_ok(self.registry)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **_load_dict(self.summary), "registry": [r.to_dict() for r in self.registry],
                "hint": self.hint}


@dataclass
class ValidationResult:
    """The validation verdict: `ok` is what the CLI turns into its exit code. `report` is report.json's content;
    `paths` the report files written."""

    summary: ValidationSummary
    report: dict[str, Any]
    paths: dict[str, Path]

    @property
    def ok(self) -> bool:
        totals = self.report["totals"]
        source_ok = self.report["source_check"] is None or self.report["source_check"]["ok"]
        return source_ok and not (totals["runs_mismatched"] or totals["runs_failed"]
                                  or totals["runs_incomplete_in_archive"])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "report": self.report, "paths": {k: str(v) for k, v in self.paths.items()}}


@dataclass
class MigrationResult:
    exported: ExportSummary
    loaded: LoadSummary
    validation: ValidationResult | None  # None with no_validate=True
    registry: list[RegistryOutcome] = field(default_factory=list)
    hint: str | None = None
    clock: StageClock | None = None

    @property
    def ok(self) -> bool:
        return (not self.exported.failed and not self.loaded.failed and _registry_ok(self.registry)
                and (self.validation is None or self.validation.ok))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "export": _export_dict(self.exported),
            "load": _load_dict(self.loaded),
            "validation": self.validation.to_dict() if self.validation is not None else None,
            "registry": [r.to_dict() for r in self.registry],
            "hint": self.hint,
            "seconds": self.clock.to_dict() if self.clock is not None else None,
        }


@dataclass
class RetryResult:
    reloaded: list[str]
    revalidated: list[str]
    load: LoadSummary | None
    validation: ValidationResult | None  # None when there was nothing to retry

    @property
    def ok(self) -> bool:
        load_ok = self.load is None or not self.load.failed
        return load_ok and (self.validation is None or self.validation.ok)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reloaded": self.reloaded, "revalidated": self.revalidated,
                "load": _load_dict(self.load) if self.load is not None else None,
                "validation": self.validation.to_dict() if self.validation is not None else None}


# The stages in pipeline order, and the statuses `status` always counts (others only when present).
STAGES = ("export", "load", "validate")
STATUS_TOTALS = ("done", "running", "failed", "interrupted")


@dataclass
class StatusResult:
    state: Path | str  # a file, or the PostgreSQL URI without its password
    entries: list[Entry]
    ok: bool = True
    # `migrate --sync`: per run and target, when it was last synced and what that sync added.
    syncs: list[SyncState] = field(default_factory=list)
    # A SQLite ledger: whether a neptune-migrate process holds it now, so its `running` rows are live (not rows a
    # killed process left). None for PostgreSQL, where each row carries its holder's lease instead.
    in_use: bool | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.status] = out.get(e.status, 0) + 1
        return dict(sorted(out.items()))

    def totals(self) -> dict[str, dict[str, int]]:
        """Per stage, how many rows are in each status: done, running, failed and interrupted always, others
        (mismatch, skipped, pending) where there are some."""
        present = {e.status for e in self.entries} - set(STATUS_TOTALS)
        columns = [*STATUS_TOTALS, *sorted(present)]
        stages = [*STAGES, *sorted({e.stage for e in self.entries} - set(STAGES))]
        out = {stage: dict.fromkeys(columns, 0) for stage in stages}
        for e in self.entries:
            out[e.stage][e.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"state": str(self.state), "in_use": self.in_use, "totals": self.totals(), "counts": self.counts(),
                "entries": [
            {"project_id": e.ref.project_id, "run_id": e.ref.run_id, "stage": e.stage, "target": e.target,
             "status": e.status, "attempts": e.attempts, "target_id": e.target_id, "last_error": e.last_error,
             "updated_at": e.updated_at}
            for e in self.entries], "syncs": [
            {"project_id": x.ref.project_id, "run_id": x.ref.run_id, "target": x.target, "syncs": x.syncs,
             "last_synced": x.synced_at, "gained": x.gained} for x in self.syncs if x.syncs]}


def _export_dict(summary: ExportSummary) -> dict[str, Any]:
    stats = [o.stats for o in summary.outcomes if o.stats is not None]
    return {
        "archive": str(summary.archive), "listed": summary.listed, "exported": summary.count("exported"),
        "already_exported": summary.count("already_exported"),
        "failed": [{"run": o.key, "error": o.error} for o in summary.failed],
        "points": sum(s.points for s in stats), "files": sum(s.files for s in stats),
        "bytes": sum(s.bytes for s in stats),
        "missing_files": [f"{o.key}: {m}" for o in summary.outcomes if o.stats is not None
                          for m in o.stats.missing_files],
        "seconds": round(summary.seconds, 3),
    }


def _load_dict(summary: LoadSummary) -> dict[str, Any]:
    return {
        "target": summary.target, "loaded": summary.count("loaded"), "already_loaded": summary.count("already_loaded"),
        "failed": [{"run": o.key, "error": o.error} for o in summary.failed], "not_selected": summary.not_selected,
        "incomplete": [f"{i.project_dir.name}/{i.run_folder}" for i in summary.incomplete],
        "points": summary.points, "files": summary.files, "bytes": summary.bytes,
        "approximations": summary.approximations(), "warnings": list(summary.warnings),
        "seconds": round(summary.seconds, 3),
        "workers": dict(sorted(summary.workers.items())),  # run -> the cluster worker that loaded it
    }


# -- option handling ---------------------------------------------------------------------------------------
_SELECTION_NAMES = {f.name for f in dataclasses.fields(SelectionOptions)}


def _split(options: dict[str, Any], source: SourcePlugin | None = None,
           target: TargetPlugin | None = None) -> tuple[Selection, Any, Any]:
    """(selection, source options, target options) from the keyword arguments; unknown names are refused."""
    known = set(_SELECTION_NAMES)
    for plugin in [*plugins.sources().values(), *plugins.targets().values()]:
        known |= {f.name for f in dataclasses.fields(plugin.options)}
    unknown = sorted(set(options) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UsageError(f"unknown option {unknown[0]!r}{hint}")
    selection = build_options(SelectionOptions, options).build()
    source_opts = build_options(source.options, options) if source is not None else None
    target_opts = build_options(target.options, options) if target is not None else None
    return selection, source_opts, target_opts


def _open_source(from_: str, options: dict[str, Any], path: str | Path | None) -> tuple[Source, SourcePlugin,
                                                                                         Selection]:
    plugin = plugins.source(from_)
    if path is not None:
        if "path" not in {f.name for f in dataclasses.fields(plugin.options)}:
            raise UsageError(f"a PATH argument is only for a source that reads a folder, not --from {from_}")
        options = {**options, "path": Path(path)}
    selection, source_opts, _ = _split(options, source=plugin)
    projects = list(selection.projects) or ([os.environ["NEPTUNE_PROJECT"]] if os.environ.get("NEPTUNE_PROJECT")
                                            else [])
    return plugin.build(source_opts, projects, selection), plugin, selection


def _open_target(to: str, options: dict[str, Any], workers: int, upload_workers: int | None = None,
                 writer: str | None = None) -> tuple[Target, TargetPlugin, Selection]:
    plugin = plugins.target(to)
    if options.get("mlflow_bulk") and "mlflow_bulk" not in {f.name for f in dataclasses.fields(plugin.options)}:
        raise UsageError(f"--mlflow-bulk is only for --to mlflow, not --to {to}")
    selection, _, target_opts = _split(options, target=plugin)
    return plugin.build(target_opts, TargetSettings(workers, upload_workers, writer)), plugin, selection


# -- a cluster ---------------------------------------------------------------------------------------------
def _writer(cluster: str | None, state: str | Path | None) -> str | None:
    """The name every worker of one cluster migration writes under (MLflow's experiment claim): one per ledger."""
    if cluster is None or state_of(state) is None:
        return None
    return "cluster-" + hashlib.sha256(redact_uri(str(state_of(state))).encode()).hexdigest()[:16]


@contextmanager
def _cluster(address: str | None, state: str | Path | None, plan: Callable[[str], Plan],
             write: bool) -> Iterator[Cluster | None]:
    """The engine on a Dask scheduler for one call, after one worker has shown it can open what the runs need."""
    if address is None:
        yield None
        return
    check_options(address, state)
    uri = state_of(state)
    engine = open_cluster(address)
    try:
        cluster = Cluster(engine, plan(str(uri)))
        worker = check_workers(cluster, write)
        log.info("cluster %s: %d worker(s) connected; %s can open the ledger, archive and endpoints", address,
                 engine.workers(), worker)
        yield cluster
    finally:
        engine.shutdown(cancel_futures=True)


def _preflight(archive: str | Path, files: str | Path | None, to: str, cluster: str | None,
               state: str | Path | None, options: dict[str, Any], must_exist: bool = False) -> None:
    """The usage errors of a command reading an archive, found before anything is written (stages/preflight.py):
    its options, the archive, the ledger's path. The caller then builds the target and checks it."""
    selection, _, _ = _split(options, target=plugins.target(to))
    check_options(cluster, state)
    check_archive(archive, files, selection)
    check_state(state, must_exist)


def _preflight_writing(archive: str | Path, cluster: str | None, state: str | Path | None) -> None:
    """The same for a command writing an archive (export, migrate); the caller then checks the source."""
    check_options(cluster, state)
    check_output(archive)
    check_state(state)


def _tracker(title: str, progress: bool, stages: tuple[str, ...] = ()) -> Callable[[int], Tracker]:
    from rich.console import Console

    console = Console(stderr=True)
    return lambda total: Tracker(title, total, console, enabled=progress, stages=stages)


def _close(target: Target) -> None:
    # A run that outlived an interruption's grace period may still be using the target (its upload pool):
    # closing would wait for it, or pull the client from under it. The process is about to end anyway.
    if not interrupt.STOP.stragglers:
        target.close()


def _workers(n: int | None, name: str = "workers") -> int:
    if n is None:
        raise UsageError(f"--{name.replace('_', '-')} is required")
    if not 1 <= n <= 64:
        raise UsageError(f"--{name.replace('_', '-')} must be between 1 and 64, not {n}")
    return n


@contextmanager
def _ledger(state: str | Path | None, must_exist: bool = False) -> Iterator[Ledger]:
    if state is None:
        state = os.environ.get("NEPTUNE_MIGRATION_STATE") or None
    if state is not None and is_database_uri(str(state)):
        with open_ledger(str(state)) as ledger:
            yield ledger
        return
    path = Path(state) if state is not None else default_state_path()
    if must_exist and not path.exists():
        raise UsageError(f"no ledger at {path}: nothing has run yet (or pass --state)")
    with open_ledger(path) as ledger:
        yield ledger


def _local(archive: str | Path) -> str | Path:
    root = archive_location(str(archive))
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)
    return root


def _export_models(plugin: SourcePlugin, source: Source, root: str | Path, ledger: Ledger,
                   no_models: bool) -> list[RegistryOutcome]:
    if no_models or not plugin.model_registry:
        return []
    return [RegistryOutcome(o.key, o.status, o.error) for o in export_registry(source, root, ledger)]


def _load_models(plugin: TargetPlugin, archive: Archive, target: Target, ledger: Ledger) -> list[RegistryOutcome]:
    if not plugin.model_registry:
        return []
    return [RegistryOutcome(key, status, error, "load")
            for key, status, error in load_registry(archive, target, ledger)]


def _check_report_dir(report_dir: str | Path) -> None:
    """Refuse a report folder that cannot be one before any work, not after hours of it."""
    path = Path(report_dir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--report-dir {path} is a file, not a folder")


def _report(summary: ValidationSummary, ledger: Ledger, archive: str, report_dir: str | Path,
            source_check: Any = None, plugin: TargetPlugin | None = None, target: Target | None = None,
            retry_command: str | None = None, this_pass: dict[str, dict[str, Any]] | None = None
            ) -> ValidationResult:
    urls: dict[str, str] = {}
    if plugin is not None and target is not None:
        for check in summary.checks:
            if check.target_id and (url := plugin.run_url(target, check.target_id)):
                urls[check.target_id] = url
    report = build_report(summary, ledger, archive=archive, source_check=source_check, run_urls=urls,
                          retry_command=retry_command, this_pass=this_pass)
    if target is not None and (about := getattr(target, "about", None)):
        report["target_server"] = about  # what the target said it runs (an MLflow server's version)
    if summary.workers:  # a cluster: which worker read each run back
        report["workers"] = dict(sorted(summary.workers.items()))
    return ValidationResult(summary, report, write_reports(report, Path(report_dir)))


# -- the commands ------------------------------------------------------------------------------------------
def discover(from_: str = "neptune3", *, path: str | Path | None = None, **options: Any) -> DiscoverResult:
    """What the selection matches at a source (projects, runs, experiments, attributes by type), moving no data."""
    source, _, _ = _open_source(from_, options, path)
    found = run_discover(source)
    return DiscoverResult(found["source"], found["runs"], found["file_bytes"], found["projects"])


@interrupt.handling_signals()
def export(from_: str = "neptune3", *, archive: str | Path = DEFAULT_EXPORT_ARCHIVE, path: str | Path | None = None,
           workers: int = 4, state: str | Path | None = None, refresh: bool = False, no_models: bool = False,
           progress: bool = False, cluster: str | None = None, **options: Any) -> ExportResult:
    """Export the selected runs from a source into an archive (neptune-exporter's layout). Resumable.
    `cluster`: each run is exported by a task on a Dask cluster's workers (as `load`)."""
    _preflight_writing(archive, cluster, state)
    source, plugin, selection = _open_source(from_, options, path)
    source.check()
    root = _local(archive)
    plan = _source_plan(from_, options, path, source, selection, root, None, None, refresh)
    with _ledger(state) as ledger, _cluster(cluster, state, plan, write=True) as remote:
        summary = run_export(source, ArchiveWriter(root), ledger, _tracker("export", progress), _workers(workers),
                             refresh, cluster=remote)
        return ExportResult(summary, _export_models(plugin, source, root, ledger, no_models))


def _target_plan(to: str, options: dict[str, Any], archive: str | Path, files: str | Path | None, workers: int,
                 upload_workers: int | None, writer: str | None) -> Callable[[str], Plan]:
    plugin = plugins.target(to)
    selection, _, target_opts = _split(options, target=plugin)
    settings = TargetSettings(workers, upload_workers, writer)
    return lambda uri: Plan(uri, selection, str(location(archive)), location(files), to, target_opts, settings)


def _source_plan(from_: str, options: dict[str, Any], path: str | Path | None, source: Source, selection: Selection,
                 root: str | Path, target: tuple[str, TargetSettings] | None, files: str | None,
                 refresh: bool) -> Callable[[str], Plan]:
    plugin = plugins.source(from_)
    if path is not None:
        options = {**options, "path": Path(str(location(path)))}
    _, source_opts, _ = _split(options, source=plugin)
    target_opts = _split(options, target=plugins.target(target[0]))[2] if target is not None else None
    return lambda uri: Plan(uri, selection, str(location(root)), files, target[0] if target else None, target_opts,
                            target[1] if target else TargetSettings(), from_, source_opts,
                            tuple(source.projects), refresh)


@interrupt.handling_signals()
def load(archive: str | Path, *, files: str | Path | None = None, to: str = "mlflow", workers: int = 4,
         upload_workers: int | None = None, state: str | Path | None = None, refresh: bool = False,
         progress: bool = False, cluster: str | None = None, relocate: bool = False, **options: Any) -> LoadResult:
    """Load an archive (ours or neptune-exporter's) into a target. Resumable: call again to continue; a wider
    selection adds what the loaded runs lack to the same target runs, a narrower one deletes nothing.
    `refresh`: also reload the runs an earlier version loaded with an older mapping (listed in the warnings).
    `relocate`: move runs the target holds at another place (another MLflow --experiment-by/--experiment-prefix)
    to the place these options name: loaded there, validated, then the old copies deleted. Without it such a load
    is refused before anything is written. W&B refuses `relocate` itself (docs/wandb.md).
    `cluster`: a Dask scheduler's address (tcp://HOST:PORT); each run is then loaded by a task on its workers, and
    `state` must be a PostgreSQL ledger (docs/cluster.md)."""
    if relocate:
        check_relocate(to)  # a target that cannot delete the old copies (W&B) refuses it before anything
    _preflight(archive, files, to, cluster, state, options)
    archived = Archive(str(archive), str(files) if files is not None else None)
    writer = _writer(cluster, state)
    target, plugin, selection = _open_target(to, options, _workers(workers), upload_workers, writer)
    target.check()
    plan = _target_plan(to, options, archive, files, workers, upload_workers, writer)
    with _ledger(state) as ledger, _cluster(cluster, state, plan, write=False) as remote:
        try:
            summary = run_load(archived, target, selection, ledger, _tracker("load", progress), workers, refresh,
                               cluster=remote, relocate=relocate)
            registry = _load_models(plugin, archived, target, ledger)
        finally:
            _close(target)
    return LoadResult(summary, registry, plugin.hint(target))


@interrupt.handling_signals()
def validate(archive: str | Path, *, files: str | Path | None = None, to: str = "mlflow", workers: int = 4,
             state: str | Path | None = None, report_dir: str | Path = DEFAULT_REPORT_DIR, progress: bool = False,
             retry_command: str | None = None, cluster: str | None = None, **options: Any) -> ValidationResult:
    """Read every selected run back from the target and compare it with the archive, value by value; writes
    report.html, report.md, report.json and errors.jsonl into `report_dir`. `.ok` is the verdict.
    `retry_command`: the command the report names as the next step when anything failed or differs.
    `cluster`: read back on a Dask cluster's workers (as `load`)."""
    _check_report_dir(report_dir)
    _preflight(archive, files, to, cluster, state, options)
    archived = Archive(str(archive), str(files) if files is not None else None)
    writer = _writer(cluster, state)
    target, plugin, selection = _open_target(to, options, _workers(workers), writer=writer)
    target.check()
    plan = _target_plan(to, options, archive, files, workers, None, writer)
    with _ledger(state) as ledger, _cluster(cluster, state, plan, write=False) as remote:
        try:
            summary = run_validate(archived, target, selection, ledger, _tracker("validate", progress), workers,
                                   cluster=remote)
        finally:
            _close(target)
        return _report(summary, ledger, str(archive), report_dir, plugin=plugin, target=target,
                       retry_command=retry_command)


@interrupt.handling_signals()
def retry(archive: str | Path, *, files: str | Path | None = None, to: str = "mlflow", workers: int = 4,
          state: str | Path | None = None, report_dir: str | Path = DEFAULT_REPORT_DIR, progress: bool = False,
          retry_command: str | None = None, cluster: str | None = None, relocate: bool = False,
          **options: Any) -> RetryResult:
    """Load again only the runs that failed or mismatched (per the ledger), then validate them (`cluster`: on a
    Dask cluster's workers, as `load`; `relocate`: as `load`, for runs the target holds at another place)."""
    _check_report_dir(report_dir)
    if relocate:
        check_relocate(to)
    _preflight(archive, files, to, cluster, state, options, must_exist=True)
    archived = Archive(str(archive), str(files) if files is not None else None)
    writer = _writer(cluster, state)
    plan = _target_plan(to, options, archive, files, workers, None, writer)
    target, plugin, selection = _open_target(to, options, _workers(workers), writer=writer)
    target.check()
    with _ledger(state, must_exist=True) as ledger, _cluster(cluster, state, plan, write=False) as remote:
        try:
            outcome = run_retry(archived, target, selection, ledger, _tracker("retry", progress), workers,
                                cluster=remote, relocate=relocate)
        finally:
            _close(target)
        result = RetryResult([r.key for r in outcome.reloaded], [r.key for r in outcome.revalidated], outcome.load,
                             None)
        if outcome.revalidated:
            result.validation = _report(outcome.validation, ledger, str(archive), report_dir, plugin=plugin,
                                        target=target, retry_command=retry_command)
        return result


@interrupt.handling_signals()
def migrate(from_: str = "neptune3", *, to: str = "mlflow", archive: str | Path | None = None,
            path: str | Path | None = None, workers: int = 4, export_workers: int | None = None,
            validate_workers: int | None = None, upload_workers: int | None = None, state: str | Path | None = None,
            refresh: bool = False, no_models: bool = False, no_validate: bool = False,
            report_dir: str | Path = DEFAULT_REPORT_DIR, progress: bool = False, retry_command: str | None = None,
            sync: bool = False, every: str | float | None = None, rounds: int | None = None,
            on_round: Callable[[MigrationResult], None] | None = None, cluster: str | None = None,
            **options: Any) -> MigrationResult:
    """Export from a source, load into the target and read back, the three stages overlapping run by run.
    Resumable: call again to continue. `.ok` is the verdict (every run exported, loaded and validated).

    `sync=True` brings runs migrated before up to date (docs/sync.md): new points are appended to the same target
    run, unchanged runs cost only their listing. `every` ("15m", "1h", seconds) repeats the sync until Ctrl-C
    (or `rounds` rounds), calling `on_round(result)` after each; the last round's result is returned.
    `cluster`: each run goes through the three stages as one task on a Dask cluster's workers (docs/cluster.md)."""
    if every is None:
        return _migrate_once(from_, to=to, archive=archive, path=path, workers=workers,
                             export_workers=export_workers, validate_workers=validate_workers,
                             upload_workers=upload_workers, state=state, refresh=refresh, no_models=no_models,
                             no_validate=no_validate, report_dir=report_dir, progress=progress,
                             retry_command=retry_command, sync=sync, cluster=cluster, **options)
    if not sync:
        raise UsageError("--every repeats a sync: pass --sync with it")
    seconds = parse_interval(every)
    done = 0
    while True:
        started = time.monotonic()
        result = _migrate_once(from_, to=to, archive=archive, path=path, workers=workers,
                               export_workers=export_workers, validate_workers=validate_workers,
                               upload_workers=upload_workers, state=state, refresh=refresh, no_models=no_models,
                               no_validate=no_validate, report_dir=report_dir, progress=progress,
                               retry_command=retry_command, sync=True, cluster=cluster, **options)
        done += 1
        if on_round is not None:
            on_round(result)
        if rounds is not None and done >= rounds:
            return result
        # Ctrl-C or SIGTERM while waiting only sets the stop flag (the handlers are this call's): wake and return.
        if interrupt.requested() or interrupt.STOP.wait(max(0.0, started + seconds - time.monotonic())):
            log.info("sync stopped between rounds; the next `migrate --sync` continues")
            return result


def parse_interval(text: str | float) -> float:
    """`15m`, `1h`, `30s`, `2d` or a number of seconds."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        raw = str(text).strip().lower()
        try:
            value = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
        except (ValueError, KeyError):
            raise UsageError(f"--every takes a duration like 15m, 1h or 90s, not {text!r}") from None
    if not value > 0:
        raise UsageError(f"--every must be positive, not {text!r}")
    return value


def _migrate_once(from_: str = "neptune3", *, to: str = "mlflow", archive: str | Path | None = None,
                  path: str | Path | None = None, workers: int = 4, export_workers: int | None = None,
                  validate_workers: int | None = None, upload_workers: int | None = None,
                  state: str | Path | None = None, refresh: bool = False, no_models: bool = False,
                  no_validate: bool = False, report_dir: str | Path = DEFAULT_REPORT_DIR, progress: bool = False,
                  retry_command: str | None = None, sync: bool = False, cluster: str | None = None,
                  **options: Any) -> MigrationResult:
    if sync and refresh:
        raise UsageError("--sync and --refresh do not go together: --sync already replaces what it cannot append")
    if sync and cluster is not None:
        raise UsageError("--sync runs on one machine for now, not with --cluster (docs/sync.md)")
    if not no_validate:
        _check_report_dir(report_dir)
    _preflight_writing(archive if archive is not None else DEFAULT_MIGRATE_ARCHIVE, cluster, state)
    source, source_plugin, selection = _open_source(from_, options, path)
    writer = _writer(cluster, state)
    target, target_plugin, _ = _open_target(to, options, _workers(workers), upload_workers, writer)
    try:
        source.check()
        target.check()
    except BaseException:
        _close(target)
        raise
    stages = Workers(export=_workers(export_workers or workers, "export_workers"), load=workers,
                     validate=_workers(validate_workers or workers, "validate_workers"))
    root = _local(archive if archive is not None else DEFAULT_MIGRATE_ARCHIVE)
    plan = _source_plan(from_, options, path, source, selection, root, (to, TargetSettings(workers, upload_workers,
                                                                                            writer)), None, refresh)
    with _ledger(state) as ledger, _cluster(cluster, state, plan, write=True) as remote:
        try:
            archive_writer = ArchiveWriter(root)
            run = run_pipeline(source, archive_writer, target, selection, ledger,
                               _tracker("migrate", progress, ("export", "load", "validate")), stages, refresh,
                               validate=not no_validate, sync=sync, cluster=remote)
            log.debug("stage seconds: %s", run.clock.to_dict())
            registry = _export_models(source_plugin, source, root, ledger, no_models)
            registry += _load_models(target_plugin, Archive(root), target, ledger)
            validation = None
            if not no_validate:
                summary, this_pass = run.validated, None
                if sync:  # the report covers every selected run, not only what this pass changed
                    summary, this_pass = whole_selection(run.exported, run.loaded, run.validated, ledger, target,
                                                         selection, archive_writer, stages.validate)
                validation = _report(summary, ledger, str(root), report_dir, plugin=target_plugin, target=target,
                                     retry_command=retry_command, this_pass=this_pass)
        finally:
            _close(target)
    return MigrationResult(run.exported, run.loaded, validation, registry, target_plugin.hint(target), run.clock)


def status(*, state: str | Path | None = None, stage: str | None = None, failed: bool = False) -> StatusResult:
    """Every run's stage, status, attempts and last error from the ledger (`failed`: only failed or mismatched).

    Read-only and never waits: it answers while a load, a migrate or a `migrate --sync --every` loop holds the
    ledger, showing the rows that process has committed so far."""
    if state is None:
        state = os.environ.get("NEPTUNE_MIGRATION_STATE") or None
    if state is None or not is_database_uri(str(state)):
        path = Path(state) if state is not None else default_state_path()
        if not path.exists():
            raise UsageError(f"no ledger at {path}: nothing has run yet (or pass --state)")
        state = path
    with open_view(state) as view:
        entries = [e for e in view.entries(stage=stage) if not failed or e.status in ("failed", "mismatch")]
        in_use = view.in_use() if isinstance(view, LedgerView) else None
        return StatusResult(view.path, entries, syncs=[x for x in view.sync_states() if x.syncs], in_use=in_use)
