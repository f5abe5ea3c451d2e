"""What the command line prints: logging set-up and the summaries of the API's results."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from neptune_migration.api import RegistryOutcome, ValidationResult
from neptune_migration.report import print_next_step, print_summary
from neptune_migration.secrets import redact
from neptune_migration.stages.export import ExportSummary
from neptune_migration.stages.load import LoadSummary

console = Console(stderr=True)
out = Console()


def setup_logging(verbose: bool, log_file: Path | None, no_progress: bool) -> None:
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


def print_load(summary: LoadSummary) -> None:
    table = Table(title=f"Load into {summary.target}", show_header=False, box=None)
    table.add_row("runs loaded", str(summary.count("loaded")))
    table.add_row("runs already loaded (skipped)", str(summary.count("already_loaded")))
    for status, label in (("synced", "runs appended to (sync)"), ("replaced", "runs replaced (sync)")):
        if summary.count(status):
            table.add_row(label, str(summary.count(status)))
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
    if summary.workers:  # a cluster: who did the work (each run's worker is in the ledger's load details)
        per_worker: dict[str, int] = {}
        for worker in summary.workers.values():
            per_worker[worker] = per_worker.get(worker, 0) + 1
        table.add_row("runs by worker", ", ".join(f"{w}: {n}" for w, n in sorted(per_worker.items())))
    out.print(table)
    if not summary.outcomes and summary.not_selected:
        out.print(f"[yellow]the selection matches none of the {summary.not_selected} runs in the archive[/yellow]")
    for outcome in summary.failed:
        out.print(f"[red]failed[/red] {escape(outcome.key)}: {escape(str(outcome.error))}")
    for item in summary.incomplete:
        out.print(f"[yellow]incomplete in archive[/yellow] {escape(item.project_dir.name)}/{escape(item.run_folder)}")
    for warning in summary.warnings:
        out.print(f"[yellow]warning[/yellow] {escape(warning)}")


def print_sync(summary: LoadSummary) -> None:
    """`migrate --sync`: per run, what it gained (or why it was replaced)."""
    for o in summary.outcomes:
        if o.sync is None:
            continue
        if "replaced" in o.sync:
            out.print(f"[yellow]replaced[/yellow] {escape(o.key)}: {escape(str(o.sync['replaced']))}")
            continue
        sent = o.result.points if o.result is not None else 0
        parts = [f"+{o.sync.get('points', 0):,} points"] if o.sync.get("points") or not o.sync.get("resumed") \
            else [f"{sent:,} points sent"]
        series = o.sync.get("series") or {}
        if series:
            parts.append("(" + ", ".join(f"{escape(k)} +{n:,}" for k, n in sorted(series.items())) + ")")
        if o.sync.get("atoms"):
            parts.append("changed " + ", ".join(escape(a) for a in o.sync["atoms"]))
        if o.sync.get("files"):
            parts.append("files " + ", ".join(escape(f) for f in o.sync["files"]))
        if o.sync.get("resumed"):
            parts.append("(finished an interrupted sync)")
        out.print(f"[green]synced[/green] {escape(o.key)}: " + " ".join(parts))


def print_export(summary: ExportSummary) -> None:
    table = Table(title=f"Export into {summary.archive}", show_header=False, box=None)
    table.add_row("runs selected", str(summary.listed))
    table.add_row("runs exported", str(summary.count("exported")))
    table.add_row("runs already exported (skipped)", str(summary.count("already_exported")))
    for status, label in (("unchanged", "runs unchanged (sync)"), ("synced", "runs with changes appended (sync)"),
                          ("replaced", "runs exported again whole (sync)")):
        if summary.count(status):
            table.add_row(label, str(summary.count(status)))
    table.add_row("runs failed", str(summary.count("failed")))
    stats = [o.stats for o in summary.outcomes if o.stats is not None]
    table.add_row("points", f"{sum(s.points for s in stats):,}")
    table.add_row("files", f"{sum(s.files for s in stats):,} ({sum(s.bytes for s in stats) / 1e6:,.1f} MB)")
    missing = [f"{o.key}: {m}" for o in summary.outcomes if o.stats is not None for m in o.stats.missing_files]
    if missing:
        table.add_row("files missing at the source", str(len(missing)))
    table.add_row("time", f"{summary.seconds:,.1f} s")
    out.print(table)
    if not summary.listed:
        out.print("[yellow]the selection matches no run at the source[/yellow]")
    for line in missing:
        out.print(f"[yellow]missing file[/yellow] {escape(line)}")
    for outcome in summary.failed:
        out.print(f"[red]failed[/red] {escape(outcome.key)}: {escape(str(outcome.error))}")


def print_registry(outcomes: list[RegistryOutcome], where: str) -> None:
    """`where`: "exported" or "in MLflow" (the target's name)."""
    if not outcomes:
        return
    done = sum(1 for o in outcomes if o.status != "failed")
    out.print(f"model registry: {done} of {len(outcomes)} models and versions {where}")
    for o in outcomes:
        if o.status == "failed":
            out.print(f"[red]failed[/red] registry {escape(o.key)}: {escape(str(o.error))}")


def print_validation(result: ValidationResult) -> None:
    print_summary(result.report, out, next_step=False)
    paths = result.paths
    out.print(f"\nReport: [bold]{paths['html']}[/bold] (also {paths['json'].name}, {paths['markdown'].name}, "
              f"{paths['errors'].name})")
    print_next_step(result.report, out)


def print_hint(hint: str | None) -> None:
    if hint:
        out.print("\n" + hint, soft_wrap=True, markup=False, highlight=False)
