"""`demo`: the built-in Neptune sandbox migrated into a local MLflow store and a W&B offline folder."""

from __future__ import annotations

import os
from pathlib import Path

import click

import neptune_migration as nm
from neptune_migration.cli.options import logging_options
from neptune_migration.cli.output import out, print_export, print_hint, print_load, print_validation, setup_logging
from neptune_migration.errors import UsageError


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("neptune-migration-demo"), show_default=True,
              help="Where the demo keeps its archive, ledger and MLflow store.")
@logging_options
def demo(workdir: Path, no_progress: bool, verbose: bool, log_file: Path | None) -> None:
    """Start the built-in Neptune sandbox with a realistic project and migrate it into a local MLflow store and a
    W&B offline folder, validating both.

    No credentials and no network needed: the sandbox is a local Neptune API server that the real
    neptune-query client talks to, so this runs exactly the code path of a real migration.
    """
    setup_logging(verbose, log_file, no_progress)
    try:  # the sandbox speaks Neptune's protobuf wire format: it needs the Neptune clients' packages
        from neptune_migration.sandbox import Sandbox, demo_project
    except ImportError as exc:
        raise UsageError(f"the demo needs every client: pip install 'neptune-migration[all]' ({exc})") from None
    workdir.mkdir(parents=True, exist_ok=True)
    common = {"archive": workdir / "archive", "state": workdir / "state.db", "progress": not no_progress}
    tracking_uri = f"sqlite:///{(workdir / 'mlflow-store' / 'mlflow.db').resolve()}"
    with Sandbox([demo_project()], port=0) as sandbox:
        # neptune-query reads its environment when first imported, so the sandbox's must be in place first.
        os.environ.update(sandbox.env())
        project = next(iter(sandbox.projects))
        out.print(f"Neptune sandbox serving project [bold]{project}[/bold] on {sandbox.url}")
        into_mlflow = nm.migrate("neptune3", project=[project], to="mlflow", mlflow_tracking_uri=tracking_uri,
                                 report_dir=workdir / "report", **common)
    print_export(into_mlflow.exported)
    print_load(into_mlflow.loaded)
    if into_mlflow.validation is not None:
        print_validation(into_mlflow.validation)
    # The same archive into W&B, offline: sync-ready folders a connected machine can upload.
    wandb = {"to": "wandb-offline", "wandb_dir": workdir / "wandb-offline"}
    into_wandb = nm.load(**common, **wandb)
    print_load(into_wandb.summary)
    checked = nm.validate(**common, **wandb, report_dir=workdir / "report-wandb")
    print_validation(checked)
    out.print(f"\nArchive: {workdir / 'archive'}   Ledger: {workdir / 'state.db'}", soft_wrap=True)
    print_hint(into_mlflow.hint)
    print_hint(into_wandb.hint)
    if not (into_mlflow.ok and into_wandb.ok and checked.ok):
        raise click.exceptions.Exit(1)
