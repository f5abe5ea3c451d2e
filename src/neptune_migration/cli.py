"""The `neptune-migrate` command line: parses options, builds the parts, calls the pipeline. Nothing else."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from neptune_migration import __version__
from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.ledger import Ledger, default_state_path
from neptune_migration.progress import Tracker
from neptune_migration.secrets import redact
from neptune_migration.selection import Selection

app = typer.Typer(
    name="neptune-migrate",
    help="Move Neptune experiment history into MLflow or Weights & Biases, and prove nothing was lost.",
    epilog="Tokens are read from the environment (NEPTUNE_API_TOKEN or --api-token-file FILE, WANDB_API_KEY, "
    "MLFLOW_TRACKING_TOKEN / MLFLOW_TRACKING_PASSWORD) and never printed, logged or stored. "
    "Try it without a server: neptune-migrate demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(stderr=True)
out = Console()
log = logging.getLogger("neptune_migration")

# -- options shared by every command that reads runs -----------------------------------------------------
ProjectOpt = Annotated[
    list[str] | None,
    typer.Option("--project", "-p", help="Neptune project id WS/PROJ to include (repeatable). Default: all.",
                 rich_help_panel="Selection"),
]
RunsOpt = Annotated[str | None, typer.Option(help="Regex on run ids (3.x custom run id, 2.x sys/id).",
                                             rich_help_panel="Selection")]
ExperimentsOpt = Annotated[str | None, typer.Option(help="Regex on experiment names (sys/name).",
                                                    rich_help_panel="Selection")]
SinceOpt = Annotated[str | None, typer.Option(help="Only runs created at or after this date (ISO-8601).",
                                              rich_help_panel="Selection")]
UntilOpt = Annotated[str | None, typer.Option(help="Only runs created at or before this date (ISO-8601).",
                                              rich_help_panel="Selection")]
TagOpt = Annotated[list[str] | None, typer.Option("--tag", help="Only runs with this tag (repeatable; any of them).",
                                                  rich_help_panel="Selection")]
AllTagsOpt = Annotated[bool, typer.Option("--all-tags", help="With --tag: require every tag, not any.",
                                          rich_help_panel="Selection")]
AttributesOpt = Annotated[str | None, typer.Option(help="Regex: only attributes whose path matches.",
                                                   rich_help_panel="Selection")]
ExcludeAttributesOpt = Annotated[str | None, typer.Option(help="Regex: leave out attributes whose path matches.",
                                                          rich_help_panel="Selection")]
IncludeOpt = Annotated[list[str] | None, typer.Option("--include", help="Only these classes: params, metrics, "
                                                      "series, files (repeatable).", rich_help_panel="Selection")]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help="Leave out these classes: params, metrics, "
                                                      "series, files (repeatable).", rich_help_panel="Selection")]
LimitOpt = Annotated[int | None, typer.Option(help="At most this many runs.", rich_help_panel="Selection")]
ArchivedOpt = Annotated[bool, typer.Option("--include-archived", help="Also migrate archived and trashed runs.",
                                           rich_help_panel="Selection")]
MaxFileSizeOpt = Annotated[str | None, typer.Option(help="Skip files larger than this (e.g. 500MB, 2GiB).",
                                                    rich_help_panel="Selection")]
FileTypesOpt = Annotated[list[str] | None, typer.Option("--file-types", help="Only files with these extensions or "
                                                        "MIME patterns (png,jpg or image/*).",
                                                        rich_help_panel="Selection")]
FilePatternOpt = Annotated[str | None, typer.Option(help="Only files whose name (or path/name) matches this glob.",
                                                    rich_help_panel="Selection")]
# -- options every command has ------------------------------------------------------------------------
WorkersOpt = Annotated[int, typer.Option(help="Runs processed in parallel.", min=1, max=64)]
ExportWorkersOpt = Annotated[int | None, typer.Option(help="migrate: runs exported in parallel (default: --workers).",
                                                      min=1, max=64)]
ValidateWorkersOpt = Annotated[int | None, typer.Option(help="migrate: runs read back in parallel (default: "
                                                        "--workers).", min=1, max=64)]
UploadWorkersOpt = Annotated[int | None, typer.Option(help="Concurrent uploads into the target: MLflow artifact "
                                                      "files (default: --workers, at least 2), W&B runs being "
                                                      "synced (default: --workers).", min=1, max=64,
                                                      rich_help_panel="Target")]
StateOpt = Annotated[Path | None, typer.Option(help="Ledger file (SQLite). Default: .neptune-migration/state.db "
                                               "or $NEPTUNE_MIGRATION_STATE.")]
NoProgressOpt = Annotated[bool, typer.Option("--no-progress", help="Plain log lines instead of progress bars.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
LogFileOpt = Annotated[Path | None, typer.Option(help="Also write the full log to this file.")]
OBJECT_STORE_HELP = ("A folder, or a prefix on object storage: s3://BUCKET/PREFIX (credentials, region and "
                     "AWS_ENDPOINT_URL from the AWS environment) or gs://BUCKET/PREFIX; the ledger stays local.")
# -- targets -------------------------------------------------------------------------------------------
ToOpt = Annotated[str, typer.Option("--to", help="Target: mlflow, wandb (online), or wandb-offline (sync-ready "
                                    "folders in --wandb-dir).",
                                    rich_help_panel="Target")]
TrackingUriOpt = Annotated[str | None, typer.Option(
    "--mlflow-tracking-uri", envvar="MLFLOW_TRACKING_URI",
    help="MLflow tracking URI (http://..., sqlite:///...). Default: a local store in ./mlflow-store. "
    "Credentials: MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN in the environment.",
    rich_help_panel="Target")]
ExperimentByOpt = Annotated[str, typer.Option(help="MLflow experiment per Neptune 'project' or per Neptune "
                                              "'experiment' (sys/name).", rich_help_panel="Target")]
ExperimentPrefixOpt = Annotated[str, typer.Option(help="Prefix for MLflow experiment names.",
                                                  rich_help_panel="Target")]
MlflowBulkOpt = Annotated[bool, typer.Option("--mlflow-bulk", help="For sqlite:/// stores you own: insert metric "
                                             "points straight into MLflow's tables (about 10x faster; pinned to "
                                             "MLflow 3.17.2's schema, refuses any other; checked after each run).",
                                             rich_help_panel="Target")]
WandbEntityOpt = Annotated[str | None, typer.Option(envvar="WANDB_ENTITY", help="W&B entity (team or user). Default: "
                                                    "the API key's default entity.", rich_help_panel="Target")]
WandbProjectOpt = Annotated[str | None, typer.Option(help="W&B project for every run. Default: derived from each "
                                                     "Neptune project (sanitised).", rich_help_panel="Target")]
WandbProjectPrefixOpt = Annotated[str, typer.Option(help="Prefix for derived W&B project names.",
                                                    rich_help_panel="Target")]
WandbDirOpt = Annotated[Path, typer.Option(help="--to wandb-offline: folder for the sync-ready run folders. The API "
                                           "key (online) comes from WANDB_API_KEY; WANDB_BASE_URL selects a "
                                           "dedicated or self-managed server.", rich_help_panel="Target")]


# -- sources -------------------------------------------------------------------------------------------
FromOpt = Annotated[str, typer.Option("--from", help="Source: neptune3 (neptune-query), neptune2 (neptune 1.x "
                                      "client), neptune-offline PATH.", rich_help_panel="Source")]
TokenFileOpt = Annotated[Path | None, typer.Option(
    help="Read the Neptune API token from this file instead of $NEPTUNE_API_TOKEN.", rich_help_panel="Source")]
LineageOpt = Annotated[str, typer.Option(help="Forked runs: 'own' points only (default) or 'full' (also the "
                                         "inherited history).", rich_help_panel="Source")]
PreviewsOpt = Annotated[bool, typer.Option("--previews", help="Also export metric preview points (flagged).",
                                           rich_help_panel="Source")]
DownloadWorkersOpt = Annotated[int, typer.Option(help="Concurrent file downloads per run.", min=1, max=64,
                                                 rich_help_panel="Source")]
QueryOpt = Annotated[str | None, typer.Option(help="neptune2: extra NQL for the runs table, ANDed with the "
                                              "selection (e.g. '`sys/creation_time`:datetime > \"2024-01-01\"').",
                                              rich_help_panel="Source")]
WorkspaceOpt = Annotated[str | None, typer.Option(help="neptune2: every project of this workspace (see "
                                                  "--include-projects/--exclude-projects).", rich_help_panel="Source")]
IncludeProjectsOpt = Annotated[str | None, typer.Option(help="neptune2 with --workspace: regex on project names "
                                                        "to include.", rich_help_panel="Source")]
ExcludeProjectsOpt = Annotated[str | None, typer.Option(help="neptune2 with --workspace: regex on project names "
                                                        "to leave out.", rich_help_panel="Source")]
FileSetsOpt = Annotated[str, typer.Option(help="neptune2 file sets: keep as 'zip' (default) or 'extract' their "
                                          "files (entries escaping the set are refused).", rich_help_panel="Source")]
PathArg = Annotated[Path | None, typer.Argument(help="With --from neptune-offline: the folder holding the "
                                                "offline runs (.neptune/ or anything above it).",
                                                show_default=False)]
AssignProjectOpt = Annotated[str | None, typer.Option(help="neptune-offline: the project WS/PROJ the runs belong to "
                                                      "(default: offline/<folder name>).", rich_help_panel="Source")]
RunIdTemplateOpt = Annotated[str | None, typer.Option(help="neptune-offline (1.x runs): run id template, fields "
                                                      "{container_id} {short_id} {folder} {created:%Y%m%d} {index}.",
                                                      rich_help_panel="Source")]
NoModelsOpt = Annotated[bool, typer.Option("--no-models", help="neptune2: leave the model registry (models and "
                                           "model versions) out.", rich_help_panel="Source")]
RefreshOpt = Annotated[bool, typer.Option("--refresh", help="Re-export runs whose Neptune modification time "
                                          "moved since they were exported.", rich_help_panel="Source")]


def _setup_logging(verbose: bool, log_file: Path | None, no_progress: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("neptune_migration")
    root.setLevel(logging.DEBUG)
    root.handlers.clear()

    class Redacting(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg = redact(record.getMessage())
            record.args = ()
            return True

    if no_progress or not console.is_terminal:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    else:
        handler = RichHandler(console=console, show_path=False, markup=False)
    handler.setLevel(level)
    handler.addFilter(Redacting())
    root.addHandler(handler)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
        file_handler.setLevel(logging.DEBUG)
        file_handler.addFilter(Redacting())
        root.addHandler(file_handler)
    # Client libraries are chatty at INFO; their warnings still come through.
    for noisy in ("mlflow", "urllib3", "alembic", "wandb", "neptune", "neptune_query", "bravado"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _selection(**kwargs: object) -> Selection:
    return Selection.from_options(
        projects=kwargs["project"] or (),
        runs=kwargs["runs"],
        experiments=kwargs["experiments"],
        since=kwargs["since"],
        until=kwargs["until"],
        tags=kwargs["tag"] or (),
        all_tags=bool(kwargs["all_tags"]),
        attributes=kwargs["attributes"],
        exclude_attributes=kwargs["exclude_attributes"],
        include=kwargs["include"] or (),
        exclude=kwargs["exclude"] or (),
        limit=kwargs["limit"],
        include_archived=bool(kwargs["include_archived"]),
        max_file_size=kwargs["max_file_size"],
        file_types=kwargs["file_types"] or (),
        file_pattern=kwargs["file_pattern"],
    )  # type: ignore[arg-type]


@dataclass
class WandbOptions:
    entity: str | None = None
    project: str | None = None
    project_prefix: str = ""
    directory: Path = Path("wandb-offline")


def _target(to: str, tracking_uri: str | None, experiment_by: str, experiment_prefix: str, workers: int,
            wandb: WandbOptions | None = None, mlflow_bulk: bool = False, upload_workers: int | None = None):
    if to == "mlflow":
        from neptune_migration.targets.mlflow.bulk import MlflowBulkTarget
        from neptune_migration.targets.mlflow.loader import MlflowTarget

        kind = MlflowBulkTarget if mlflow_bulk else MlflowTarget
        return kind(tracking_uri, experiment_by=experiment_by, experiment_prefix=experiment_prefix,
                    upload_workers=upload_workers or max(2, workers))
    if mlflow_bulk:
        raise UsageError("--mlflow-bulk is only for --to mlflow")
    wandb = wandb or WandbOptions()
    if to == "wandb-offline":
        from neptune_migration.targets.wandb.loader import WandbOfflineTarget

        return WandbOfflineTarget(wandb.directory, entity=wandb.entity, project=wandb.project,
                                  project_prefix=wandb.project_prefix)
    if to == "wandb":
        from neptune_migration.targets.wandb.loader import WandbOnlineTarget

        return WandbOnlineTarget(entity=wandb.entity, project=wandb.project, project_prefix=wandb.project_prefix,
                                 upload_workers=upload_workers)
    raise UsageError(f"--to: unknown target {to!r}; choose mlflow, wandb or wandb-offline")


def _after_load(to: str, target) -> None:
    """Tell the user how to look at what arrived."""
    if to == "mlflow":
        from neptune_migration.targets.mlflow.loader import ui_command

        out.print(f"\nOpen the MLflow UI: [bold]{ui_command(target.tracking_uri)}[/bold]", soft_wrap=True)
    elif to == "wandb-offline":
        out.print(f"\nOn a connected machine, upload with: [bold]{target.sync_command()}[/bold]", soft_wrap=True)


@dataclass
class SourceOptions:
    token_file: Path | None = None
    lineage: str = "own"
    previews: bool = False
    download_workers: int = 4
    query: str | None = None
    workspace: str | None = None
    include_projects: str | None = None
    exclude_projects: str | None = None
    file_sets: str = "zip"
    path: Path | None = None
    assign_project: str | None = None
    run_id_template: str | None = None


def _source(from_: str, projects: list[str] | None, selection: Selection, opts: SourceOptions):
    projects = list(projects or ([os.environ["NEPTUNE_PROJECT"]] if os.environ.get("NEPTUNE_PROJECT") else []))
    if from_ == "neptune3":
        from neptune_migration.sources.base import read_api_token
        from neptune_migration.sources.neptune3.source import Neptune3Source

        return Neptune3Source(projects, selection, read_api_token(token_file=opts.token_file), lineage=opts.lineage,
                              previews=opts.previews, download_workers=opts.download_workers)
    if from_ == "neptune2":
        from neptune_migration.sources.base import read_api_token
        from neptune_migration.sources.neptune2.source import Neptune2Source

        return Neptune2Source(projects, selection, read_api_token(token_file=opts.token_file), query=opts.query,
                              workspace=opts.workspace, include_projects=opts.include_projects,
                              exclude_projects=opts.exclude_projects, include_trashed=selection.include_archived,
                              file_sets=opts.file_sets)
    if from_ == "neptune-offline":
        from neptune_migration.sources.offline.source import OfflineSource

        if opts.path is None:
            raise UsageError("--from neptune-offline needs the folder to read: neptune-migrate ... --from "
                             "neptune-offline PATH")
        return OfflineSource(opts.path, selection, assign_project=opts.assign_project,
                             run_id_template=opts.run_id_template, previews=opts.previews)
    if opts.path is not None:
        raise UsageError(f"a PATH argument is only for --from neptune-offline, not --from {from_}")
    raise UsageError(f"--from: unknown source {from_!r}; choose neptune3, neptune2 or neptune-offline")


def _tracker(title: str, no_progress: bool, stages: tuple[str, ...] = ()):
    return lambda total: Tracker(title, total, console, enabled=not no_progress, stages=stages)


@app.command()
def load(
    archive: Annotated[str, typer.Option(
        metavar="DIR|URL", help="Archive root (holding data/ and files/) or a neptune-exporter "
                                "parquet root (one folder per project). " + OBJECT_STORE_HELP)],
    files: Annotated[str | None, typer.Option(
        metavar="DIR|URL", help="neptune-exporter files root, when --archive is their "
                                "parquet root (a folder, s3://... or gs://...).")] = None,
    to: ToOpt = "mlflow",
    mlflow_tracking_uri: TrackingUriOpt = None,
    experiment_by: ExperimentByOpt = "project",
    experiment_prefix: ExperimentPrefixOpt = "",
    wandb_entity: WandbEntityOpt = None,
    wandb_project: WandbProjectOpt = None,
    wandb_project_prefix: WandbProjectPrefixOpt = "",
    wandb_dir: WandbDirOpt = Path("wandb-offline"),
    mlflow_bulk: MlflowBulkOpt = False,
    project: ProjectOpt = None,
    runs: RunsOpt = None,
    experiments: ExperimentsOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    tag: TagOpt = None,
    all_tags: AllTagsOpt = False,
    attributes: AttributesOpt = None,
    exclude_attributes: ExcludeAttributesOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    limit: LimitOpt = None,
    include_archived: ArchivedOpt = False,
    max_file_size: MaxFileSizeOpt = None,
    file_types: FileTypesOpt = None,
    file_pattern: FilePatternOpt = None,
    workers: WorkersOpt = 4,
    upload_workers: UploadWorkersOpt = None,
    state: StateOpt = None,
    no_progress: NoProgressOpt = False,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
) -> None:
    """Load an archive (ours or neptune-exporter's) into a target. Resumable: rerun to continue.

    Example: neptune-migrate load --archive ./exports/data --files ./exports/files --to mlflow
    """
    from neptune_migration.archive import Archive
    from neptune_migration.stages.load import load as run_load

    _setup_logging(verbose, log_file, no_progress)
    selection = _selection(**locals())
    source = Archive(archive, files)
    target = _target(to, mlflow_tracking_uri, experiment_by, experiment_prefix, workers,
                     WandbOptions(wandb_entity, wandb_project, wandb_project_prefix, wandb_dir), mlflow_bulk,
                     upload_workers)
    target.check()
    with Ledger(state or default_state_path()) as ledger:
        try:
            summary = run_load(source, target, selection, ledger, _tracker("load", no_progress), workers)
            registry_failed = _load_registry(archive, files, target, ledger)
        finally:
            target.close()
    _print_summary(summary)
    if registry_failed:
        raise typer.Exit(1)
    _after_load(to, target)
    if summary.failed:
        raise typer.Exit(1)


def _print_summary(summary) -> None:
    table = Table(title=f"Load into {summary.target}", show_header=False, box=None)
    table.add_row("runs loaded", str(summary.count("loaded")))
    table.add_row("runs already loaded (skipped)", str(summary.count("already_loaded")))
    table.add_row("runs failed", str(summary.count("failed")))
    if summary.not_selected:
        table.add_row("runs not selected", str(summary.not_selected))
    if summary.incomplete:
        table.add_row("incomplete runs in archive (not loaded)", str(len(summary.incomplete)))
    table.add_row("metric points", f"{summary.points:,}")
    table.add_row("files", f"{summary.files:,} ({summary.bytes / 1e6:,.1f} MB)")
    rate = summary.points / summary.seconds if summary.seconds else 0
    table.add_row("time", f"{summary.seconds:,.1f} s ({rate:,.0f} points/s)")
    for kind, n in sorted(summary.approximations().items()):
        table.add_row(f"approximated: {kind}", f"{n:,}")
    out.print(table)
    for outcome in summary.failed:
        out.print(f"[red]failed[/red] {outcome.key}: {outcome.error}")
    for item in summary.incomplete:
        out.print(f"[yellow]incomplete in archive[/yellow] {item.project_dir.name}/{item.run_folder}")


@app.command()
def export(
    path: PathArg = None,
    archive: Annotated[str, typer.Option(metavar="DIR|URL", help="Archive to write (data/ and files/ inside it). "
                                                                 + OBJECT_STORE_HELP)] = "neptune-archive",
    from_: FromOpt = "neptune3",
    api_token_file: TokenFileOpt = None,
    lineage: LineageOpt = "own",
    previews: PreviewsOpt = False,
    download_workers: DownloadWorkersOpt = 4,
    query: QueryOpt = None,
    workspace: WorkspaceOpt = None,
    include_projects: IncludeProjectsOpt = None,
    exclude_projects: ExcludeProjectsOpt = None,
    file_sets: FileSetsOpt = "zip",
    assign_project: AssignProjectOpt = None,
    run_id_template: RunIdTemplateOpt = None,
    refresh: RefreshOpt = False,
    no_models: NoModelsOpt = False,
    project: ProjectOpt = None,
    runs: RunsOpt = None,
    experiments: ExperimentsOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    tag: TagOpt = None,
    all_tags: AllTagsOpt = False,
    attributes: AttributesOpt = None,
    exclude_attributes: ExcludeAttributesOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    limit: LimitOpt = None,
    include_archived: ArchivedOpt = False,
    max_file_size: MaxFileSizeOpt = None,
    file_types: FileTypesOpt = None,
    file_pattern: FilePatternOpt = None,
    workers: WorkersOpt = 4,
    state: StateOpt = None,
    no_progress: NoProgressOpt = False,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
) -> None:
    """Export runs from Neptune into an archive (neptune-exporter's layout). Resumable: rerun to continue.

    Example: NEPTUNE_API_TOKEN=... neptune-migrate export --from neptune3 -p ws/proj --archive ./archive
    """
    from neptune_migration.archive import ArchiveWriter, archive_location
    from neptune_migration.stages.export import export as run_export

    _setup_logging(verbose, log_file, no_progress)
    selection = _selection(**locals())
    source = _source(from_, project, selection, SourceOptions(
        api_token_file, lineage, previews, download_workers, query, workspace, include_projects, exclude_projects,
        file_sets, path, assign_project, run_id_template))
    root = archive_location(archive)
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)
    with Ledger(state or default_state_path()) as ledger:
        summary = run_export(source, ArchiveWriter(root), ledger, _tracker("export", no_progress), workers,
                             refresh)
        registry_failed = _export_registry(source, root, ledger, no_models)
    _print_export(summary)
    if registry_failed:
        raise typer.Exit(1)
    if summary.failed:
        raise typer.Exit(1)


def _export_registry(source, archive: str | Path, ledger: Ledger, no_models: bool) -> bool:
    """The 2.x model registry, after the runs. True when an entry failed."""
    if no_models or not hasattr(source, "list_registry"):
        return False
    from neptune_migration.stages.model_registry import export_registry

    outcomes = export_registry(source, archive, ledger)
    if outcomes:
        done = sum(1 for o in outcomes if o.status != "failed")
        out.print(f"model registry: {done} of {len(outcomes)} models and versions exported")
    for o in outcomes:
        if o.status == "failed":
            out.print(f"[red]failed[/red] registry {o.key}: {o.error}")
    return any(o.status == "failed" for o in outcomes)


def _load_registry(archive: str | Path, files: str | Path | None, target, ledger: Ledger) -> bool:
    """Models and versions into MLflow's registry when the archive holds them. True when an entry failed."""
    from neptune_migration.archive import Archive
    from neptune_migration.stages.model_registry import load_registry

    if getattr(target, "name", "") != "mlflow":
        return False
    results = load_registry(Archive(archive, files), target, ledger)
    if results:
        done = sum(1 for _, status, _ in results if status != "failed")
        out.print(f"model registry: {done} of {len(results)} models and versions in MLflow")
    for key, status, error in results:
        if status == "failed":
            out.print(f"[red]failed[/red] registry {key}: {error}")
    return any(status == "failed" for _, status, _ in results)


def _print_export(summary) -> None:
    table = Table(title=f"Export into {summary.archive}", show_header=False, box=None)
    table.add_row("runs selected", str(summary.listed))
    table.add_row("runs exported", str(summary.count("exported")))
    table.add_row("runs already exported (skipped)", str(summary.count("already_exported")))
    table.add_row("runs failed", str(summary.count("failed")))
    stats = [o.stats for o in summary.outcomes if o.stats is not None]
    table.add_row("points", f"{sum(s.points for s in stats):,}")
    table.add_row("files", f"{sum(s.files for s in stats):,} ({sum(s.bytes for s in stats) / 1e6:,.1f} MB)")
    missing = [f"{o.key}: {m}" for o in summary.outcomes if o.stats is not None for m in o.stats.missing_files]
    if missing:
        table.add_row("files missing at the source", str(len(missing)))
    table.add_row("time", f"{summary.seconds:,.1f} s")
    out.print(table)
    for line in missing:
        out.print(f"[yellow]missing file[/yellow] {line}")
    for outcome in summary.failed:
        out.print(f"[red]failed[/red] {outcome.key}: {outcome.error}")


@app.command()
def discover(
    path: PathArg = None,
    from_: FromOpt = "neptune3",
    api_token_file: TokenFileOpt = None,
    query: QueryOpt = None,
    workspace: WorkspaceOpt = None,
    include_projects: IncludeProjectsOpt = None,
    exclude_projects: ExcludeProjectsOpt = None,
    assign_project: AssignProjectOpt = None,
    run_id_template: RunIdTemplateOpt = None,
    project: ProjectOpt = None,
    runs: RunsOpt = None,
    experiments: ExperimentsOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    tag: TagOpt = None,
    all_tags: AllTagsOpt = False,
    attributes: AttributesOpt = None,
    exclude_attributes: ExcludeAttributesOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    limit: LimitOpt = None,
    include_archived: ArchivedOpt = False,
    max_file_size: MaxFileSizeOpt = None,
    file_types: FileTypesOpt = None,
    file_pattern: FilePatternOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    no_progress: NoProgressOpt = False,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
) -> None:
    """List what the selection matches (experiments, runs, attributes by type) without moving any data."""
    import json

    from neptune_migration.stages.discover import discover as run_discover

    _setup_logging(verbose, log_file, no_progress)
    selection = _selection(**locals())
    source = _source(from_, project, selection, SourceOptions(
        api_token_file, query=query, workspace=workspace, include_projects=include_projects,
        exclude_projects=exclude_projects, path=path, assign_project=assign_project,
        run_id_template=run_id_template))
    report = run_discover(source)
    if json_output:
        out.print_json(json.dumps(report))
        return
    table = Table(title="Discovered")
    for col in ("project", "runs", "experiments", "attributes", "by type"):
        table.add_column(col, overflow="fold")
    for p in report["projects"]:
        by_type = ", ".join(f"{t} {n}" for t, n in sorted(p["attributes_by_type"].items()))
        table.add_row(p["project"], str(p["runs"]), str(len(p["experiments"])), str(p["attributes"]), by_type)
    out.print(table)
    for p in report["projects"]:
        for run in p.get("run_details", []):
            derived = ", ".join(f"{k} from {v}" for k, v in (run.get("derived") or {}).items())
            out.print(f"  {p['project']}/{run['run_id']}: {run.get('folder', '')} {derived}".rstrip())
    out.print(f"{report['runs']} runs selected; files declared: {report['file_bytes'] / 1e6:,.1f} MB "
              f"(file series counted at export)")


@app.command()
def migrate(
    path: PathArg = None,
    from_: FromOpt = "neptune3",
    to: ToOpt = "mlflow",
    archive: Annotated[str | None, typer.Option(
        metavar="DIR|URL", help="Where the intermediate archive goes (kept, resumable). "
                                "Default: .neptune-migration/archive. " + OBJECT_STORE_HELP)] = None,
    mlflow_tracking_uri: TrackingUriOpt = None,
    experiment_by: ExperimentByOpt = "project",
    experiment_prefix: ExperimentPrefixOpt = "",
    wandb_entity: WandbEntityOpt = None,
    wandb_project: WandbProjectOpt = None,
    wandb_project_prefix: WandbProjectPrefixOpt = "",
    wandb_dir: WandbDirOpt = Path("wandb-offline"),
    mlflow_bulk: MlflowBulkOpt = False,
    api_token_file: TokenFileOpt = None,
    lineage: LineageOpt = "own",
    previews: PreviewsOpt = False,
    download_workers: DownloadWorkersOpt = 4,
    query: QueryOpt = None,
    workspace: WorkspaceOpt = None,
    include_projects: IncludeProjectsOpt = None,
    exclude_projects: ExcludeProjectsOpt = None,
    file_sets: FileSetsOpt = "zip",
    assign_project: AssignProjectOpt = None,
    run_id_template: RunIdTemplateOpt = None,
    refresh: RefreshOpt = False,
    no_models: NoModelsOpt = False,
    project: ProjectOpt = None,
    runs: RunsOpt = None,
    experiments: ExperimentsOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    tag: TagOpt = None,
    all_tags: AllTagsOpt = False,
    attributes: AttributesOpt = None,
    exclude_attributes: ExcludeAttributesOpt = None,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    limit: LimitOpt = None,
    include_archived: ArchivedOpt = False,
    max_file_size: MaxFileSizeOpt = None,
    file_types: FileTypesOpt = None,
    file_pattern: FilePatternOpt = None,
    no_validate: Annotated[bool, typer.Option("--no-validate", help="Skip the validation stage (read-back and "
                                              "report); run `validate` later.")] = False,
    report_dir: Annotated[Path, typer.Option(help="Where report.json, report.html, report.md and errors.jsonl "
                                             "are written.")] = Path("neptune-migration-report"),
    workers: WorkersOpt = 4,
    export_workers: ExportWorkersOpt = None,
    validate_workers: ValidateWorkersOpt = None,
    upload_workers: UploadWorkersOpt = None,
    state: StateOpt = None,
    no_progress: NoProgressOpt = False,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
) -> None:
    """Export from Neptune, load into the target and read back, the three stages overlapping run by run.
    Resumable: rerun to continue.

    Example: neptune-migrate migrate --from neptune3 -p ws/proj --to mlflow --mlflow-tracking-uri http://...
    """
    _setup_logging(verbose, log_file, no_progress)
    selection = _selection(**locals())
    source = _source(from_, project, selection, SourceOptions(
        api_token_file, lineage, previews, download_workers, query, workspace, include_projects, exclude_projects,
        file_sets, path, assign_project, run_id_template))
    target = _target(to, mlflow_tracking_uri, experiment_by, experiment_prefix, workers,
                     WandbOptions(wandb_entity, wandb_project, wandb_project_prefix, wandb_dir), mlflow_bulk,
                     upload_workers)
    from neptune_migration.archive import archive_location
    from neptune_migration.stages.migrate import Workers

    stages = Workers(export=export_workers or workers, load=workers, validate=validate_workers or workers)
    failed = _run_migrate(source, target, selection, archive_location(archive or ".neptune-migration/archive"),
                          state or default_state_path(), stages, refresh, no_progress,
                          None if no_validate else report_dir, no_models)
    _after_load(to, target)
    if failed:
        raise typer.Exit(1)


def _run_migrate(source, target, selection: Selection, archive: str | Path, state: Path, workers, refresh: bool,
                 no_progress: bool, report_dir: Path | None, no_models: bool = False) -> bool:
    """Export, load and (unless report_dir is None) validate, pipelined; then the reports.
    True when anything failed or mismatched."""
    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.stages.migrate import run_pipeline

    if isinstance(archive, Path):
        archive.mkdir(parents=True, exist_ok=True)
    ok = True
    with Ledger(state) as ledger:
        try:
            result = run_pipeline(source, ArchiveWriter(archive), target, selection, ledger,
                                  _tracker("migrate", no_progress, ("export", "load", "validate")), workers, refresh,
                                  validate=report_dir is not None)
            log.debug("stage seconds: %s", result.clock.to_dict())
            registry_failed = _export_registry(source, archive, ledger, no_models)
            registry_failed = _load_registry(archive, None, target, ledger) or registry_failed
            _print_export(result.exported)
            _print_summary(result.loaded)
            if report_dir is not None:
                from neptune_migration.cli_validate import finish_report

                ok = finish_report(result.validated, ledger, str(archive), report_dir)
        finally:
            target.close()
    return bool(result.exported.failed or result.loaded.failed or registry_failed) or not ok


@app.command()
def status(
    state: StateOpt = None,
    stage: Annotated[str | None, typer.Option(help="Only this stage: export, load, validate.")] = None,
    failed_only: Annotated[bool, typer.Option("--failed", help="Only runs that failed or mismatched.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show every run's stage, status, attempts and last error from the ledger."""
    import json

    path = state or default_state_path()
    if not path.exists():
        raise UsageError(f"no ledger at {path}: nothing has run yet (or pass --state)")
    with Ledger(path) as ledger:
        entries = [e for e in ledger.entries(stage=stage) if not failed_only or e.status in ("failed", "mismatch")]
    if json_output:
        rows = [
            {"project_id": e.ref.project_id, "run_id": e.ref.run_id, "stage": e.stage, "target": e.target,
             "status": e.status, "attempts": e.attempts, "target_id": e.target_id, "last_error": e.last_error}
            for e in entries
        ]
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"Ledger {path}")
    for col in ("project", "run", "stage", "target", "status", "attempts", "target id", "last error"):
        table.add_column(col, overflow="fold")
    for e in entries:
        color = {"done": "green", "failed": "red", "mismatch": "red", "running": "yellow"}.get(e.status, "")
        table.add_row(e.ref.project_id, e.ref.run_id, e.stage, e.target, f"[{color}]{e.status}[/{color}]"
                      if color else e.status, str(e.attempts), e.target_id or "", e.last_error or "")
    out.print(table)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    out.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no entries")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its archive, ledger and MLflow store.")] = Path(
        "neptune-migration-demo"),
    no_progress: NoProgressOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Start the built-in Neptune sandbox with a realistic project and migrate it into a local MLflow store and a
    W&B offline folder, validating both.

    No credentials and no network needed: the sandbox is a local Neptune API server that the real
    neptune-query client talks to, so this runs exactly the code path of a real migration.
    """
    from neptune_migration.sandbox import Sandbox, demo_project
    from neptune_migration.stages.migrate import Workers
    from neptune_migration.targets.mlflow.loader import MlflowTarget, ui_command

    _setup_logging(verbose, None, no_progress)
    workdir.mkdir(parents=True, exist_ok=True)
    with Sandbox([demo_project()], port=0) as sandbox:
        # neptune-query reads its environment when first imported, so the sandbox's must be in place first.
        os.environ.update(sandbox.env())
        project = next(iter(sandbox.projects))
        out.print(f"Neptune sandbox serving project [bold]{project}[/bold] on {sandbox.url}")
        selection = Selection()
        source = _source("neptune3", [project], selection, SourceOptions())
        tracking_uri = f"sqlite:///{(workdir / 'mlflow-store' / 'mlflow.db').resolve()}"
        target = MlflowTarget(tracking_uri)
        failed = _run_migrate(source, target, selection, workdir / "archive", workdir / "state.db",
                              Workers(), False, no_progress, workdir / "report")
    # The same archive into W&B, offline: sync-ready folders a connected machine can upload.
    from neptune_migration.archive import Archive
    from neptune_migration.cli_validate import finish_report
    from neptune_migration.stages.load import load as run_load
    from neptune_migration.stages.validate import validate as run_validate
    from neptune_migration.targets.wandb.loader import WandbOfflineTarget

    wandb_target = WandbOfflineTarget(workdir / "wandb-offline")
    with Ledger(workdir / "state.db") as ledger:
        try:
            loaded = run_load(Archive(workdir / "archive"), wandb_target, selection, ledger,
                              _tracker("demo: W&B offline", no_progress), 4)
            _print_summary(loaded)
            checked = run_validate(Archive(workdir / "archive"), wandb_target, selection, ledger,
                                   _tracker("validate", no_progress), 4)
            failed = not finish_report(checked, ledger, str(workdir / "archive"), workdir / "report-wandb") or \
                bool(loaded.failed) or failed
        finally:
            wandb_target.close()
    out.print(f"\nArchive: {workdir / 'archive'}   Ledger: {workdir / 'state.db'}", soft_wrap=True)
    out.print(f"Open the MLflow UI: [bold]{ui_command(tracking_uri)}[/bold]", soft_wrap=True)
    out.print(f"Upload to W&B from a connected machine: [bold]{wandb_target.sync_command()}[/bold]", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


sandbox_app = typer.Typer(help="The built-in Neptune API sandbox (for trying the tool without a server).",
                          no_args_is_help=True)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("serve")
def sandbox_serve(
    seed: Annotated[str, typer.Option(help="What to serve: demo, nasty, generate:runs=N,series=N,points=N,"
                                      "files=N, offline:PATH; join several with +.")] = "demo",
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8765,
) -> None:
    """Serve a seeded Neptune API on 127.0.0.1 and print the NEPTUNE_API_TOKEN and environment to use it."""
    from neptune_migration.sandbox.serve import serve

    serve(seed=seed, port=port)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    """Tokens are read from the environment (NEPTUNE_API_TOKEN, WANDB_API_KEY, MLFLOW_TRACKING_TOKEN) and
    never printed, logged or stored."""
    if version:
        out.print(f"neptune-migrate {__version__}")
        raise typer.Exit(0)


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    try:
        # Without standalone mode click returns the exit code of a `typer.Exit` instead of exiting with it.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except MigrationError as exc:
        console.print(f"[red]error:[/red] {redact(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        console.print("[red]aborted[/red]")
        sys.exit(130)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: rerun the same command to continue where it stopped[/yellow]")
        sys.exit(130)
    except Exception as exc:  # a click usage error or a bug: still one line, never a secret
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        console.print(f"[red]error:[/red] {redact(type(exc).__name__ + ': ' + ' '.join(str(exc).split()))}",
                      highlight=False, soft_wrap=True)
        console.print("rerun with -v --log-file FILE for details")
        sys.exit(1)


# Commands that live in their own modules register themselves on `app` when imported.
from neptune_migration import cli_validate  # noqa: E402,F401

if __name__ == "__main__":
    main()
