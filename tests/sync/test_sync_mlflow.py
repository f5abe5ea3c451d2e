"""`migrate --sync` into a real MLflow server, from the sandbox through the real neptune-query and neptune 1.x
clients: the project changes while it is served, and the sync appends exactly what changed to the same runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from neptune_migration.sandbox import Sandbox

from ..conftest import run_cli
from .sync_helpers import POINTS, growing_project, ledger_rows, migrate

P3, P2 = "sync/three", "sync/two"


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with Sandbox([growing_project("three"), growing_project("two")]) as sb:
        yield sb


def _runs(client: MlflowClient, prefix: str, project: str) -> dict[str, Any]:
    exps = [e.experiment_id for e in client.search_experiments() if e.name == prefix + project]
    return {r.data.tags["neptune.run_id"]: r for r in client.search_runs(exps)}


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.parametrize("source,project,ids", [
    ("neptune3", P3, ("run-1", "run-2", "run-3")),
    ("neptune2", P2, ("TWO-1", "TWO-2", "TWO-3")),
])
def test_sync_appends_to_the_same_mlflow_runs(sandbox: Sandbox, tmp_path: Path, mlflow_server: Any, prefix: str,
                                               source: str, project: str, ids: tuple[str, str, str]) -> None:
    target = ["--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix]
    first = migrate(sandbox, source, project, tmp_path, *target)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    before = {k: r.info.run_id for k, r in _runs(client, prefix, project).items()}
    assert sorted(before) == sorted(ids)

    grown, touched, rewritten = ids
    ch = sandbox.changes
    ch.append(project, grown, "train/loss", [(POINTS + i, 0.5 - i / 100) for i in range(20)])
    ch.append(project, grown, "logs/stdout", [(POINTS + 5, "a new line")], "string_series")
    ch.set(project, touched, "params/momentum", 0.9)
    ch.set(project, touched, "sys/description", "described later")
    ch.add_file(project, touched, "model/weights", b"better weights", "weights.bin")
    ch.rewrite(project, rewritten, "train/acc", [(0, 0.25), (1, 0.5)])
    added = ch.add_run(project, "run-new" if source == "neptune3" else "ignored", experiment_name="exp-new")
    added.log("train/loss", "float_series", 0, 1.0, added.creation_time)

    searched = len(sandbox.request_log)
    second = migrate(sandbox, source, project, tmp_path, *target, "--sync")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = second.stdout
    assert f"synced {project}/{grown}: +21 points" in out, out
    assert f"replaced {project}/{rewritten}" in out, out

    after = _runs(client, prefix, project)
    assert after[grown].info.run_id == before[grown], "appended to the same MLflow run"
    assert after[touched].info.run_id == before[touched]
    assert after[rewritten].info.run_id != before[rewritten], "a rewritten history is replaced"
    assert len(after) == 4, "the new run was migrated"

    loss = _history(client, before[grown], "train/loss")
    assert [s for s, _ in loss] == list(range(POINTS + 20)), "every point exactly once"
    assert loss[-1] == (POINTS + 19, 0.5 - 19 / 100)
    # The other runs log train/acc at half steps, so the experiment draws it at x10: Neptune step 1 is MLflow step 10.
    exp = client.get_experiment(after[rewritten].info.experiment_id)
    assert json.loads(exp.tags["neptune.step_scale"])["train/acc"] == 10
    assert _history(client, after[rewritten].info.run_id, "train/acc") == [(0, 0.25), (10, 0.5)]
    assert after[touched].data.params["params/momentum"] == "0.9"
    assert after[touched].data.tags["mlflow.note.content"] == "described later"
    # `model/weights` holding `weights.bin` lands at `model/weights.bin` (docs/mlflow.md, files).
    weights = [a.path for a in client.list_artifacts(before[touched], "model") if a.path == "model/weights.bin"]
    assert weights, [a.path for a in client.list_artifacts(before[touched], "model")]
    local = Path(client.download_artifacts(before[touched], weights[0], str(tmp_path / "dl")))
    assert local.read_bytes() == b"better weights"

    # Only the new points were sent: the ledger counts what the target acknowledged per sync.
    synced = ledger_rows(tmp_path / "state.db", "sync")
    assert synced[grown]["details"]["points"] == 20, synced[grown]
    assert synced[touched]["details"]["points"] == 0
    assert "validation" not in out.lower() or "differ" not in out.lower()

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    by_run = {r["run_id"]: r for r in report["runs"]}
    assert by_run[grown]["sync"]["series"] == {"train/loss": 20, "logs/stdout": 1}
    assert "params/momentum" in by_run[touched]["sync"]["atoms"]
    assert by_run[rewritten]["sync"]["replaced"]
    assert report["ok"]

    # Nothing changed since: a third sync reads nothing beyond the listing.
    mark = len(sandbox.request_log)
    third = migrate(sandbox, source, project, tmp_path, *target, "--sync")
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "runs unchanged (sync)" in third.stdout
    # The proof stays whole: the report still covers every selected run, as validated by the passes before.
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["ok"] and report["totals"]["runs_selected"] == 4 and report["totals"]["runs_validated"] == 4
    assert report["this_pass"]["runs"] == {"unchanged": 4} and report["this_pass"]["validated_earlier"] == 4
    # grown: train/loss + 20 and train/acc; touched: both; rewritten: train/loss and 2 points of train/acc; new: 1
    assert report["totals"]["points"] == (POINTS + 20 + POINTS) + 2 * POINTS + (POINTS + 2) + 1
    series_reads = [r for r in sandbox.request_log[mark:] if "series" in r.path]
    assert not series_reads, [r.path for r in series_reads][:5]
    assert searched < mark

    status = run_cli("status", "--state", str(tmp_path / "state.db"), env={"COLUMNS": "250"})
    assert status.returncode == 0, status.stderr
    assert "Syncs (migrate --sync)" in status.stdout and "+21 points" in status.stdout, status.stdout
