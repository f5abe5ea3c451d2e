"""Reports: report.json schema and totals, Markdown, errors.jsonl, no secrets; report.html in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from neptune_migration.ledger import Ledger
from neptune_migration.report import (
    APPROXIMATIONS,
    SCHEMA_VERSION,
    build_report,
    print_summary,
    render_html,
    render_markdown,
    write_reports,
)
from neptune_migration.stages.validate import VALIDATE, RunCheck, ValidationSummary, record_problem
from neptune_migration.vocabulary import RunRef

SECRET = "nep-secret-token-1234567890"


def _sample(ledger: Ledger | None = None) -> ValidationSummary:
    """Two projects, five runs: three clean, one with two mismatches, one that could not be read back."""
    checks = []
    for i in range(3):
        c = RunCheck(RunRef("acme/vision", f"VIS-{i + 1}"), f"mlflow-{i}")
        c.count("points", 1000 * (i + 1))
        c.count("files", 2)
        c.count("bytes", 2048)
        c.count("params", 4)
        c.approx("inf_clamped_by_mlflow", i)
        checks.append(c)
    bad = RunCheck(RunRef("acme/nlp", "NLP-7"), "mlflow-7")
    bad.count("points", 500)
    bad.mismatch("train/loss", "missing_points", "1 point(s) missing in MLflow metric 'train/loss' at step(s) 10",
                 "train/loss", 500, 499)
    bad.mismatch("model/ckpt", "file_missing", "artifact 'model/ckpt/best.pt' (4096 bytes) is missing in MLflow",
                 "model/ckpt/best.pt", 4096, None)
    broken = RunCheck(RunRef("acme/nlp", "NLP-8"), error=f"ConnectionError: token={SECRET} refused")
    checks += [bad, broken]
    if ledger is not None:
        for c in checks:
            ledger.start(c.ref, VALIDATE, "mlflow:http://x")
            if c.status == "validated":
                ledger.finish(c.ref, VALIDATE, "mlflow:http://x", c.target_id, details=c.to_dict())
            else:
                record_problem(ledger, c.ref, "mlflow:http://x", c)
        ledger.start(RunRef("acme/nlp", "NLP-9"), "load", "mlflow:http://x")
        ledger.fail(RunRef("acme/nlp", "NLP-9"), "load", "mlflow:http://x", "HTTP 500 from server")
    return ValidationSummary("mlflow:http://x", checks=checks, seconds=1.5)


def test_report_json_schema_totals_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEPTUNE_API_TOKEN", SECRET)
    with Ledger(tmp_path / "s.db") as ledger:
        summary = _sample(ledger)
        report = build_report(summary, ledger, archive="/data/archive")
    assert report["schema"] == "neptune-migration/validation-report" and report["schema_version"] == SCHEMA_VERSION
    assert list(report) == ["schema", "schema_version", "tool_version", "generated_at", "target", "archive", "ok",
                            "seconds", "totals", "projects", "runs", "mismatches", "approximations",
                            "approximation_details", "incomplete_in_archive", "errors", "source_check",
                            "next_command", "this_pass"]
    assert report["source_check"] is None
    t = report["totals"]
    assert (t["runs_selected"], t["runs_validated"], t["runs_mismatched"], t["runs_failed"]) == (5, 3, 1, 1)
    assert t["mismatches"] == 2 and t["points"] == 6500 and t["files"] == 6 and t["bytes"] == 6144
    assert t["approximations"] == 3 and report["approximations"] == {"inf_clamped_by_mlflow": 3}
    assert report["ok"] is False
    assert [(p["project_id"], p["runs"], p["validated"]) for p in report["projects"]] == [
        ("acme/nlp", 2, 0), ("acme/vision", 3, 3)]
    assert [(m["run_id"], m["attribute"], m["kind"]) for m in report["mismatches"]] == [
        ("NLP-7", "train/loss", "missing_points"), ("NLP-7", "model/ckpt", "file_missing")]
    # every failure the ledger holds, any stage, with attempts and the full message
    errors = {(e["run_id"], e["stage"]): e for e in report["errors"]}
    assert set(errors) == {("NLP-7", "validate"), ("NLP-8", "validate"), ("NLP-9", "load")}
    assert errors[("NLP-9", "load")]["error"] == "HTTP 500 from server" and errors[("NLP-9", "load")]["attempts"] == 1
    assert "train/loss" in errors[("NLP-7", "validate")]["error"]

    paths = write_reports(report, tmp_path / "report")
    for path in paths.values():
        assert SECRET not in path.read_text(encoding="utf-8"), path.name
    assert json.loads(paths["json"].read_text()) == report
    lines = [json.loads(x) for x in paths["errors"].read_text().splitlines()]
    assert len(lines) == 3 and {x["stage"] for x in lines} == {"load", "validate"}
    md = paths["markdown"].read_text()
    assert "| runs with mismatches | 1 |" in md and "| acme/nlp | NLP-7 | mismatch | 2 |" in md
    assert "| acme/nlp/NLP-7 | train/loss | missing_points |" in md


def test_every_approximation_kind_has_a_sentence() -> None:
    src = Path(__file__).resolve().parents[1] / "src" / "neptune_migration"
    kinds = {m for f in src.rglob("*.py") for m in re.findall(r'approx\(\s*"([a-z0-9_]+)"', f.read_text())}
    assert len(kinds) >= 12
    assert sorted(kinds - set(APPROXIMATIONS)) == []
    # one sentence each, saying why the target forces it
    assert all(s.endswith(".") and s.count(". ") == 0 and (" because " in s or ", so " in s)
               for s in APPROXIMATIONS.values())


def test_report_explains_approximations_links_runs_and_names_the_retry() -> None:
    summary = _sample()
    urls = {f"mlflow-{i}": f"http://mlflow.example:5000/#/experiments/7/runs/mlflow-{i}" for i in range(3)}
    urls["mlflow-7"] = "http://mlflow.example:5000/#/experiments/7/runs/mlflow-7"
    command = "neptune-migrate retry --archive /data/archive --to mlflow --mlflow-tracking-uri http://mlflow.example:5000"
    report = build_report(summary, run_urls=urls, retry_command=command)
    assert report["next_command"] == command
    [detail] = report["approximation_details"]
    assert detail["kind"] == "inf_clamped_by_mlflow" and detail["count"] == 3
    assert detail["meaning"] == APPROXIMATIONS["inf_clamped_by_mlflow"]
    # VIS-1 counted none: only the runs it touched are named, each with its own count
    assert [(r["run_id"], r["count"]) for r in detail["runs"]] == [("VIS-2", 1), ("VIS-3", 2)]
    page = render_html(report)
    assert f'<a href="{urls["mlflow-7"]}">NLP-7</a>' in page
    assert "because MLflow&#x27;s metric store cannot hold infinity" in page
    assert f'<pre id="next-command"><code>{command}</code></pre>' in page
    md = render_markdown(report)
    assert f"[NLP-7](<{urls['mlflow-7']}>)" in md and "cannot hold infinity" in md
    assert md.rstrip().endswith(f"{command}\n```")
    console = Console(record=True, width=300)
    print_summary(report, console)
    text = console.export_text().rstrip()
    assert text.endswith(command) and "acme/vision/VIS-3 (2)" in text and "cannot hold infinity" in text
    # nothing to retry: no next step is named
    clean = ValidationSummary("mlflow:http://x", checks=summary.checks[:3], seconds=1.0)
    assert build_report(clean, retry_command=command)["next_command"] is None


def test_markdown_escapes_pipes_and_terminal_summary_names_mismatches() -> None:
    summary = _sample()
    summary.checks[3].mismatches[0].detail = "a | b"
    report = build_report(summary)
    assert "a \\| b" in render_markdown(report)
    console = Console(record=True, width=160)
    print_summary(report, console)
    text = console.export_text()
    assert "runs with mismatches" in text and "train/loss" in text and "missing_points" in text
    assert "Per project" in text


def test_html_is_self_contained() -> None:
    page = write_html(_sample())
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "nothing is fetched from the network"
    assert 'id="total-runs_selected" data-value="5"' in page
    assert "<script>" in page and "<style>" in page


def write_html(summary: ValidationSummary) -> str:
    from neptune_migration.report import render_html

    return render_html(build_report(summary))


# -- headless Chromium ----------------------------------------------------------------------------------------
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    try:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"chromium is not installed and `apt-get install -y chromium` failed: {exc}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("`apt-get install -y chromium` succeeded but no chromium binary is on PATH")
    return found


def _dump_dom(chromium: str, page: Path, profile: Path) -> str:
    result = subprocess.run(
        [chromium, *CHROME_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_html_in_headless_chromium(tmp_path: Path) -> None:
    chromium = _chromium()
    report = build_report(_sample())
    paths = write_reports(report, tmp_path / "report")
    dom = _dump_dom(chromium, paths["html"], tmp_path / "profile")
    shown = dict(re.findall(r'id="total-([a-z_]+)" data-value="(\d+)">', dom))
    assert {k: int(v) for k, v in shown.items()} == report["totals"]
    visible = dict(re.findall(r'id="total-(runs_[a-z]+)" data-value="\d+">([^<]+)<', dom))
    assert visible["runs_selected"] == "5" and visible["runs_mismatched"] == "1" and visible["runs_failed"] == "1"
    assert "mismatches or errors found" in dom
    assert re.search(r'data-sortable="\d+"', dom), "the page's script ran offline"

    # clicking the "mismatches" header sorts the runs table by it (descending on the second click)
    clicked = paths["html"].with_name("clicked.html")
    clicked.write_text(paths["html"].read_text().replace(
        "</body>", "<script>const h=document.querySelectorAll('#runs th')[3];h.click();h.click();</script></body>"))
    dom = _dump_dom(chromium, clicked, tmp_path / "profile")
    runs_table = dom[dom.index('id="runs"'):]
    runs_table = runs_table[: runs_table.index("</table>")]
    order = re.findall(r"<tr><td>acme/[a-z]+</td><td>([A-Z]+-\d+)</td>", runs_table)
    assert order[0] == "NLP-7" and len(order) == 5


def test_source_check_in_the_report() -> None:
    from neptune_migration.stages.validate import Mismatch, SourceCheck

    source = SourceCheck(listed_runs=3, archived_runs=2, missing=[RunRef("acme/nlp", "NLP-9")])
    source.differences.append(Mismatch("run", "source_points", "the source listed 10 points, the archive holds 9",
                                       expected=10, actual=9))
    source.differing_runs.append(RunRef("acme/vision", "VIS-1"))
    report = build_report(_sample(), source_check=source)
    assert report["ok"] is False and report["source_check"]["missing"] == ["acme/nlp/NLP-9"]
    assert report["source_check"]["differences"][0]["run"] == "acme/vision/VIS-1"
    md = render_markdown(report)
    assert "missing from the archive: `acme/nlp/NLP-9`" in md and "listed 10 points" in md
    from neptune_migration.report import render_html

    page = render_html(report)
    assert "<td>missing from the archive</td><td>acme/nlp/NLP-9</td>" in page
    clean = build_report(ValidationSummary("t", checks=[RunCheck(RunRef("p", "r"))]),
                         source_check=SourceCheck(listed_runs=1, archived_runs=1))
    assert clean["ok"] is True and "Everything the source listed is in the archive" in render_html(clean)


def test_a_sync_report_says_what_this_pass_did_to_every_run() -> None:
    summary = _sample()
    live = summary.checks[0]
    live.approx("live_param")
    this_pass = {
        "acme/vision/VIS-1": {"action": "synced", "added": {"points": 20, "series": {"train/loss": 20}},
                              "validated": "now", "waits_for_end": True},
        "acme/vision/VIS-2": {"action": "unchanged", "validated": "2026-12-01T10:00:00Z"},
        "acme/nlp/NLP-7": {"action": "replaced", "added": {"replaced": "param params/lr changed"}, "validated": "now"},
    }
    report = build_report(summary, this_pass=this_pass)
    by_run = {r["run_id"]: r for r in report["runs"]}
    assert by_run["VIS-1"]["sync"]["points"] == 20 and by_run["VIS-1"]["this_pass"]["action"] == "synced"
    assert by_run["VIS-2"]["this_pass"]["validated"] == "2026-12-01T10:00:00Z" and "sync" not in by_run["VIS-2"]
    assert by_run["VIS-3"]["this_pass"] == {"action": "unchanged"}, "a run the pass did not name is unchanged"
    assert report["this_pass"] == {"runs": {"replaced": 1, "synced": 1, "unchanged": 3}, "validated_now": 2,
                                   "validated_earlier": 3, "waiting_for_end": ["acme/vision/VIS-1"]}
    md = render_markdown(report)
    assert "This sync: 1 replaced, 1 synced, 3 unchanged; the report covers all 5 selected runs" in md
    assert "acme/vision/VIS-1" in md.split("## This sync")[1].split("##")[0], "the live run waiting for its end"
    assert "| synced +20 points, live: replaced once it finishes |" in md
    assert "unchanged, validated 2026-12-01T10:00:00Z" in md and "## Added by this sync" in md
    assert "this pass" in render_html(report)
    # Outside a sync (validate, migrate) the report has no pass.
    assert build_report(_sample())["this_pass"] is None
