"""Validation reports a person can act on: a terminal table, report.json, report.html, report.md, errors.jsonl.

Everything is built from one dictionary (`build_report`), whose shape is the documented, versioned schema of
report.json (docs/validation.md); the HTML and Markdown are renderings of it. Every string passes through
`secrets.redact` once, when the dictionary is built, so no rendering can leak a token.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table

from neptune_migration._version import __version__
from neptune_migration.ledger import Entry, Ledger
from neptune_migration.secrets import redact_tree
from neptune_migration.stages.validate import ERROR, MISMATCHED, VALIDATED, RunCheck, SourceCheck, ValidationSummary
from neptune_migration.terminal import shell_lines, shorten, word_lines

SCHEMA = "neptune-migration/validation-report"
# 2 added runs[].target_url, approximation_details and next_command.
# 3 added this_pass and runs[].this_pass (`migrate --sync`: every selected run, and what this pass did to each).
SCHEMA_VERSION = 3
FILES = {"json": "report.json", "html": "report.html", "markdown": "report.md", "errors": "errors.jsonl"}
TOTAL_FIELDS = (
    ("runs_selected", "runs selected"),
    ("runs_validated", "runs validated"),
    ("runs_mismatched", "runs with mismatches"),
    ("runs_failed", "runs that could not be read back"),
    ("runs_incomplete_in_archive", "incomplete runs in the archive"),
    ("mismatches", "mismatches"),
    ("params", "params compared"),
    ("metric_series", "metric series compared"),
    ("points", "metric points compared"),
    ("series_artifacts", "string/histogram series compared"),
    ("series_points", "string/histogram points compared"),
    ("files", "files compared"),
    ("bytes", "file bytes compared"),
    ("approximations", "documented approximations"),
    ("errors", "errors recorded"),
)
# Every documented approximation a target counts (`LoadResult.approx`, `RunCheck.approx`), in one sentence: what
# changed and why the target forces it. tests/test_report.py checks that every kind in the sources is here.
APPROXIMATIONS = {
    # MLflow (docs/mlflow.md)
    "param_nul_replaced_full_value_in_artifact": "A param holding NUL characters shows them as \u2400, because a "
    "PostgreSQL store refuses NUL; its exact text is in the run's artifact <key>.txt.",
    "nul_replaced_in_tags": "NUL characters in tags are stored as the visible symbol \u2400, because a PostgreSQL "
    "store refuses NUL in text (the whole run would fail); applied on every store so an archive maps the same "
    "everywhere.",
    "inf_clamped_by_mlflow": "Infinite metric values are stored as +-1.7976931348623157e308, the largest finite "
    "float, because MLflow's metric store cannot hold infinity.",
    "negative_zero_stored_as_zero": "Metric values of -0.0 are stored as 0.0, because MLflow's store does not keep "
    "the sign of zero.",
    "negative_timestamp_clamped": "Metric timestamps before 1970 are stored as 0 (1970-01-01), because MLflow "
    "refuses negative timestamps.",
    "param_truncated_full_value_in_artifact": "String values over 6000 characters are cut in the MLflow param, "
    "because MLflow params hold at most 6000; the whole text is in the run's artifact <key>.txt (params/notes -> "
    "params/notes.txt).",
    "series_with_scaled_steps": "Series with fractional steps get integer steps multiplied by a power of ten "
    "(recorded in the run's tag neptune.step_scale), because MLflow steps are integers.",
    "series_points_in_artifacts": "String and histogram series points are in a .jsonl artifact per attribute (with a "
    ".log of each string series and a .png drawing of each histogram series beside it), not in "
    "metrics, because MLflow metrics hold only numbers.",
    "live_param": "A param that changed while its Neptune run was still live keeps its first value in MLflow, "
    "because MLflow params cannot change; the current value is in the run's tag neptune.live/<key>, and the "
    "first `migrate --sync` after the run has finished replaces the run once so its params hold the final values.",
    "duplicate_points_stored_once": "Points repeated with the same step, timestamp and value are stored once, "
    "because MLflow drops exact repeats of a metric point.",
    # W&B (docs/wandb.md)
    "histogram_rebinned_to_512": "Histograms with more than 512 bins have adjacent bins merged (counts summed), "
    "because W&B keeps at most 512 bins.",
    "tag_shortened_or_dropped": "Tags over 64 characters are cut to 57 characters + '~' + a digest and empty tags "
    "dropped, because W&B limits tags to 64 characters; the full list is in config.neptune_migration.tags.",
    "config_nonfinite_float_as_string": "NaN and +-inf values in the config are the strings NaN, Infinity and "
    "-Infinity, because the W&B config is JSON, which has no such numbers.",
    "timestamp_missing_used_start_time": "Points without a timestamp (2.x file series) get the run's start time, "
    "because every W&B history row needs one.",
    # Aim (docs/aim.md)
    "aim_failed_state_as_param": "A failed Neptune run is a finished Aim run whose param sys/failed is True, because "
    "Aim runs have no failed state.",
    "aim_datetime_param_as_text": "Datetime values are ISO 8601 text params (UTC, milliseconds), because Aim params "
    "have no datetime type.",
    "aim_steps_scaled": "Series with fractional steps get integer steps multiplied by a power of ten (the power per "
    "series is in the run's param neptune_migration.step_decimals), because Aim steps are integers.",
    "aim_step_rounded": "Steps that no power of ten turns into an integer within 64 bits are rounded, because Aim "
    "steps are 64-bit integers.",
    "aim_duplicate_step_kept_last": "Points repeated at one step of a series are kept once (the last), because Aim "
    "holds one value per step.",
    "aim_timestamp_missing_used_start_time": "Points without a timestamp get the run's start time, because every Aim "
    "point has a time.",
    "aim_histogram_uneven_edges_drawn_even": "Histograms with unevenly spaced edges are drawn on even bins between the "
    "first and the last edge (the exact edges are kept in the distribution's edges field), because Aim "
    "distributions have evenly spaced bins.",
    "aim_empty_histogram_skipped": "Histogram points without bins are not written, because an Aim distribution needs "
    "at least one bin.",
    "aim_empty_series_not_created": "Series without any point have no Aim sequence, because Aim creates a sequence "
    "with its first point.",
    "aim_undecodable_image_kept_as_file": "A file series entry named like an image that Pillow cannot decode is "
    "kept as an artifact only, because Aim's image sequence decodes every image it stores.",
    "aim_empty_tag_dropped": "Empty tags are dropped, because an Aim tag is found and shown by its name.",
    # Comet offline archives (docs/comet.md)
    "comet_failed_as_error_status": "A failed Neptune run is a Comet experiment with an error status (Neptune run "
    "failed), because Comet experiments have no failed state.",
    "comet_datetime_as_text": "Datetime values are ISO 8601 text (UTC, milliseconds), because Comet parameters and "
    "other values have no datetime type.",
    "comet_string_set_as_json_text": "String sets are the JSON text of their sorted list, because a Comet parameter "
    "is a number, a string or a boolean.",
    "comet_steps_scaled": "Series with fractional steps get integer steps multiplied by a power of ten (the power per "
    "series is in the other value neptune_migration/step_decimals), because Comet steps are integers.",
    "comet_step_rounded": "Steps that no power of ten turns into an integer within 64 bits are rounded, because Comet "
    "steps are integers.",
    "comet_timestamp_missing_used_start_time": "Points without a timestamp get the run's start time, because every "
    "Comet message has one.",
    "comet_histogram_rebinned": "Histograms are Comet 3D histograms of their bin centres weighted by their counts "
    "(Neptune's exact edges and counts are in each histogram's metadata), because Comet's histogram bins are fixed.",
    "comet_histogram_skipped": "Histogram points without bins, with non-finite edges or counts, or with a zero total "
    "are not written, because comet_ml ignores an empty histogram.",
    "comet_undecodable_image_as_asset": "A file series entry named like an image that Pillow cannot decode is an "
    "asset, not an image, because Comet shows every image it stores.",
    "comet_empty_tag_dropped": "Empty tags are dropped, because a Comet tag is found and shown by its name.",
    "file_row_without_path": "A file row in the archive names no path, so there was no payload to upload and it was "
    "skipped.",
    "file_missing": "A payload the archive names is not in its files root, so it could not be uploaded.",
}
# Runs named per approximation kind in the report; the count is always complete.
RUNS_SHOWN = 50


def explain(kind: str) -> str:
    """The one-sentence meaning of an approximation kind."""
    return APPROXIMATIONS.get(kind, "Not described yet: see the target's page in docs/.")


def build_report(
    summary: ValidationSummary,
    ledger: Ledger | None = None,
    archive: str | None = None,
    generated_at: datetime | None = None,
    source_check: SourceCheck | None = None,
    run_urls: Mapping[str, str] | None = None,
    retry_command: str | None = None,
    this_pass: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The report as report.json holds it (schema in docs/validation.md).

    `source_check` (from `validation.check_source`, when the run came from an export) adds what the source
    listed against what the archive holds. `run_urls` maps a run's id in the target to its page in the target's
    UI (the plug-in's `run_url`). `retry_command` is what the report tells the reader to run when anything
    failed or differs. `this_pass` (`migrate --sync`): per run key, what this pass did (`action`, what it `added`,
    when the validation shown was made); the summary then covers every selected run, changed or not.
    """
    checks = summary.checks
    urls = dict(run_urls or {})
    load_entries = _entries(ledger, "load", summary.target)
    sync_entries = _entries(ledger, "sync", summary.target)
    runs = []
    for check in checks:
        row = check.to_dict()
        row["target_url"] = urls.get(check.target_id or "")
        entry = load_entries.get((check.ref.project_id, check.ref.run_id))
        row["load_status"] = entry.status if entry else None
        row["load_attempts"] = entry.attempts if entry else 0
        synced = sync_entries.get((check.ref.project_id, check.ref.run_id))
        if this_pass is not None:
            done = dict(this_pass.get(check.ref.key) or {"action": "unchanged"})
            row["this_pass"] = done
            if done.get("added"):
                row["sync"] = done["added"]  # what this pass added, or why it replaced the run
        elif synced is not None and synced.details:
            # `migrate --sync`: what the run's last sync added (or why it replaced the run); readers may ignore it.
            row["sync"] = synced.details.get("gained") or {"replaced": synced.details.get("replaced")}
        runs.append(row)
    projects: dict[str, dict[str, int]] = {}
    for check in checks:
        p = projects.setdefault(check.ref.project_id, {"runs": 0, "validated": 0, "mismatched": 0, "failed": 0,
                                                       "mismatches": 0, "points": 0, "files": 0, "bytes": 0})
        p["runs"] += 1
        p[{VALIDATED: "validated", MISMATCHED: "mismatched", ERROR: "failed"}[check.status]] += 1
        p["mismatches"] += check.mismatch_count
        for what in ("points", "files", "bytes"):
            p[what] += check.checked.get(what, 0)
    approximations = summary.approximations()
    errors = error_rows(ledger, summary.target, checks)
    totals = {
        "runs_selected": len(checks),
        "runs_validated": summary.count(VALIDATED),
        "runs_mismatched": summary.count(MISMATCHED),
        "runs_failed": summary.count(ERROR),
        "runs_incomplete_in_archive": len(summary.incomplete),
        "mismatches": sum(c.mismatch_count for c in checks),
        "approximations": sum(approximations.values()),
        "errors": len(errors),
    }
    for what in ("params", "metric_series", "points", "series_artifacts", "series_points", "files", "bytes"):
        totals[what] = sum(c.checked.get(what, 0) for c in checks)
    totals = {name: totals[name] for name, _ in TOTAL_FIELDS}
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "generated_at": (generated_at or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "target": summary.target,
        "archive": archive,
        "ok": summary.ok and not errors and (source_check is None or source_check.ok),
        "seconds": round(summary.seconds, 3),
        "totals": totals,
        "projects": [{"project_id": k, **v} for k, v in sorted(projects.items())],
        "runs": runs,
        "mismatches": [
            {"project_id": c.ref.project_id, "run_id": c.ref.run_id, **m.to_dict()}
            for c in checks for m in c.mismatches
        ],
        "approximations": approximations,
        "approximation_details": _approximation_details(approximations, runs),
        "incomplete_in_archive": [f"{i.project_dir.name}/{i.run_folder}" for i in summary.incomplete],
        "errors": errors,
        "source_check": source_check.to_dict() if source_check is not None else None,
        # Incomplete archive runs are not here: retry cannot load what the export never finished.
        "next_command": retry_command if (totals["runs_mismatched"] or totals["runs_failed"] or errors) else None,
        "this_pass": _pass_totals(runs) if this_pass is not None else None,
    }
    return redact_tree(report)


def _pass_totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What one `migrate --sync` pass did over the whole selection: runs per action, validations made now or
    earlier, and the live runs that wait for their end to be replaced once (params that changed while live)."""
    actions: dict[str, int] = {}
    for r in runs:
        action = r["this_pass"]["action"]
        actions[action] = actions.get(action, 0) + 1
    now = sum(1 for r in runs if r["this_pass"].get("validated") == "now")
    waiting = [f"{r['project_id']}/{r['run_id']}" for r in runs if r["this_pass"].get("waits_for_end")]
    return {"runs": dict(sorted(actions.items())), "validated_now": now, "validated_earlier": len(runs) - now,
            "waiting_for_end": waiting}


def pass_line(report: dict[str, Any]) -> str | None:
    """One line on what a sync pass did, for the terminal and the Markdown report."""
    done = report.get("this_pass")
    if not done:
        return None
    counts = ", ".join(f"{n:,} {action}" for action, n in done["runs"].items())
    line = (f"This sync: {counts}; the report covers all {report['totals']['runs_selected']:,} selected runs "
            f"({done['validated_now']:,} read back now, {done['validated_earlier']:,} as validated earlier).")
    if done["waiting_for_end"]:
        shown = ", ".join(done["waiting_for_end"][:5]) + (" ..." if len(done["waiting_for_end"]) > 5 else "")
        line += (f" {len(done['waiting_for_end']):,} live run(s) keep a changed param in a neptune.live/ tag and are "
                 f"replaced once they finish: {shown}.")
    return line


def _approximation_details(approximations: dict[str, int], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind: its meaning and the runs it touched (the counts are per run; targets do not record attributes)."""
    details = []
    for kind, count in approximations.items():
        touched = [{"project_id": r["project_id"], "run_id": r["run_id"], "count": r["approximations"][kind],
                    "target_url": r["target_url"]} for r in runs if r["approximations"].get(kind)]
        details.append({"kind": kind, "count": count, "meaning": explain(kind), "run_count": len(touched),
                        "runs": touched[:RUNS_SHOWN]})
    return details


def _runs_text(detail: dict[str, Any]) -> str:
    shown = ", ".join(f"{r['project_id']}/{r['run_id']} ({r['count']:,})" for r in detail["runs"][:5])
    more = detail["run_count"] - min(5, len(detail["runs"]))
    return shown + (f" and {more} more run(s)" if more > 0 else "")


def error_rows(ledger: Ledger | None, target: str, checks: Iterable[RunCheck] = ()) -> list[dict[str, Any]]:
    """Every failure the ledger holds for this target (any stage, plus exports), with its full message."""
    rows = []
    if ledger is not None:
        for entry in ledger.entries():
            if entry.status not in ("failed", "mismatch"):
                continue
            if entry.target not in (target, "") and entry.stage != "export":
                continue
            rows.append({
                "project_id": entry.ref.project_id,
                "run_id": entry.ref.run_id,
                "stage": entry.stage,
                "target": entry.target,
                "status": entry.status,
                "attempts": entry.attempts,
                "error": entry.last_error or "",
                "updated_at": datetime.fromtimestamp(entry.updated_at, UTC).isoformat(timespec="seconds"),
            })
    else:
        for check in checks:
            if check.status != VALIDATED:
                rows.append({"project_id": check.ref.project_id, "run_id": check.ref.run_id, "stage": "validate",
                             "target": target, "status": "failed" if check.status == ERROR else "mismatch",
                             "attempts": 1, "error": check.summary_line(), "updated_at": None})
    return redact_tree(rows)


def write_reports(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Write report.json, report.html, report.md and errors.jsonl into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {kind: folder / name for kind, name in FILES.items()}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False, sort_keys=False) + "\n",
                             encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    with open(paths["errors"], "w", encoding="utf-8") as fh:
        for row in report["errors"]:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return paths


# -- terminal -------------------------------------------------------------------------------------------------
def print_summary(report: dict[str, Any], console: Console, max_mismatches: int = 20, next_step: bool = True) -> None:
    """The totals, mismatches and approximations; ends with the next command when one is needed (`next_step`
    False: the caller prints it last, after lines of its own). Every line fits the console; no path, URI or
    attribute is split across lines."""
    totals = report["totals"]
    _say(console, shorten(f"Validation against {report['target']}", console.width), style="bold")
    table = Table(show_header=False, box=None)
    for name, label in TOTAL_FIELDS:
        value = totals[name]
        style = "red" if name in ("runs_mismatched", "runs_failed", "mismatches", "errors") and value else ""
        text = _human_bytes(value) if name == "bytes" else f"{value:,}"
        table.add_row(label, f"[{style}]{text}[/{style}]" if style else text)
    console.print(table)
    if len(report["projects"]) > 1:
        _print_projects(report["projects"], console)
    if report["mismatches"]:
        _say(console, "Mismatches", style="bold")
        for m in report["mismatches"][:max_mismatches]:
            where = f"{m['project_id']}/{m['run_id']}  {m['attribute']}"
            _say(console, shorten(where, console.width - len(m["kind"]) - 3) + f"  ({m['kind']})", style="red")
            for line in word_lines(m["detail"], console.width, indent="    "):
                _say(console, line)
        if len(report["mismatches"]) > max_mismatches:
            console.print(f"... and {len(report['mismatches']) - max_mismatches} more (see report.html)")
    if line := pass_line(report):
        console.print(line, markup=False, highlight=False)
    for detail in report.get("approximation_details", []):
        text = (f"approximated (documented): {detail['kind']}: {detail['count']:,} - {detail['meaning']} "
                f"Runs: {_runs_text(detail)}.")
        for line in word_lines(text, console.width):
            _say(console, line)
    if next_step:
        print_next_step(report, console)


def _say(console: Console, line: str, style: str | None = None) -> None:
    """One line as it is: no markup, and no wrapping by rich (which would fold a long word in two)."""
    console.print(line, style=style, markup=False, highlight=False, soft_wrap=True)


def _print_projects(projects: list[dict[str, Any]], console: Console) -> None:
    columns = ("runs", "validated", "mismatched", "failed", "points", "files")
    rows = [[f"{p[k]:,}" for k in columns] for p in projects]
    numbers = sum(max(len(c), *(len(r[i]) for r in rows)) + 1 for i, c in enumerate(columns))
    room = max(12, console.width - numbers - 4)
    per = Table(title="Per project", box=None)
    per.add_column("project", no_wrap=True)
    for col in columns:
        per.add_column(col, justify="right", no_wrap=True)
    for p, row in zip(projects, rows, strict=True):
        per.add_row(shorten(p["project_id"], room), *row)
    console.print(per)


def print_next_step(report: dict[str, Any], console: Console) -> None:
    if report.get("next_command"):
        console.print("\nNext: load the failed and mismatched runs again and validate them:", markup=False)
        for line in shell_lines(report["next_command"], console.width):
            _say(console, line)


# -- Markdown -----------------------------------------------------------------------------------------------
def _server_note(report: dict[str, Any]) -> str:
    """` (MLflow server 3.10.1)` when the report knows the target's server (report.json's `target_server`)."""
    return f" ({report['target_server']})" if report.get("target_server") else ""


def render_markdown(report: dict[str, Any]) -> str:
    totals = report["totals"]
    verdict = "all selected data matches" if report["ok"] else "MISMATCHES OR ERRORS FOUND"
    lines = [f"# Validation report: {verdict}", "",
             f"Target `{report['target']}`{_server_note(report)}, archive `{report['archive'] or '-'}`, "
             f"generated {report['generated_at']} "
             f"by neptune-migrate {report['tool_version']}.", "", "| total | value |", "|---|---:|"]
    lines += [f"| {label} | {_cell(_human_bytes(totals[n]) if n == 'bytes' else f'{totals[n]:,}')} |"
              for n, label in TOTAL_FIELDS]
    if line := pass_line(report):
        lines += ["", "## This sync", "", _cell(line)]
    lines += ["", "## Projects", "", "| project | runs | validated | mismatched | failed | points | files |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {_cell(p['project_id'])} | {p['runs']} | {p['validated']} | {p['mismatched']} | {p['failed']} | "
              f"{p['points']:,} | {p['files']:,} |" for p in report["projects"]]
    lines += ["", "## Runs", "", "| project | run | status | mismatches | points | files | this pass | target id |",
              "|---|---|---|---:|---:|---:|---|---|"]
    urls = {(r["project_id"], r["run_id"]): r.get("target_url") for r in report["runs"]}
    lines += [f"| {_cell(r['project_id'])} | {_md_link(r['run_id'], r.get('target_url'))} | {r['status']} | "
              f"{r['mismatch_count']} | {r['checked'].get('points', 0):,} | {r['checked'].get('files', 0):,} | "
              f"{_cell(pass_cell(r))} | {_cell(r['target_id'] or '')} |" for r in report["runs"]]
    synced = [r for r in report["runs"] if r.get("sync")]
    if synced:
        title = "Added by this sync" if report.get("this_pass") else "Added by the last sync"
        lines += ["", f"## {title}", "", "| run | points added | per series | atoms | files |",
                  "|---|---:|---|---|---|"]
        for r in synced:
            g = r["sync"]
            if g.get("replaced"):
                lines.append(f"| {_cell(r['project_id'] + '/' + r['run_id'])} | replaced: {_cell(g['replaced'])} "
                             "| | | |")
                continue
            series = ", ".join(f"{k} +{n:,}" for k, n in sorted((g.get("series") or {}).items()))
            lines.append(f"| {_cell(r['project_id'] + '/' + r['run_id'])} | {g.get('points', 0):,} | "
                         f"{_cell(series)} | {_cell(', '.join(g.get('atoms') or []))} | "
                         f"{_cell(', '.join(g.get('files') or []))} |")
    if report["mismatches"]:
        lines += ["", "## Mismatches", "", "| run | attribute | kind | what differs |", "|---|---|---|---|"]
        lines += [f"| {_md_link(m['project_id'] + '/' + m['run_id'], urls.get((m['project_id'], m['run_id'])))} | "
                  f"{_cell(m['attribute'])} | {m['kind']} | {_cell(m['detail'])} |" for m in report["mismatches"]]
    if report["approximations"]:
        lines += ["", "## Documented approximations", "", "| kind | count | what it means | runs |",
                  "|---|---:|---|---|"]
        lines += [f"| {_cell(d['kind'])} | {d['count']:,} | {_cell(d['meaning'])} | {_md_runs(d)} |"
                  for d in report.get("approximation_details", [])]
    if report["errors"]:
        lines += ["", "## Errors", "", "| run | stage | status | attempts | error |", "|---|---|---|---:|---|"]
        lines += [f"| {_cell(e['project_id'] + '/' + e['run_id'])} | {e['stage']} | {e['status']} | {e['attempts']} | "
                  f"{_cell(e['error'])} |" for e in report["errors"]]
    source = report.get("source_check")
    if source:
        lines += ["", "## Source check (what the source listed against the archive)", "",
                  f"Listed {source['listed_runs']} run(s), {source['archived_runs']} in the archive: "
                  + ("everything listed is there." if source["ok"] else "SOMETHING IS MISSING."), ""]
        lines += [f"- missing from the archive: `{_cell(k)}`" for k in source["missing"]]
        lines += [f"- `{_cell(d['run'])}`: {_cell(d['detail'])}" for d in source["differences"]]
    if report["incomplete_in_archive"]:
        lines += ["", "## Incomplete runs in the archive (export interrupted; not loaded)", ""]
        lines += [f"- `{x}`" for x in report["incomplete_in_archive"]]
    if report.get("next_command"):
        lines += ["", "## Next step", "", "Load the failed and mismatched runs again and validate them:", "",
                  "```", report["next_command"], "```"]
    return "\n".join(lines) + "\n"


def pass_cell(run: dict[str, Any]) -> str:
    """What this pass did to a run, in a few words (empty outside `migrate --sync`)."""
    done = run.get("this_pass")
    if not done:
        return ""
    text = done["action"]
    added = done.get("added") or {}
    if added.get("points"):
        text += f" +{added['points']:,} points"
    if done.get("validated") and done["validated"] != "now":
        text += f", validated {done['validated']}"
    if done.get("waits_for_end"):
        text += ", live: replaced once it finishes"
    return text


def _cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_runs(detail: dict[str, Any]) -> str:
    shown = ", ".join(f"{_md_link(r['project_id'] + '/' + r['run_id'], r['target_url'])} ({r['count']:,})"
                      for r in detail["runs"])
    more = detail["run_count"] - len(detail["runs"])
    return shown + (f" and {more:,} more" if more > 0 else "")


def _md_link(text: str, url: str | None) -> str:
    if not url:
        return _cell(text)
    label = _cell(text).replace("[", "\\[").replace("]", "\\]")
    return f"[{label}](<{url.replace('>', '%3E').replace(' ', '%20')}>)"


# -- HTML ---------------------------------------------------------------------------------------------------
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}.meta{color:#5a6272;margin-bottom:16px}
.verdict{display:inline-block;padding:3px 10px;border-radius:12px;font-weight:600;color:#fff}
.ok{background:#1f883d}.bad{background:#cf222e}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #d8dee4;border-radius:8px;
padding:10px 14px;min-width:150px}.card .v{font-size:20px;font-weight:600}.card .l{color:#5a6272;font-size:12px}
.card.alert .v{color:#cf222e}
table{border-collapse:collapse;background:#fff;border:1px solid #d8dee4;width:100%;margin-bottom:8px}
th,td{padding:5px 9px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
td:last-child{overflow-wrap:anywhere}td[class^="s-"]{white-space:nowrap}
th{background:#f3f5f7;cursor:pointer;user-select:none;white-space:nowrap}th:after{content:" \\2195";color:#9aa3ae}
th.asc:after{content:" \\2191"}th.desc:after{content:" \\2193"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.s-validated{color:#1f883d;font-weight:600}.s-mismatch,.s-error,.s-failed{color:#cf222e;font-weight:600}
input.filter{margin:0 0 8px;padding:4px 8px;width:320px}code{font-size:12px}
"""

_JS = """
function sortTable(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],asc=!th.classList.contains('asc');t.querySelectorAll('th').forEach(h=>h.classList.remove('asc','desc'));
th.classList.add(asc?'asc':'desc');const key=r=>{const c=r.children[i];const v=c.dataset.sort??c.textContent;
const n=parseFloat(v);return isNaN(n)||!/^-?[0-9.,e+]+$/.test(v.trim())?v.toLowerCase():n};
[...b.rows].sort((x,y)=>{const a=key(x),c=key(y);return (a<c?-1:a>c?1:0)*(asc?1:-1)}).forEach(r=>b.appendChild(r))}
function filterTable(inp,id){const q=inp.value.toLowerCase();document.getElementById(id).tBodies[0]
.querySelectorAll('tr').forEach(r=>{r.style.display=r.textContent.toLowerCase().includes(q)?'':'none'})}
const heads=document.querySelectorAll('th');heads.forEach(th=>th.addEventListener('click',()=>sortTable(th)));
document.documentElement.dataset.sortable=heads.length;
"""


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page (inline CSS and JS, no network): totals, projects, runs, mismatches, errors."""
    e = html.escape
    totals = report["totals"]
    ok = report["ok"]
    urls = {(r["project_id"], r["run_id"]): r.get("target_url") for r in report["runs"]}
    cards = []
    for name, label in TOTAL_FIELDS:
        value = totals[name]
        shown = _human_bytes(value) if name == "bytes" else f"{value:,}"
        alert = " alert" if name in ("runs_mismatched", "runs_failed", "mismatches", "errors") and value else ""
        cards.append(f'<div class="card{alert}"><div class="v" id="total-{name}" data-value="{value}">{e(shown)}'
                     f'</div><div class="l">{e(label)}</div></div>')
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>neptune-migrate validation report: {e(report['target'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Validation report <span class=\"verdict {'ok' if ok else 'bad'}\" id=\"verdict\">"
        f"{'all selected data matches' if ok else 'mismatches or errors found'}</span></h1>",
        f"<div class=\"meta\">Target <code>{e(report['target'])}</code>{e(_server_note(report))} &middot; archive "
        f"<code>{e(report['archive'] or '-')}</code> &middot; generated {e(report['generated_at'])} by "
        f"neptune-migrate {e(report['tool_version'])} in {report['seconds']:,.1f} s</div>",
        f"<div class=\"cards\" id=\"totals\">{''.join(cards)}</div>",
    ]
    parts.append(_html_table("projects", "Projects", ["project", "runs", "validated", "mismatched", "failed",
                                                      "mismatches", "points", "files", "bytes"],
                             [[p["project_id"], p["runs"], p["validated"], p["mismatched"], p["failed"],
                               p["mismatches"], p["points"], p["files"], p["bytes"]] for p in report["projects"]]))
    if line := pass_line(report):
        parts.append(f"<p id=\"this-pass\">{e(line)}</p>")
    parts.append(_html_table("runs", "Runs", ["project", "run", "status", "mismatches", "params", "points",
                                             "series points", "files", "bytes", "load attempts", "seconds",
                                             "target id", "this pass"],
                             [[r["project_id"], _link(r["run_id"], r.get("target_url")), ("status", r["status"]),
                               r["mismatch_count"],
                               r["checked"].get("params", 0), r["checked"].get("points", 0),
                               r["checked"].get("series_points", 0), r["checked"].get("files", 0),
                               r["checked"].get("bytes", 0), r["load_attempts"], r["seconds"], r["target_id"] or "",
                               pass_cell(r)] for r in report["runs"]], filter_box=True))
    parts.append(_html_table("mismatches", "Mismatches", ["project", "run", "attribute", "kind", "what differs",
                                                          "target key"],
                             [[m["project_id"], _link(m["run_id"], urls.get((m["project_id"], m["run_id"]))),
                               m["attribute"], m["kind"], m["detail"], m["target_key"] or ""]
                              for m in report["mismatches"]], filter_box=True,
                             empty="No mismatches: every compared value is equal."))
    parts.append(_html_table("approximations", "Documented approximations", ["kind", "count", "what it means",
                                                                           "runs"],
                             [[d["kind"], d["count"], d["meaning"], _html_runs(d)]
                              for d in report.get("approximation_details", [])], empty="None."))
    parts.append(_html_table("errors", "Errors", ["project", "run", "stage", "status", "attempts", "error"],
                             [[x["project_id"], x["run_id"], x["stage"], ("status", x["status"]), x["attempts"],
                               x["error"]] for x in report["errors"]], empty="No errors."))
    source = report.get("source_check")
    if source:
        rows = [["missing from the archive", k, ""] for k in source["missing"]]
        rows += [["count differs", d["run"], d["detail"]] for d in source["differences"]]
        rows += [["in the archive, not listed", k, ""] for k in source["unexpected"]]
        parts.append(_html_table("source", "Source check", ["finding", "run", "what differs"], rows,
                                 empty="Everything the source listed is in the archive, with the same counts."))
        parts.append(f"<p id=\"source-summary\">The source listed {source['listed_runs']} run(s); "
                     f"{source['archived_runs']} of them are complete in the archive.</p>")
    if report["incomplete_in_archive"]:
        items = "".join(f"<li><code>{e(x)}</code></li>" for x in report["incomplete_in_archive"])
        parts.append(f"<h2>Incomplete runs in the archive</h2><ul id=\"incomplete\">{items}</ul>")
    if report.get("next_command"):
        parts.append("<h2>Next step</h2><p>Load the failed and mismatched runs again and validate them:</p>"
                     f"<pre id=\"next-command\"><code>{e(report['next_command'])}</code></pre>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def _html_table(table_id: str, title: str, headers: list[str], rows: list[list[Any]], filter_box: bool = False,
                empty: str = "") -> str:
    e = html.escape
    out = [f"<h2>{e(title)} <small>({len(rows):,})</small></h2>"]
    if not rows and empty:
        return out[0] + f"<p id=\"{table_id}-empty\">{e(empty)}</p>"
    if filter_box:
        out.append(f"<input class=\"filter\" placeholder=\"filter\" oninput=\"filterTable(this,'{table_id}')\">")
    out.append(f"<table id=\"{table_id}\"><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers)
               + "</tr></thead><tbody>")
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, _Html):
                cells.append(f"<td data-sort=\"{e(value.sort)}\">{value.markup}</td>")
            elif isinstance(value, tuple):  # a status: coloured, sorted by its text
                cells.append(f"<td class=\"s-{e(value[1])}\">{e(value[1])}</td>")
            elif isinstance(value, bool) or value is None:
                cells.append(f"<td>{e(str(value))}</td>")
            elif isinstance(value, int | float):
                cells.append(f"<td class=\"num\" data-sort=\"{value}\">{value:,}</td>")
            else:
                cells.append(f"<td>{e(str(value))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class _Html(NamedTuple):
    """A cell already rendered (links), with the text it sorts by."""

    markup: str
    sort: str


def _link(text: str, url: str | None) -> _Html | str:
    if not url:
        return text
    return _Html(f"<a href=\"{html.escape(url)}\">{html.escape(text)}</a>", text)


def _html_runs(detail: dict[str, Any]) -> _Html:
    links = []
    for r in detail["runs"]:
        cell = _link(f"{r['project_id']}/{r['run_id']}", r["target_url"])
        links.append((cell.markup if isinstance(cell, _Html) else html.escape(cell)) + f" ({r['count']:,})")
    more = detail["run_count"] - len(detail["runs"])
    text = ", ".join(links) + (f" and {more:,} more" if more > 0 else "")
    return _Html(text, str(detail["run_count"]))


# -- helpers ------------------------------------------------------------------------------------------------
def _entries(ledger: Ledger | None, stage: str, target: str) -> dict[tuple[str, str], Entry]:
    if ledger is None:
        return {}
    return {(x.ref.project_id, x.ref.run_id): x for x in ledger.entries(stage=stage, target=target)}


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)
