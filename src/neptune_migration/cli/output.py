"""What the command line prints: logging set-up and the summaries of the API's results."""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from neptune_migration.api import RegistryOutcome, StatusResult, ValidationResult
from neptune_migration.report import print_next_step, print_summary
from neptune_migration.secrets import redact
from neptune_migration.stages.export import ExportSummary
from neptune_migration.stages.load import LoadSummary
from neptune_migration.terminal import shell_lines, shorten, word_lines

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


def print_discover(projects: list[dict[str, Any]]) -> None:
    """A table of counts per project (the name shortened in its middle to fit), then each project's attributes by
    type and its runs' folders under the table, wrapped at spaces."""
    heading("Discovered")
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0))
    room = max(12, out.width - len("  runs  experiments  attributes") - 2)
    table.add_column("project", no_wrap=True)
    for col in ("runs", "experiments", "attributes"):
        table.add_column(col, justify="right", no_wrap=True)
    for p in projects:
        table.add_row(escape(shorten(p["project"], room)), str(p["runs"]), str(len(p["experiments"])),
                      str(p["attributes"]))
    out.print(table)
    for p in projects:
        by_type = ", ".join(f"{t} {n}" for t, n in sorted(p["attributes_by_type"].items()))
        out.print(escape(p["project"]), highlight=False, soft_wrap=True)
        wrapped(f"by type: {by_type}", indent="  ")
        for run in p.get("run_details", []):
            derived = ", ".join(f"{k} from {v}" for k, v in (run.get("derived") or {}).items())
            wrapped(f"{p['project']}/{run['run_id']}: {run.get('folder', '')} {derived}".rstrip(), indent="  ")


def print_load(summary: LoadSummary) -> None:
    heading(f"Load into {summary.target}")
    table = Table(show_header=False, box=None)
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
        flagged("failed", "red", f"{outcome.key}: {outcome.error}")
    for item in summary.incomplete:
        flagged("incomplete in archive", "yellow", f"{item.project_dir.name}/{item.run_folder}")
    for warning in summary.warnings:
        flagged("warning", "yellow", warning)


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
    heading(f"Export into {summary.archive}")
    table = Table(show_header=False, box=None)
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
        flagged("missing file", "yellow", line)
    for outcome in summary.failed:
        flagged("failed", "red", f"{outcome.key}: {outcome.error}")


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
    also = f"(also {paths['json'].name}, {paths['markdown'].name}, {paths['errors'].name})"
    line = f"Report: {paths['html']} {also}"
    out.print()
    if len(line) <= out.width:
        out.print(escape(line), highlight=False, soft_wrap=True)
    else:  # the path whole on a line of its own, where it can be copied
        out.print(f"Report {escape(also)}:", highlight=False)
        out.print(escape(str(paths["html"])), style="bold", highlight=False, soft_wrap=True)
    print_next_step(result.report, out)


# A line (or the part after "Label: ") that is a shell command: pasting it must run it whole.
_COMMAND = re.compile(r"^(cd |neptune-migrate |mlflow |wandb |\S*/(mlflow|wandb|neptune-migrate) )")


def print_hint(hint: str | None) -> None:
    """What to do next: prose wrapped at spaces; a command wrapped with shell continuations, alone on its lines
    when it does not fit beside its label, so that pasting its lines runs it."""
    if not hint:
        return
    out.print()
    for text in hint.splitlines():
        label, sep, rest = text.partition(": ")
        if _COMMAND.match(text):
            lines = shell_lines(text, out.width)
        elif sep and _COMMAND.match(rest) and len(text) > out.width:
            lines = [label + ":", *shell_lines(rest, out.width)]
        else:
            lines = word_lines(text, out.width)
        for line in lines:
            out.print(line, soft_wrap=True, markup=False, highlight=False)


def heading(text: str) -> None:
    """A title on a line of its own, shortened in the middle (a rich table title is wrapped to the table's
    width, which splits a path or URI in two)."""
    out.print(escape(shorten(text, out.width)), style="bold", highlight=False, soft_wrap=True)


def wrapped(text: str, indent: str = "    ") -> None:
    """Prose wrapped to the terminal at spaces only: a path or URI longer than a line stays whole on its own."""
    for line in word_lines(text, out.width, indent):
        out.print(escape(line), highlight=False, soft_wrap=True)


def flagged(flag: str, color: str, text: str) -> None:
    """`flag` in color, then `text`, wrapped at spaces only (a failed run's error names paths and URIs)."""
    lines = word_lines(f"{flag} {text}", out.width)
    for n, line in enumerate(lines):
        body = escape(line[len(flag):] if n == 0 else line)
        out.print(f"[{color}]{escape(flag)}[/{color}]{body}" if n == 0 else body, highlight=False, soft_wrap=True)


_COLORS = {"done": "green", "failed": "red", "mismatch": "red", "running": "yellow", "interrupted": "yellow"}
_ERRORS = ("failed", "mismatch", "skipped")


def _colored(status: str, text: str | None = None) -> str:
    color = _COLORS.get(status)
    text = escape(text if text is not None else status)
    return f"[{color}]{text}[/{color}]" if color else text


def print_status(result: StatusResult, full_errors: bool = False) -> None:
    """Totals per stage, then one line per run, then the errors: every line within the terminal's width."""
    heading(f"Ledger {result.state}")
    if result.in_use:
        wrapped("In use by a running neptune-migrate: rows as it has committed them so far.", "")
    elif result.in_use is False and any(e.status == "running" for e in result.entries):
        wrapped("No process holds this ledger: its running rows were left by a process that stopped; the next "
                "load or migrate resumes them.", indent="")
    if not result.entries:
        out.print("no entries")
        return
    labels = _target_labels(result)
    _print_totals(result)
    _print_runs(result, labels)
    _print_errors(result, full_errors, labels)
    if result.syncs:
        _print_syncs(result)


def _target_labels(result: StatusResult) -> dict[str, str]:
    """Where each stage wrote (the archive, the target), printed once above the runs; with several targets the
    rows name theirs by a short label instead of repeating a long URI on every line."""
    loads = sorted({e.target for e in result.entries if e.stage != "export"})
    labels = {t: (f"#{n}" if len(loads) > 1 else "") for n, t in enumerate(loads, 1)}
    for where in sorted({e.target for e in result.entries if e.stage == "export"}):
        line = "archive: " + where.removeprefix("archive:")
        out.print(escape(shorten(line, out.width)), highlight=False, soft_wrap=True)
    for target, label in labels.items():
        line = f"target{' ' + label if label else ''}: {target}"
        out.print(escape(shorten(line, out.width)), highlight=False, soft_wrap=True)
    return labels


def _print_totals(result: StatusResult) -> None:
    totals = {stage: row for stage, row in result.totals().items() if any(row.values())}
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), show_edge=False)
    table.add_column("stage", no_wrap=True)
    columns = list(next(iter(totals.values())))
    for status in columns:
        table.add_column(_colored(status), justify="right", no_wrap=True)
    for stage, row in totals.items():
        table.add_row(stage, *(_colored(s, str(row[s])) if row[s] and s != "done" else str(row[s]) for s in columns))
    out.print()
    out.print(table)


def _run_rows(result: StatusResult, labels: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(run, target label) -> its entry per stage; a run's export (into the archive) shows on each of its rows."""
    exports: dict[str, Any] = {}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for e in sorted(result.entries, key=lambda x: x.updated_at):
        if e.stage == "export":
            exports[e.ref.key] = e  # several archives: the latest export
        else:
            rows.setdefault((e.ref.key, labels[e.target]), {})[e.stage] = e
    for key, entry in exports.items():
        for row in [r for (k, _), r in rows.items() if k == key] or [rows.setdefault((key, ""), {})]:
            row["export"] = entry
    return dict(sorted(rows.items()))


def _cell(entry: Any) -> tuple[str, str]:
    """A stage's status, with the attempts when there was more than one: (plain text, colored markup)."""
    if entry is None:
        return "-", "-"
    text = entry.status + (f" ({entry.attempts})" if entry.attempts > 1 else "")
    return text, _colored(entry.status, text)


def _print_runs(result: StatusResult, labels: dict[str, str]) -> None:
    rows = _run_rows(result, labels)
    stages = [s for s in result.totals() if any(s in r for r in rows.values())]
    cells = {key: [_cell(r.get(s)) for s in stages] for key, r in rows.items()}
    widths = [max(len(s), *(len(c[i][0]) for c in cells.values())) for i, s in enumerate(stages)]
    show_target = any(labels.values())
    # What the other columns leave (two spaces between columns) goes to the run id, shortened in its middle.
    room = out.width - sum(w + 2 for w in widths) - (len("target") + 2 if show_target else 0)
    run_width = max(12, min(room, max(len("run"), *(len(k) for k, _ in rows))))
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), show_edge=False)
    table.add_column("run", no_wrap=True, min_width=run_width)
    if show_target:
        table.add_column("target", no_wrap=True)
    for stage in stages:
        table.add_column(stage, no_wrap=True)
    for (key, label), row in cells.items():
        table.add_row(escape(shorten(key, run_width)), *([label] if show_target else []),
                      *(colored for _, colored in row))
    out.print()
    out.print(table)


def _print_errors(result: StatusResult, full: bool, labels: dict[str, str]) -> None:
    failing = [e for e in result.entries if e.status in _ERRORS and e.last_error]
    if not failing:
        return
    out.print()
    shortened = False
    for e in failing:
        where = labels.get(e.target, "")
        label = shorten(f"{e.ref.key} {e.stage}" + (f" {where}" if where else ""), out.width - 1)
        out.print(_colored(e.status, label + ":"), highlight=False, soft_wrap=True)
        if full:
            wrapped(e.last_error or "")
            continue
        first = (e.last_error or "").strip().splitlines()[0] if (e.last_error or "").strip() else ""
        line = "    " + first
        if len(line) > out.width or first != (e.last_error or "").strip():
            line, shortened = line[: out.width - 1] + "…", True
        out.print(escape(line), highlight=False, soft_wrap=True)
    if shortened:
        out.print("(status --failed prints each error in full)")


def _print_syncs(result: StatusResult) -> None:
    out.print()
    heading("Syncs (migrate --sync)")
    table = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0), show_edge=False)
    for col in ("run", "syncs", "last synced (UTC)"):
        table.add_column(col, no_wrap=True)
    added: list[str] = []
    for x in result.syncs:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(x.synced_at)) if x.synced_at else ""
        table.add_row(escape(shorten(x.ref.key, max(12, out.width - 30))), str(x.syncs), when)
        added.append(f"{x.ref.key}: {gained_text(x.gained)}")
    out.print(table)
    out.print("last sync added:")
    for line in added:
        out.print(escape(shorten("  " + line, out.width)), highlight=False, soft_wrap=True)


def gained_text(gained: dict[str, Any] | None) -> str:
    if not gained:
        return "nothing"
    if "replaced" in gained:
        return f"replaced: {gained['replaced']}"
    text = f"+{gained.get('points', 0):,} points"
    if gained.get("atoms"):
        text += ", changed " + ", ".join(gained["atoms"])
    if gained.get("files"):
        text += ", files " + ", ".join(gained["files"])
    return text
