"""CLI commands for validation and repair: `validate` and `retry` (registered on the main app)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from neptune_migration.cli import (
    OBJECT_STORE_HELP,
    AllTagsOpt,
    ArchivedOpt,
    AttributesOpt,
    ExcludeAttributesOpt,
    ExcludeOpt,
    ExperimentByOpt,
    ExperimentPrefixOpt,
    ExperimentsOpt,
    FilePatternOpt,
    FileTypesOpt,
    IncludeOpt,
    LimitOpt,
    LogFileOpt,
    MaxFileSizeOpt,
    NoProgressOpt,
    ProjectOpt,
    RunsOpt,
    SinceOpt,
    StateOpt,
    TagOpt,
    ToOpt,
    TrackingUriOpt,
    UntilOpt,
    VerboseOpt,
    WandbDirOpt,
    WandbEntityOpt,
    WandbOptions,
    WandbProjectOpt,
    WandbProjectPrefixOpt,
    WorkersOpt,
    _selection,
    _setup_logging,
    _target,
    _tracker,
    app,
    out,
)
from neptune_migration.errors import MigrationError
from neptune_migration.ledger import Ledger, default_state_path

ArchiveOpt = Annotated[str, typer.Option(
    metavar="DIR|URL", help="Archive root (holding data/ and files/) or a neptune-exporter "
                            "parquet root (one folder per project). " + OBJECT_STORE_HELP)]
FilesOpt = Annotated[str | None, typer.Option(
    metavar="DIR|URL", help="neptune-exporter files root, when --archive is their "
                            "parquet root (a folder, s3://... or gs://...).")]
ReportDirOpt = Annotated[Path, typer.Option(help="Where report.json, report.html, report.md and errors.jsonl "
                                            "are written.")]
NoValidateOpt = Annotated[bool, typer.Option("--no-validate", help="Skip the validation stage (read-back and "
                                             "report); run `validate` later.")]
DEFAULT_REPORT_DIR = Path("neptune-migration-report")


class ValidationFailed(MigrationError):
    """Exit 1 through the CLI's error path (main() turns MigrationError into its exit code)."""


@app.command()
def validate(
    archive: ArchiveOpt,
    files: FilesOpt = None,
    to: ToOpt = "mlflow",
    mlflow_tracking_uri: TrackingUriOpt = None,
    experiment_by: ExperimentByOpt = "project",
    experiment_prefix: ExperimentPrefixOpt = "",
    wandb_entity: WandbEntityOpt = None,
    wandb_project: WandbProjectOpt = None,
    wandb_project_prefix: WandbProjectPrefixOpt = "",
    wandb_dir: WandbDirOpt = Path("wandb-offline"),
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
    report_dir: ReportDirOpt = DEFAULT_REPORT_DIR,
    workers: WorkersOpt = 4,
    state: StateOpt = None,
    no_progress: NoProgressOpt = False,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
) -> None:
    """Read every selected run back from the target and compare it with the archive, value by value.

    Use the same selection as the load. Exits 1 when anything differs; report.html says what and where.

    Example: neptune-migrate validate --archive ./archive --to mlflow --mlflow-tracking-uri http://127.0.0.1:5000
    """
    from neptune_migration.archive import Archive
    from neptune_migration.stages.validate import validate as run_validate

    _setup_logging(verbose, log_file, no_progress)
    selection = _selection(**locals())
    source = Archive(archive, files)
    target = _target(to, mlflow_tracking_uri, experiment_by, experiment_prefix, workers,
                     WandbOptions(wandb_entity, wandb_project, wandb_project_prefix, wandb_dir))
    target.check()
    with Ledger(state or default_state_path()) as ledger:
        try:
            summary = run_validate(source, target, selection, ledger, _tracker("validate", no_progress), workers)
        finally:
            target.close()
        ok = finish_report(summary, ledger, str(archive), report_dir)
    if not ok:
        raise ValidationFailed(f"validation found differences; see {report_dir / 'report.html'}")


@app.command()
def retry(
    archive: ArchiveOpt,
    files: FilesOpt = None,
    to: ToOpt = "mlflow",
    mlflow_tracking_uri: TrackingUriOpt = None,
    experiment_by: ExperimentByOpt = "project",
    experiment_prefix: ExperimentPrefixOpt = "",
    wandb_entity: WandbEntityOpt = None,
    wandb_project: WandbProjectOpt = None,
    wandb_project_prefix: WandbProjectPrefixOpt = "",
    wandb_dir: WandbDirOpt = Path("wandb-offline"),
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
    report_dir: ReportDirOpt = DEFAULT_REPORT_DIR,
    workers: WorkersOpt = 4,
    state: StateOpt = None,
    no_progress: NoProgressOpt = False,
    verbose: VerboseOpt = False,
    log_file: LogFileOpt = None,
) -> None:
    """Load again only the runs that failed or mismatched (per the ledger), then validate them.

    A mismatched MLflow run is deleted (MLflow's trash) and loaded afresh, so nothing is duplicated.

    Example: neptune-migrate retry --archive ./archive --to mlflow --mlflow-tracking-uri http://127.0.0.1:5000
    """
    from neptune_migration.archive import Archive
    from neptune_migration.errors import UsageError
    from neptune_migration.stages.validate import retry as run_retry

    _setup_logging(verbose, log_file, no_progress)
    selection = _selection(**locals())
    path = state or default_state_path()
    if not path.exists():
        raise UsageError(f"no ledger at {path}: nothing has run yet (or pass --state)")
    source = Archive(archive, files)
    target = _target(to, mlflow_tracking_uri, experiment_by, experiment_prefix, workers,
                     WandbOptions(wandb_entity, wandb_project, wandb_project_prefix, wandb_dir))
    target.check()
    with Ledger(path) as ledger:
        try:
            outcome = run_retry(source, target, selection, ledger, _tracker("retry", no_progress), workers)
        finally:
            target.close()
        if not outcome.revalidated:
            out.print("Nothing to retry: no failed or mismatched runs in the ledger for this target.")
            return
        out.print(f"Loaded again: {len(outcome.reloaded)} run(s); validated again: {len(outcome.revalidated)}.")
        if outcome.load is not None:
            for failed in outcome.load.failed:
                out.print(f"[red]failed again[/red] {failed.key}: {failed.error}")
        ok = finish_report(outcome.validation, ledger, str(archive), report_dir)
        if outcome.load is not None and outcome.load.failed:
            ok = False
    if not ok:
        raise ValidationFailed(f"some runs still fail or differ; see {report_dir / 'report.html'}")


def finish_report(summary, ledger: Ledger, archive: str, report_dir: Path, source_check=None) -> bool:
    """Print the summary table, write the report files; True when everything validated.

    `migrate` calls this after `validation.validate` (with `validation.check_source`'s result when it exported).
    """
    from neptune_migration.report import build_report, print_summary, write_reports

    report = build_report(summary, ledger, archive=archive, source_check=source_check)
    paths = write_reports(report, report_dir)
    print_summary(report, out)
    out.print(f"\nReport: [bold]{paths['html']}[/bold] (also {paths['json'].name}, {paths['markdown'].name}, "
              f"{paths['errors'].name})")
    totals = report["totals"]
    source_ok = report["source_check"] is None or report["source_check"]["ok"]
    return source_ok and not (totals["runs_mismatched"] or totals["runs_failed"]
                              or totals["runs_incomplete_in_archive"])
