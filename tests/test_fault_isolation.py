"""One bad run never stops the good ones: a damaged run fails alone, with its reason in the ledger and the report,
and the exit code says something failed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchiveWriter
from neptune_migration.ledger import Ledger
from neptune_migration.vocabulary import RunRef

from .conftest import run_cli

T0 = datetime(2024, 1, 1, tzinfo=UTC)
PROJECT = "ws/isolation"


def _five_runs(root: Path) -> Path:
    # Small parts, so each run has several and a damaged one can still be named from another.
    writer = ArchiveWriter(root, rows_per_part=60, rows_per_batch=60)
    for i in range(1, 6):
        with writer.run(RunRef(PROJECT, f"ISO-{i}")) as w:
            w.add_atom("sys/creation_time", "datetime", T0 + timedelta(hours=i))
            w.add_atom("parameters/lr", "float", 0.1 * i)
            w.add_series("loss", "float_series", list(range(150)), [T0 + timedelta(seconds=s) for s in range(150)],
                         [1.0 / (s + i) for s in range(150)])
    return root


def test_one_truncated_part_fails_its_run_alone(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    archive = _five_runs(tmp_path / "archive")
    victim = next((archive / "data").rglob("ISO-3-*_part_0.parquet"))
    assert len(list(victim.parent.glob("ISO-3-*_part_*.parquet"))) >= 2
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    common = ["--archive", str(archive), "--state", str(tmp_path / "state.db"), "--mlflow-tracking-uri",
              mlflow_server.uri, "--experiment-prefix", prefix, "--no-progress"]

    loaded = run_cli("load", *common)
    assert loaded.returncode == 1, loaded.stdout + loaded.stderr
    assert "Traceback" not in loaded.stdout + loaded.stderr
    text = " ".join(loaded.stdout.split())
    assert "runs loaded 4" in text and f"failed {PROJECT}/ISO-3: corrupt or unreadable parquet" in text, text

    checked = run_cli("validate", *common, "--report-dir", str(tmp_path / "report"))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    by_run = {r["run_id"]: r for r in report["runs"]}
    assert [r for r, row in by_run.items() if row["status"] == "validated"] == ["ISO-1", "ISO-2", "ISO-4", "ISO-5"]
    assert by_run["ISO-3"]["status"] == "error" and "corrupt or unreadable parquet" in by_run["ISO-3"]["error"]
    assert report["totals"]["runs_failed"] == 1

    with Ledger(tmp_path / "state.db") as ledger:
        load_rows = {e.ref.run_id: e for e in ledger.entries(stage="load")}
    assert {r for r, e in load_rows.items() if e.status == "done"} == {"ISO-1", "ISO-2", "ISO-4", "ISO-5"}
    assert load_rows["ISO-3"].status == "failed" and "corrupt or unreadable parquet" in load_rows["ISO-3"].last_error


def test_an_incomplete_run_makes_load_exit_non_zero(tmp_path: Path) -> None:
    archive = _five_runs(tmp_path / "archive")
    next((archive / "data").rglob("ISO-5-*_part_0.parquet")).unlink()  # an export that died before its commit
    loaded = run_cli("load", "--archive", str(archive), "--state", str(tmp_path / "state.db"),
                     "--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--no-progress")
    assert loaded.returncode == 1, loaded.stdout + loaded.stderr
    text = " ".join(loaded.stdout.split())
    assert "runs loaded 4" in text and "incomplete runs in archive (not loaded) 1" in text, text


def test_a_failed_attempt_leaves_no_running_mlflow_run(exporter_archives: Path, tmp_path: Path, mlflow_server: Any,
                                                       prefix: str) -> None:
    """A files root without the payloads of a neptune-exporter archive (forgetting --files itself is refused
    before anything is written: tests/test_preflight.py): the runs with files fail, and MLflow shows them FAILED
    with the reason (not RUNNING for ever); the rerun with the right --files completes them, FINISHED, the reason
    gone."""
    from mlflow.tracking import MlflowClient

    data, files = exporter_archives / "neptune3" / "data", exporter_archives / "neptune3" / "files"
    common = ["--archive", str(data), "--state", str(tmp_path / "state.db"), "--mlflow-tracking-uri",
              mlflow_server.uri, "--experiment-prefix", prefix, "--no-progress"]
    empty = tmp_path / "files-emptied"
    empty.mkdir()
    first = run_cli("load", *common, "--files", str(empty))
    assert first.returncode == 1, first.stdout + first.stderr
    client = MlflowClient(mlflow_server.uri)
    experiments = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    runs = client.search_runs(experiments)
    assert runs and not [r for r in runs if r.info.status == "RUNNING"], [(r.info.run_name, r.info.status)
                                                                          for r in runs]
    failed = [r for r in runs if r.info.status == "FAILED" and "neptune.migration.load_error" in r.data.tags]
    assert failed, [(r.info.run_name, r.info.status, r.data.tags.get("neptune.migration.state")) for r in runs]

    second = run_cli("load", *common, "--files", str(files))
    assert second.returncode == 0, second.stdout + second.stderr
    runs = {r.info.run_id: r for r in client.search_runs(experiments)}
    for r in failed:
        again = runs[r.info.run_id]  # completed in place, not replaced
        assert "neptune.migration.load_error" not in again.data.tags
        assert again.data.tags["neptune.migration.state"] == "complete"
    checked = run_cli("validate", *common, "--files", str(files), "--report-dir", str(tmp_path / "report"))
    assert checked.returncode == 0, checked.stdout[-3000:]
