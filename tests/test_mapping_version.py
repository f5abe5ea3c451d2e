"""Every target run records the mapping version it was loaded with; a rerun after an upgrade lists the runs loaded
with an older mapping and replaces them only with `--refresh` (real MLflow server, W&B offline run files).

No older release is installed here, so "loaded by an older release" is made the way such a release leaves it:
its runs carry an older version (MLflow tag) and the ledger's record of the load has no version (read as 1)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from mlflow.tracking import MlflowClient

from neptune_migration.archive import Archive
from neptune_migration.targets.mlflow import MAPPING_VERSION
from neptune_migration.targets.mlflow.mapping import MAPPING_TAG
from neptune_migration.targets.wandb import MAPPING_VERSION as WANDB_MAPPING_VERSION
from neptune_migration.targets.wandb.loader import WandbOfflineTarget

from .conftest import run_cli
from .test_step_scale import PROJECT, STEPS, _archive


def _age_the_load(state: Path, client: MlflowClient, experiment_id: str) -> None:
    for run in client.search_runs([experiment_id]):
        client.set_tag(run.info.run_id, MAPPING_TAG, "1")
    with sqlite3.connect(state) as db:
        for rowid, details in db.execute("SELECT rowid, details FROM progress WHERE stage = 'load'").fetchall():
            d = json.loads(details)
            d.pop("mapping_version")
            db.execute("UPDATE progress SET details = ? WHERE rowid = ?", (json.dumps(d), rowid))


def test_runs_loaded_with_an_older_mapping_are_listed_and_refreshed_on_request(
        tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = _archive(tmp_path / "archive", list(STEPS))
    state = tmp_path / "state.db"
    common = ["--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri,
              "--experiment-prefix", prefix, "--state", str(state)]
    assert run_cli("load", *common).returncode == 0
    client = MlflowClient(mlflow_server.uri)
    exp_id = client.get_experiment_by_name(prefix + PROJECT).experiment_id
    first = {r.data.tags["neptune.run_id"]: r for r in client.search_runs([exp_id])}
    assert {r.data.tags[MAPPING_TAG] for r in first.values()} == {str(MAPPING_VERSION)}
    with sqlite3.connect(state) as db:
        versions = {json.loads(d)["mapping_version"] for (d,) in db.execute(
            "SELECT details FROM progress WHERE stage = 'load'")}
    assert versions == {MAPPING_VERSION}

    _age_the_load(state, client, exp_id)
    again = run_cli("load", *common)
    assert again.returncode == 0, again.stderr
    assert "3 run(s) were loaded with an older mapping of mlflow" in again.stdout and "--refresh" in again.stdout
    assert {r.info.run_id for r in client.search_runs([exp_id])} == {r.info.run_id for r in first.values()}
    report = tmp_path / "report"
    checked = run_cli("validate", *common, "--report-dir", str(report))
    assert checked.returncode == 1
    errors = [json.loads(line) for line in (report / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 3 and all(e["error"] == "1 mismatch(es): run: the run was loaded with mapping version 1, "
                                    f"this version writes {MAPPING_VERSION}: `load --refresh` reloads it"
                                    for e in errors), errors

    refreshed = run_cli("load", *common, "--refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    assert "older mapping" not in refreshed.stdout
    now = {r.data.tags["neptune.run_id"]: r for r in client.search_runs([exp_id])}
    assert len(now) == 3 and not {r.info.run_id for r in now.values()} & {r.info.run_id for r in first.values()}
    assert {r.data.tags[MAPPING_TAG] for r in now.values()} == {str(MAPPING_VERSION)}
    assert run_cli("validate", *common, "--report-dir", str(report)).returncode == 0


def test_wandb_runs_carry_the_mapping_version_in_their_config(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "archive", ["HALF"])
    target = WandbOfflineTarget(tmp_path / "out")
    run = Archive(archive).scan().runs[0]
    from neptune_migration.targets.base import LoadContext

    target.load_run(run, LoadContext())
    assert target.read_back(run).config["neptune_migration"]["mapping_version"] == WANDB_MAPPING_VERSION
