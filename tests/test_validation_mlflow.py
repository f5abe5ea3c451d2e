"""Validation against a real MLflow server: a clean migration matches, each corruption is named exactly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.samples import write_demo_archive, write_nasty_archive
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.stages.validate import VALIDATE, retry, validate
from neptune_migration.targets.mlflow.loader import MlflowTarget
from neptune_migration.vocabulary import RunRef

from .conftest import run_cli


def _quiet(n: int) -> Tracker:
    return Tracker("t", n, Console(quiet=True), enabled=False)


def _load(archive: Path, uri: str, prefix: str, state: Path, files: Path | None = None):
    target = MlflowTarget(uri, experiment_prefix=prefix)
    with Ledger(state) as ledger:
        try:
            return load(Archive(archive, files), target, Selection(), ledger, _quiet, workers=2)
        finally:
            target.close()


def _validate(archive: Path, uri: str, prefix: str, state: Path, files: Path | None = None, **kw):
    target = MlflowTarget(uri, experiment_prefix=prefix)
    with Ledger(state) as ledger:
        try:
            return validate(Archive(archive, files), target, Selection(), ledger, _quiet, workers=2, **kw)
        finally:
            target.close()


def test_clean_nasty_migration_validates(tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive", rows_per_part=700)
    state = tmp_path / "state.db"
    loaded = _load(archive, mlflow_server.uri, prefix, state)
    assert not loaded.failed
    summary = _validate(archive, mlflow_server.uri, prefix, state)
    problems = [(c.ref.key, m.attribute, m.detail) for c in summary.checks for m in c.mismatches]
    assert problems == [] and summary.ok, problems
    by_key = {c.ref.key: c for c in summary.checks}
    nasty = by_key["nasty/ünïcode-proj/NASTY-1"]
    src = {r.ref.key: r for r in Archive(archive).scan().runs}["nasty/ünïcode-proj/NASTY-1"]
    assert nasty.checked["points"] == src.table(["float_series"], ["attribute_path"]).num_rows
    assert nasty.checked["files"] == 6 + 1  # 3 files + 3 file-series steps + the long param's full text
    assert nasty.checked["series_artifacts"] == 2 and nasty.checked["series_points"] == 5
    # the approximations the load counted are counted again, from the archive, not hidden
    assert nasty.approximations["inf_clamped_by_mlflow"] == 2
    assert nasty.approximations["negative_zero_stored_as_zero"] == 1
    assert nasty.approximations["param_truncated_full_value_in_artifact"] == 1
    assert loaded.approximations()["inf_clamped_by_mlflow"] == 2
    with Ledger(state) as ledger:
        entries = {e.ref.run_id: e for e in ledger.entries(stage=VALIDATE)}
    assert {k: e.status for k, e in entries.items()} == {"NASTY-1": "done", "NASTY-2": "done"}
    assert entries["NASTY-1"].details["checked"]["points"] == nasty.checked["points"]


@pytest.mark.parametrize("flavour", ["neptune3", "neptune2"])
def test_exporter_archives_validate(exporter_archives: Path, tmp_path: Path, mlflow_server, prefix: str,
                                    flavour: str) -> None:
    root = exporter_archives / flavour
    _load(root / "data", mlflow_server.uri, prefix, tmp_path / "s.db", files=root / "files")
    summary = _validate(root / "data", mlflow_server.uri, prefix, tmp_path / "s.db", files=root / "files")
    assert [(c.ref.key, c.summary_line()) for c in summary.checks if c.status != "validated"] == []
    assert sum(c.checked.get("files", 0) for c in summary.checks) > 0
    assert sum(c.checked.get("points", 0) for c in summary.checks) > 0


def test_a_run_never_loaded_is_a_mismatch(tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    target = MlflowTarget(mlflow_server.uri, experiment_prefix=prefix)
    with Ledger(tmp_path / "s.db") as ledger:
        load(Archive(archive), target, Selection.from_options(runs="NASTY-2$"), ledger, _quiet, workers=1)
        summary = validate(Archive(archive), target, Selection(), ledger, _quiet, workers=1)
        target.close()
        entry = ledger.get(summary.checks[0].ref, VALIDATE, target.canonical)
    assert [(c.ref.run_id, c.status) for c in summary.checks] == [("NASTY-1", "mismatch"), ("NASTY-2", "validated")]
    assert summary.checks[0].mismatches[0].kind == "run_missing"
    assert entry is not None and entry.status == "mismatch" and "run_missing" in json.dumps(entry.details)


# -- corruption injected in the target after loading ---------------------------------------------------------
def _server_db(server) -> sqlite3.Connection:
    return sqlite3.connect(server.root / "mlflow.db", timeout=30, isolation_level=None)


def _mlflow_runs(client: MlflowClient, prefix: str) -> dict[str, object]:
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    runs = client.search_runs(exps, max_results=1000)
    keyed = {r.data.tags["neptune.run_key"]: r for r in runs}
    assert len(keyed) == len(runs), "exactly one active MLflow run per Neptune run"
    return keyed


def _corrupt(server, client: MlflowClient, runs: dict[str, object]) -> dict[str, tuple[str, str]]:
    """One corruption per run; returns {run id: (attribute, kind)} that validation must report."""
    rid = {key.rsplit("/", 1)[1]: r.info.run_id for key, r in runs.items()}
    with _server_db(server) as db:
        # a deleted point
        db.execute("DELETE FROM metrics WHERE run_uuid=? AND key='train/loss' AND step=10", (rid["IMG-1"],))
        # a changed value
        db.execute("UPDATE metrics SET value=value+0.5 WHERE run_uuid=? AND key='train/accuracy' AND step=5",
                   (rid["IMG-2"],))
        # a changed timestamp
        db.execute("UPDATE metrics SET timestamp=timestamp+1 WHERE run_uuid=? AND key='train/lr' AND step=7",
                   (rid["IMG-3"],))
        # a changed param (params are immutable through the API)
        db.execute("UPDATE params SET value='0.5' WHERE run_uuid=? AND key='parameters/lr'", (rid["IMG-5"],))
    # a removed artifact
    removed = [p for p in (server.root / "artifacts").rglob("best.pt") if rid["IMG-4"] in p.parts]
    assert len(removed) == 1
    removed[0].unlink()
    # a wrong status (the end time kept, so only the status differs)
    client.set_terminated(rid["IMG-6"], status="KILLED", end_time=runs["acme/image-classifier/IMG-6"].info.end_time)
    # a changed value logged through the API at an existing step and timestamp: MLflow keeps both
    point = next(m for m in client.get_metric_history(rid["IMG-7"], "eval/accuracy") if m.step == 1)
    client.log_metric(rid["IMG-7"], "eval/accuracy", point.value + 1.0, timestamp=point.timestamp, step=1)
    return {
        "IMG-1": ("train/loss", "missing_points"),
        "IMG-2": ("train/accuracy", "value"),
        "IMG-3": ("train/lr", "timestamp"),
        "IMG-4": ("model/checkpoint", "file_missing"),
        "IMG-5": ("parameters/lr", "param_value"),
        "IMG-6": ("sys/failed", "status"),
        "IMG-7": ("eval/accuracy", "point_count"),
    }


def test_each_corruption_is_reported_on_its_run_and_attribute_and_retry_repairs_it(
        tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = write_demo_archive(tmp_path / "archive", runs=8, steps=60)
    state = tmp_path / "state.db"
    uri = mlflow_server.uri
    common = ["--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", uri, "--experiment-prefix",
              prefix, "--state", str(state), "--no-progress", "--workers", "2"]
    assert not _load(archive, uri, prefix, state).failed
    assert _validate(archive, uri, prefix, state).ok

    client = MlflowClient(uri)
    expected = _corrupt(mlflow_server, client, _mlflow_runs(client, prefix))

    bad = run_cli("validate", *common, "--report-dir", str(tmp_path / "bad"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads((tmp_path / "bad" / "report.json").read_text())
    found = {}
    for m in report["mismatches"]:
        found.setdefault(m["run_id"], set()).add((m["attribute"], m["kind"]))
    assert found == {run: {pair} for run, pair in expected.items()}
    assert report["totals"]["runs_mismatched"] == 7 and report["totals"]["runs_validated"] == 1
    details = {m["run_id"]: m["detail"] for m in report["mismatches"]}
    assert "step(s) 10" in details["IMG-1"]
    assert "step 5:" in details["IMG-2"] and "step 7:" in details["IMG-3"]
    assert "'0.5' in MLflow" in details["IMG-5"] and "'KILLED'" in details["IMG-6"]
    status = json.loads(run_cli("status", "--state", str(state), "--stage", "validate", "--json").stdout)
    assert sorted(r["run_id"] for r in status["entries"] if r["status"] == "mismatch") == sorted(expected)
    errors = [json.loads(x) for x in (tmp_path / "bad" / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["run_id"] for e in errors) == sorted(expected)

    repaired = run_cli("retry", *common, "--report-dir", str(tmp_path / "repaired"))
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    after = json.loads((tmp_path / "repaired" / "report.json").read_text())
    assert after["totals"]["mismatches"] == 0 and after["totals"]["runs_validated"] == 7
    # a full validation agrees, and there is exactly one active run per Neptune run, each with exact history
    final = _validate(archive, uri, prefix, state)
    assert final.ok and final.count("validated") == 8
    runs = _mlflow_runs(client, prefix)
    assert len(runs) == 8
    history = client.get_metric_history(runs["acme/image-classifier/IMG-7"].info.run_id, "eval/accuracy")
    assert len(history) == len({m.step for m in history}) == 3


def test_sqlite_store_is_read_directly_and_corruption_found(tmp_path: Path) -> None:
    """A `sqlite:///` tracking URI: metrics read from the store's table, same verdicts as over REST."""
    archive = write_nasty_archive(tmp_path / "archive")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    state = tmp_path / "state.db"
    assert not _load(archive, uri, "", state).failed
    clean = _validate(archive, uri, "", state)
    assert clean.ok, [c.summary_line() for c in clean.checks]
    run_id = clean.checks[0].target_id
    with sqlite3.connect(tmp_path / "store" / "mlflow.db", isolation_level=None) as db:
        db.execute("UPDATE metrics SET value=0.0, is_nan=0 WHERE run_uuid=? AND key='metrics/special' AND step=0",
                   (run_id,))
    bad = _validate(archive, uri, "", state)
    assert [(c.ref.run_id, [(m.attribute, m.kind) for m in c.mismatches]) for c in bad.checks] == [
        ("NASTY-1", [("metrics/special", "value")]), ("NASTY-2", [])]
    assert "nan expected" in bad.checks[0].mismatches[0].detail


def test_retry_resumes_a_failed_load_and_leaves_good_runs_alone(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    target = MlflowTarget(uri)
    with Ledger(tmp_path / "s.db") as ledger:
        load(Archive(archive), target, Selection.from_options(runs="NASTY-2$"), ledger, _quiet, workers=1)
        assert validate(Archive(archive), target, Selection.from_options(runs="NASTY-2$"), ledger, _quiet, 1).ok
        first_id = ledger.get(RunRef("nasty/ünïcode-proj", "NASTY-2"), "load", target.canonical).target_id
        # NASTY-1's load failed (as a crash or a server error would leave it)
        ref = RunRef("nasty/ünïcode-proj", "NASTY-1")
        ledger.start(ref, "load", target.canonical)
        ledger.fail(ref, "load", target.canonical, "HTTP 503 from the tracking server")
        outcome = retry(Archive(archive), target, Selection(), ledger, _quiet, workers=1)
        assert outcome.reloaded == [ref] and [c.ref for c in outcome.validation.checks] == [ref]
        assert outcome.validation.ok and outcome.load.count("loaded") == 1
        assert ledger.get(ref, "load", target.canonical).status == "done"
        # the good run was neither reloaded nor replaced
        assert ledger.get(RunRef("nasty/ünïcode-proj", "NASTY-2"), "load", target.canonical).target_id == first_id
        again = retry(Archive(archive), target, Selection(), ledger, _quiet, workers=1)
        assert again.reloaded == [] and again.revalidated == []
    target.close()
