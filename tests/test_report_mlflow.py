"""The report and the hints against a real MLflow server: run ids link to the run pages, links open the runs table,
created experiments say where they came from, and a mismatch ends the report with a retry that works."""

from __future__ import annotations

import shlex
from pathlib import Path

from mlflow.tracking import MlflowClient

import neptune_migration as nm
from neptune_migration import __version__
from neptune_migration.report import APPROXIMATIONS
from neptune_migration.samples import write_nasty_archive

from .conftest import run_cli


def test_report_links_experiment_description_and_retry_hint(tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive", rows_per_part=700)
    state, report_dir = tmp_path / "state.db", tmp_path / "report"
    common = {"to": "mlflow", "mlflow_tracking_uri": mlflow_server.uri, "experiment_prefix": prefix, "state": state}
    loaded = nm.load(archive, **common)
    assert loaded.ok

    client = MlflowClient(mlflow_server.uri)
    [exp] = [e for e in client.search_experiments() if e.name.startswith(prefix)]
    project = exp.name[len(prefix):]
    assert exp.tags["neptune.project"] == project == "nasty/ünïcode-proj"
    assert exp.tags["neptune.workspace"] == "nasty"
    assert exp.tags["neptune.migrated_by"] == f"neptune-migration {__version__}"
    note = exp.tags["mlflow.note.content"]
    assert f"Neptune project {project} (workspace nasty)" in note and f"neptune-migration {__version__}" in note
    # the link the load prints opens MLflow 3's runs table, not its GenAI (traces) view
    assert f"{mlflow_server.uri}/#/experiments/{exp.experiment_id}?workflowType=machine_learning" in loaded.hint

    clean = nm.validate(archive, report_dir=report_dir, **common)
    # experiment tags are not run tags: describing the experiment costs no mismatch
    assert clean.ok and clean.report["totals"]["mismatches"] == 0 and clean.report["next_command"] is None
    runs = {r.data.tags["neptune.run_key"]: r for r in client.search_runs([exp.experiment_id])}
    page = (report_dir / "report.html").read_text(encoding="utf-8")
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    for key, run in runs.items():
        url = (f"{mlflow_server.uri}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
               "?workflowType=machine_learning")
        assert f'<a href="{url}">{key.rsplit("/", 1)[1]}</a>' in page
        assert f"(<{url}>)" in md
    # each approximation is explained and names the runs it touched
    details = {d["kind"]: d for d in clean.report["approximation_details"]}
    assert details["inf_clamped_by_mlflow"]["meaning"] == APPROXIMATIONS["inf_clamped_by_mlflow"]
    assert [r["run_id"] for r in details["inf_clamped_by_mlflow"]["runs"]] == ["NASTY-1"]
    assert APPROXIMATIONS["inf_clamped_by_mlflow"].replace("'", "&#x27;") in page

    # a tag changed in MLflow after the load: the summary and the report end with the retry to run
    nasty = runs["nasty/ünïcode-proj/NASTY-1"]
    tag = next(k for k in sorted(nasty.data.tags) if k.startswith("neptune.sys/"))
    client.set_tag(nasty.info.run_id, tag, "changed after the load")
    args = ["--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri,
            "--experiment-prefix", prefix, "--state", str(state), "--report-dir", str(report_dir)]
    failed = run_cli("validate", *args, "--no-progress", "--workers", "2")
    assert failed.returncode == 1, failed.stderr[-2000:]
    # The command ends the output; in a narrow terminal it is wrapped into lines ending in " \\" (it pastes whole).
    lines = failed.stdout.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("neptune-migrate retry"))
    assert all(line.endswith(" \\") for line in lines[start:-1]), lines[start:]
    last = " ".join(line.removesuffix(" \\").strip() for line in lines[start:])
    assert last.startswith("neptune-migrate retry --archive ")
    words = shlex.split(last)[2:]
    # what was typed, not the logging options or defaults
    typed = dict(zip(args[::2], args[1::2], strict=True), **{"--workers": "2"})
    assert dict(zip(words[::2], words[1::2], strict=True)) == typed
    assert (report_dir / "report.md").read_text(encoding="utf-8").rstrip().endswith(f"{last}\n```")
    assert f"<code>{last}</code>" in (report_dir / "report.html").read_text(encoding="utf-8")

    # the command it names repairs the run
    retried = run_cli(*shlex.split(last)[1:], "--no-progress")
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-2000:]
    assert "Next:" not in retried.stdout
