"""The commands: each parses its options, calls the API, prints the result and turns its verdict into an exit code."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

import neptune_migration as nm
from neptune_migration.api import DEFAULT_EXPORT_ARCHIVE, DEFAULT_MIGRATE_ARCHIVE, RegistryOutcome
from neptune_migration.cli.options import (
    OBJECT_STORE_HELP,
    RUN,
    TARGET,
    SectionedCommand,
    archive_input,
    bundle,
    export_source_only,
    json_option,
    logging_options,
    relocate_option,
    report_option,
    run_options,
    section,
    selection_options,
    source_options,
    stage_workers,
    state_option,
    target_options,
)
from neptune_migration.cli.output import (
    out,
    print_discover,
    print_export,
    print_hint,
    print_load,
    print_registry,
    print_status,
    print_sync,
    print_validation,
    setup_logging,
)
from neptune_migration.errors import MigrationError
from neptune_migration.secrets import redact

# validate and retry read the target back: the same options, and no uploads.
readback_options = bundle(archive_input, target_options, selection_options, report_option, run_options)


class ValidationFailed(MigrationError):
    """Exit 1 through the CLI's error path, with the report's location."""


def _logging(kwargs: dict[str, Any]) -> bool:
    """Set up logging from the shared options; returns whether progress bars are wanted."""
    no_progress = kwargs.pop("no_progress")
    setup_logging(kwargs.pop("verbose"), kwargs.pop("log_file"), no_progress)
    return not no_progress


# Options that change how a command shows its work, not which runs or target it works on.
_NOT_REPEATED = {"no_progress", "verbose", "log_file", "upload_workers", "json_output"}


def _retry_command(kwargs: dict[str, Any], archive: str | Path | None = None) -> str:
    """The `retry` that picks up what this command left failed or mismatched: every option of this command that
    `retry` takes (archive, files, target and its options, selection, ledger, workers...), as the user typed them,
    so the line works when pasted. Values that came from the environment are left out (the environment still holds
    them, and MLFLOW_TRACKING_URI may carry a password); no password or token is ever repeated."""
    ctx = click.get_current_context()
    values = {**kwargs, "archive": archive if archive is not None else kwargs.get("archive")}
    words = ["neptune-migrate", "retry"]
    for param in retry.params:
        name = param.name
        if not isinstance(param, click.Option) or name is None or name in _NOT_REPEATED or name not in values:
            continue
        typed = ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT,
                                                       click.core.ParameterSource.DEFAULT_MAP,
                                                       click.core.ParameterSource.ENVIRONMENT, None)
        value = values[name]
        if not (typed or name in ("archive", "to")) or value is None:
            continue
        flag = param.opts[0] if param.opts[0].startswith("--") else max(param.opts, key=len)
        if param.is_flag:
            words += [flag] if value else []
            continue
        for item in value if param.multiple else [value]:
            words += [flag, shlex.quote(_without_password(str(item)))]
    return redact(" ".join(words))


def _without_password(value: str) -> str:
    """A URL as a printed command repeats it: a database URI keeps its user and loses its password (libpq's
    PGPASSWORD or ~/.pgpass supplies it); any other URL loses both (MLflow's own environment variables carry them,
    and a user without a password in the URL would override them)."""
    if re.match(r"(?i)(postgresql|postgres|mysql|mssql)(\+\w+)?://", value):
        return re.sub(r"://([^/@:\s]*):[^/@\s]*@", r"://\1@", value)
    return re.sub(r"://[^/@\s]*@", "://", value)


def _registry(outcomes: list[RegistryOutcome]) -> None:
    print_registry([o for o in outcomes if o.stage == "export"], "exported")
    print_registry([o for o in outcomes if o.stage == "load"], "in MLflow")


@click.command(cls=SectionedCommand)
@source_options
@selection_options
@json_option
@logging_options
def discover(json_output: bool, **kwargs: Any) -> None:
    """List what the selection matches (experiments, runs, attributes by type) without moving any data."""
    _logging(kwargs)
    found = nm.discover(**kwargs)
    if json_output:
        out.print_json(json.dumps(found.to_dict()))
        return
    print_discover(found.projects)
    out.print(f"{found.runs} runs selected; files declared: {found.file_bytes / 1e6:,.1f} MB "
              f"(file series counted at export)")


@click.command(cls=SectionedCommand)
@source_options
@section(TARGET, click.option("--archive", default=DEFAULT_EXPORT_ARCHIVE, show_default=True, metavar="DIR|URL",
                             help="Archive to write (data/ and files/ inside it). " + OBJECT_STORE_HELP))
@export_source_only
@selection_options
@run_options
def export(**kwargs: Any) -> None:
    """Export runs from Neptune into an archive (neptune-exporter's layout). Resumable: rerun to continue.

    Example: NEPTUNE_API_TOKEN=... neptune-migrate export --from neptune3 -p ws/proj --archive ./archive
    """
    result = nm.export(progress=_logging(kwargs), **kwargs)
    _registry(result.registry)
    print_export(result.summary)
    if not result.ok:
        raise click.exceptions.Exit(1)


@click.command(cls=SectionedCommand)
@archive_input
@target_options
@selection_options
@section(RUN, click.option("--refresh", is_flag=True, help="Reload the runs loaded with an older mapping version of "
                           "the target (a load without it lists them); each is replaced in the target."))
@relocate_option
@run_options
def load(**kwargs: Any) -> None:
    """Load an archive (ours or neptune-exporter's) into a target. Resumable: rerun to continue.

    Example: neptune-migrate load --archive ./exports/data --files ./exports/files --to mlflow
    """
    command = _retry_command(kwargs)
    result = nm.load(progress=_logging(kwargs), **kwargs)
    _registry(result.registry)
    print_load(result.summary)
    if result.ok:
        print_hint(result.hint)
    else:
        if result.summary.failed:
            print_hint(f"Next: load the failed runs again and validate them:\n{command}")
        raise click.exceptions.Exit(1)


@click.command(cls=SectionedCommand)
@source_options
@target_options
@section(RUN, click.option("--archive", default=None, metavar="DIR|URL", help="Where the intermediate archive goes "
                           "(kept, resumable). Default: .neptune-migration/archive. " + OBJECT_STORE_HELP))
@export_source_only
@selection_options
@section(
    RUN,
    click.option("--no-validate", is_flag=True, help="Skip the validation stage (read-back and report); run "
                 "`validate` later."),
    click.option("--sync", is_flag=True, help="Bring runs migrated before up to date: append their new points to the "
                 "same target run, update changed params, tags and files, replace a run whose history was rewritten "
                 "(docs/sync.md)."),
    click.option("--every", default=None, metavar="DURATION", help="With --sync: sync again every DURATION (15m, 1h, "
                 "90s) until Ctrl-C."),
)
@report_option
@run_options
@stage_workers
def migrate(**kwargs: Any) -> None:
    """Export from Neptune, load into the target and read back, the three stages overlapping run by run.
    Resumable: rerun to continue.

    Example: neptune-migrate migrate --from neptune3 -p ws/proj --to mlflow --mlflow-tracking-uri http://...
    """
    command = _retry_command(kwargs, kwargs.get("archive") or DEFAULT_MIGRATE_ARCHIVE)
    every = kwargs.get("every")

    def show(result: nm.MigrationResult) -> None:
        _registry(result.registry)
        print_export(result.exported)
        print_load(result.loaded)
        print_sync(result.loaded)
        # The UI hint first: a failed validation's summary ends with the command to run next.
        print_hint(result.hint)
        if result.validation is not None:
            print_validation(result.validation)
        if every is not None:
            out.print(f"next sync in {every} (Ctrl-C to stop)")

    result = nm.migrate(progress=_logging(kwargs), retry_command=command,
                        on_round=show if every is not None else None, **kwargs)
    if every is None:
        show(result)
    if not result.ok:
        raise click.exceptions.Exit(1)


@click.command(cls=SectionedCommand)
@readback_options
def validate(**kwargs: Any) -> None:
    """Read every selected run back from the target and compare it with the archive, value by value.

    Use the same selection as the load. Exits 1 when anything differs; report.html says what and where.

    Example: neptune-migrate validate --archive ./archive --to mlflow --mlflow-tracking-uri http://127.0.0.1:5000
    """
    command = _retry_command(kwargs)
    kwargs.pop("upload_workers")  # nothing is uploaded by a read-back
    result = nm.validate(progress=_logging(kwargs), retry_command=command, **kwargs)
    print_validation(result)
    if not result.ok:
        raise ValidationFailed(f"validation found differences; see {result.paths['html']}")


@click.command(cls=SectionedCommand)
@readback_options
@relocate_option
def retry(**kwargs: Any) -> None:
    """Load again only the runs that failed or mismatched (per the ledger), then validate them.

    A mismatched MLflow run is deleted (MLflow's trash) and loaded afresh, so nothing is duplicated.

    Example: neptune-migrate retry --archive ./archive --to mlflow --mlflow-tracking-uri http://127.0.0.1:5000
    """
    command = _retry_command(kwargs)
    kwargs.pop("upload_workers")
    result = nm.retry(progress=_logging(kwargs), retry_command=command, **kwargs)
    if result.validation is None:
        out.print("Nothing to retry: no failed or mismatched runs in the ledger for this target.")
        return
    out.print(f"Loaded again: {len(result.reloaded)} run(s); validated again: {len(result.revalidated)}.")
    if result.load is not None:
        for failed in result.load.failed:
            out.print(f"[red]failed again[/red] {escape(failed.key)}: {escape(str(failed.error))}")
    print_validation(result.validation)
    if not result.ok:
        raise ValidationFailed(f"some runs still fail or differ; see {result.validation.paths['html']}")


@click.command(cls=SectionedCommand)
@state_option
@section(
    "Rows",
    click.option("--stage", type=click.Choice(["export", "load", "validate"]), default=None, help="Only this stage."),
    click.option("--failed", "failed_only", is_flag=True, help="Only runs that failed or mismatched, each error in "
                 "full."),
)
@json_option
def status(state: str | None, stage: str | None, failed_only: bool, json_output: bool) -> None:
    """Totals per stage, then each run's status per stage, attempts and last error, from the ledger.

    Read-only: it answers at once while a load, a migrate or a `migrate --sync --every` loop is using the ledger.
    """
    result = nm.status(state=state, stage=stage, failed=failed_only)
    if json_output:
        out.print_json(json.dumps(result.to_dict()))
        return
    print_status(result, full_errors=failed_only)


COMMANDS = [discover, export, load, migrate, validate, retry, status]
