"""One step scale per metric key across an MLflow experiment: runs logging the same metric at different fractions
of an epoch line up, also when a later load needs a finer scale than the first one (real MLflow server)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlflow.tracking import MlflowClient
from rich.console import Console

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.stages.validate import retry, validate
from neptune_migration.targets.mlflow.loader import MlflowTarget
from neptune_migration.vocabulary import RunRef

PROJECT = "team/epochs"
T0 = datetime(2025, 3, 1, tzinfo=UTC)
# run id -> steps of metric `val/loss`: half-epoch, quarter-epoch and whole-epoch evaluation.
STEPS = {"HALF": [0, 0.5, 1, 1.5, 2], "QUARTER": [0, 0.25, 0.5, 0.75, 1, 1.25], "WHOLE": [0, 1, 2, 3]}


def _archive(root: Path, runs: list[str]) -> Path:
    writer = ArchiveWriter(root)
    for run_id in runs:
        with writer.run(RunRef(PROJECT, run_id)) as w:
            w.add_atom("sys/id", "string", run_id)
            w.add_atom("sys/creation_time", "datetime", T0)
            steps = STEPS[run_id]
            ts = [T0 + timedelta(seconds=10 * i) for i in range(len(steps))]
            w.add_series("val/loss", "float_series", steps, ts, [1.0 / (1 + s) for s in steps])
            w.add_series("train/batches", "float_series", list(range(len(steps))), ts, [float(i) for i in
                                                                                        range(len(steps))])
    return root


def _quiet(n: int) -> Tracker:
    return Tracker("t", n, Console(quiet=True), enabled=False)


def _load(archive: Path, uri: str, prefix: str, state: Path, selection: Selection | None = None):
    target = MlflowTarget(uri, experiment_prefix=prefix)
    try:
        with Ledger(state) as ledger:
            return load(Archive(archive), target, selection or Selection(), ledger, _quiet, workers=2)
    finally:
        target.close()


def _validate(archive: Path, uri: str, prefix: str, state: Path):
    target = MlflowTarget(uri, experiment_prefix=prefix)
    try:
        with Ledger(state) as ledger:
            return validate(Archive(archive), target, Selection(), ledger, _quiet, workers=2)
    finally:
        target.close()


def _steps(client: MlflowClient, prefix: str) -> dict[str, dict[float, int]]:
    """{run id: {Neptune step: MLflow step}} of `val/loss`, from the values (1 / (1 + step))."""
    exp = client.get_experiment_by_name(prefix + PROJECT)
    out = {}
    for run in client.search_runs([exp.experiment_id], max_results=100):
        history = client.get_metric_history(run.info.run_id, "val/loss")
        out[run.data.tags["neptune.run_id"]] = {round(1 / m.value - 1, 6): m.step for m in history}
    return out


def test_runs_of_one_experiment_share_each_metric_step_scale(tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = _archive(tmp_path / "archive", list(STEPS))
    summary = _load(archive, mlflow_server.uri, prefix, tmp_path / "state.db")
    assert summary.count("loaded") == 3 and not summary.failed
    client = MlflowClient(mlflow_server.uri)
    steps = _steps(client, prefix)
    # The same Neptune step is the same MLflow step in every run: 0.5 is 50 in the half- and quarter-epoch runs.
    assert steps["HALF"][0.5] == steps["QUARTER"][0.5] == 50
    assert steps["HALF"][1.0] == steps["QUARTER"][1.0] == steps["WHOLE"][1.0] == 100
    assert steps["QUARTER"][0.25] == 25
    exp = client.get_experiment_by_name(prefix + PROJECT)
    assert exp.tags["neptune.step_scale"] == '{"val/loss": 100}'
    for run in client.search_runs([exp.experiment_id]):
        assert run.data.tags["neptune.step_scale"] == '{"val/loss": 100}'
        # Integer series stay unscaled.
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/batches")) == list(
            range(len(STEPS[run.data.tags["neptune.run_id"]])))
    checked = _validate(archive, mlflow_server.uri, prefix, tmp_path / "state.db")
    assert checked.ok, [m.detail for c in checked.checks for m in c.mismatches]


def test_a_later_load_that_needs_a_finer_scale_reloads_the_earlier_runs(
        tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = _archive(tmp_path / "archive", list(STEPS))
    state = tmp_path / "state.db"
    first = _load(archive, mlflow_server.uri, prefix, state, Selection(runs=re.compile("^(HALF|WHOLE)$")))
    assert first.count("loaded") == 2
    client = MlflowClient(mlflow_server.uri)
    assert _steps(client, prefix)["HALF"][0.5] == 5  # alone, the half-epoch runs need only x10
    old_ids = {r.data.tags["neptune.run_id"]: r.info.run_id for r in client.search_runs(
        [client.get_experiment_by_name(prefix + PROJECT).experiment_id])}

    second = _load(archive, mlflow_server.uri, prefix, state)
    assert not second.failed
    statuses = {o.key.rsplit("/", 1)[1]: o.status for o in second.outcomes}
    # QUARTER raised the scale to x100, so the two runs loaded at x10 were loaded again at x100.
    assert statuses == {"HALF": "loaded", "QUARTER": "loaded", "WHOLE": "loaded"}
    steps = _steps(client, prefix)
    assert steps["HALF"][0.5] == steps["QUARTER"][0.5] == 50 and steps["WHOLE"][3.0] == 300
    runs = client.search_runs([client.get_experiment_by_name(prefix + PROJECT).experiment_id])
    assert len(runs) == 3, "exactly one MLflow run per Neptune run after the reload"
    assert {r.data.tags["neptune.run_id"] for r in runs if r.info.run_id in old_ids.values()} == set()
    checked = _validate(archive, mlflow_server.uri, prefix, state)
    assert checked.ok, [m.detail for c in checked.checks for m in c.mismatches]


def test_a_run_left_at_an_older_scale_fails_validation_and_retry_mends_it(
        tmp_path: Path, mlflow_server, prefix: str) -> None:
    # Two archives into one experiment: the second raises the scale of a run the first archive holds.
    first = _archive(tmp_path / "first", ["HALF"])
    second = _archive(tmp_path / "second", ["QUARTER"])
    state = tmp_path / "state.db"
    assert _load(first, mlflow_server.uri, prefix, state).count("loaded") == 1
    later = _load(second, mlflow_server.uri, prefix, state)
    assert later.count("loaded") == 1
    assert any("HALF" in w and "older experiment step scale" in w for w in later.warnings)

    checked = _validate(first, mlflow_server.uri, prefix, state)
    assert not checked.ok
    messages = [m.detail for c in checked.checks for m in c.mismatches]
    assert any("step_scale" in m and "retry" in m for m in messages), messages
    # One mismatch says what is wrong; the points are compared at the scale the run was logged at.
    assert len(messages) == 1, messages

    target = MlflowTarget(mlflow_server.uri, experiment_prefix=prefix)
    try:
        with Ledger(state) as ledger:
            repaired = retry(Archive(first), target, Selection(), ledger, _quiet, workers=2)
    finally:
        target.close()
    assert repaired.validation.ok
    client = MlflowClient(mlflow_server.uri)
    assert _steps(client, prefix)["HALF"][0.5] == _steps(client, prefix)["QUARTER"][0.5] == 50
    assert _validate(first, mlflow_server.uri, prefix, state).ok
    assert _validate(second, mlflow_server.uri, prefix, state).ok
