"""The commands: each parses its options, calls the API, prints the result and turns its verdict into an exit code."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

import neptune_migration as nm
from neptune_migration.api import DEFAULT_EXPORT_ARCHIVE, DEFAULT_MIGRATE_ARCHIVE, RegistryOutcome
from neptune_migration.cli.options import (
    OBJECT_STORE_HELP,
    archive_input,
    bundle,
    export_source_only,
    json_option,
    logging_options,
    relocate_option,
    report_option,
    run_options,
    selection_options,
    source_options,
    stage_workers,
    state_option,
    target_options,
)
from neptune_migration.cli.output import (
    out,
    print_export,
    print_hint,
    print_load,
    print_registry,
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
    """The `retry` that picks up what this command left failed or mismatched: the same archive, target, selection
    and ledger, as the user typed them. Values that came from the environment are left out (the environment still
    holds them, and MLFLOW_TRACKING_URI may carry a password); credentials in URLs are dropped."""
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
            words += [flag, shlex.quote(re.sub(r"://[^/@\s]*@", "://", str(item)))]
    return redact(" ".join(words))


def _registry(outcomes: list[RegistryOutcome]) -> None:
    print_registry([o for o in outcomes if o.stage == "export"], "exported")
    print_registry([o for o in outcomes if o.stage == "load"], "in MLflow")


@click.command()
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
    table = Table(title="Discovered")
    for col in ("project", "runs", "experiments", "attributes", "by type"):
        table.add_column(col, overflow="fold")
    for p in found.projects:
        by_type = ", ".join(f"{t} {n}" for t, n in sorted(p["attributes_by_type"].items()))
        table.add_row(p["project"], str(p["runs"]), str(len(p["experiments"])), str(p["attributes"]), by_type)
    out.print(table)
    for p in found.projects:
        for run in p.get("run_details", []):
            derived = ", ".join(f"{k} from {v}" for k, v in (run.get("derived") or {}).items())
            out.print(f"  {p['project']}/{run['run_id']}: {run.get('folder', '')} {derived}".rstrip())
    out.print(f"{found.runs} runs selected; files declared: {found.file_bytes / 1e6:,.1f} MB "
              f"(file series counted at export)")


@click.command()
@source_options
@click.option("--archive", default=DEFAULT_EXPORT_ARCHIVE, show_default=True, metavar="DIR|URL",
              help="Archive to write (data/ and files/ inside it). " + OBJECT_STORE_HELP)
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


@click.command()
@archive_input
@target_options
@selection_options
@click.option("--refresh", is_flag=True, help="Reload the runs loaded with an older mapping version of the target "
              "(a load without it lists them); each is replaced in the target.")
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


@click.command()
@source_options
@target_options
@click.option("--archive", default=None, metavar="DIR|URL", help="Where the intermediate archive goes (kept, "
              "resumable). Default: .neptune-migration/archive. " + OBJECT_STORE_HELP)
@export_source_only
@selection_options
@click.option("--no-validate", is_flag=True, help="Skip the validation stage (read-back and report); run `validate` "
              "later.")
@click.option("--sync", is_flag=True, help="Bring runs migrated before up to date: append their new points to the "
              "same target run, update changed params, tags and files, replace a run whose history was rewritten "
              "(docs/sync.md).")
@click.option("--every", default=None, metavar="DURATION", help="With --sync: sync again every DURATION (15m, 1h, "
              "90s) until Ctrl-C.")
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


@click.command()
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


@click.command()
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


@click.command()
@state_option
@click.option("--stage", type=click.Choice(["export", "load", "validate"]), default=None,
              help="Only this stage.")
@click.option("--failed", "failed_only", is_flag=True, help="Only runs that failed or mismatched.")
@json_option
def status(state: str | None, stage: str | None, failed_only: bool, json_output: bool) -> None:
    """Show every run's stage, status, attempts and last error from the ledger."""
    result = nm.status(state=state, stage=stage, failed=failed_only)
    if json_output:
        out.print_json(json.dumps(result.to_dict()["entries"]))
        return
    # One target is the usual case: its name then goes in the title, not in a column of every row.
    targets = sorted({e.target for e in result.entries})
    wide = out.width >= 140
    title = f"Ledger {result.state}" + (f" - {targets[0]}" if len(targets) == 1 else "")
    table = Table(title=title)
    columns = ["project", "run", "stage", *(["target"] if len(targets) > 1 else []), "status", "attempts",
               *(["target id"] if wide else []), "last error"]
    for col in columns:
        table.add_column(col, overflow="fold", ratio=3 if col == "last error" else None)
    for e in result.entries:
        color = {"done": "green", "failed": "red", "mismatch": "red", "running": "yellow",
                 "interrupted": "yellow"}.get(e.status, "")
        status_cell = f"[{color}]{e.status}[/{color}]" if color else e.status
        row = [e.ref.project_id, e.ref.run_id, e.stage, *([e.target] if len(targets) > 1 else []), status_cell,
               str(e.attempts), *([e.target_id or ""] if wide else []), escape(e.last_error or "")]
        table.add_row(*row)
    out.print(table)
    out.print(", ".join(f"{n} {s}" for s, n in result.counts().items()) or "no entries")
    if result.syncs:
        synced = Table(title="Syncs (migrate --sync)")
        for col in ("project", "run", "syncs", "last synced (UTC)", "last sync added"):
            synced.add_column(col, overflow="fold")
        for x in result.syncs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(x.synced_at)) if x.synced_at else ""
            synced.add_row(x.ref.project_id, x.ref.run_id, str(x.syncs), when, escape(_gained(x.gained)))
        out.print(synced)


def _gained(gained: dict[str, Any] | None) -> str:
    if not gained:
        return ""
    if "replaced" in gained:
        return f"replaced: {gained['replaced']}"
    text = f"+{gained.get('points', 0):,} points"
    if gained.get("atoms"):
        text += ", changed " + ", ".join(gained["atoms"])
    if gained.get("files"):
        text += ", files " + ", ".join(gained["files"])
    return text


COMMANDS = [discover, export, load, migrate, validate, retry, status]
