"""A live Neptune run whose param keeps changing (`best/val_loss` set every epoch), synced into a real MLflow server
from the sandbox: the MLflow run is kept while the Neptune run is live (same run id, only new points sent, the
current value in the tag neptune.live/<key>), and replaced once after it has finished. Each sync's report covers
every selected run, including those this pass left alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from neptune_migration.archive import Archive
from neptune_migration.sandbox import Sandbox
from neptune_migration.vocabulary import RunRef, folder_name

from .sync_helpers import POINTS, growing_project, ledger_rows, migrate

PROJECT = "sync/live"
PARAM, TAG = "params/best_val_loss", "neptune.live/params/best_val_loss"


@pytest.fixture(scope="module")
def sandbox() -> Any:
    project = growing_project("live", runs=2)
    live = project.runs[0]
    live.set("sys/state", "active")
    live.set(PARAM, 0.5)
    with Sandbox([project]) as sb:
        yield sb


def _mlflow_run(client: MlflowClient, prefix: str, run: str) -> Any:
    exps = [e.experiment_id for e in client.search_experiments() if e.name == prefix + PROJECT]
    found = [r for r in client.search_runs(exps) if r.data.tags["neptune.run_id"] == run]
    assert len(found) == 1, [r.info.run_id for r in found]
    return found[0]


def _report(tmp: Path) -> dict[str, Any]:
    return json.loads((tmp / "report" / "report.json").read_text())


def _archive_rows(tmp: Path, path: str) -> list[Any]:
    folder = tmp / "archive" / "data" / folder_name(PROJECT)
    rows = []
    for part in sorted(folder.glob(f"{folder_name('run-1')}_part_*.parquet")):
        rows += [r["float_value"] for r in pq.read_table(part).to_pylist() if r["attribute_path"] == path]
    return rows


def _sync(sandbox: Sandbox, tmp: Path, target: list[str]) -> str:
    done = migrate(sandbox, "neptune3", PROJECT, tmp, *target, "--sync")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_live_run_kept_while_its_param_changes_then_replaced_once(sandbox: Sandbox, tmp_path: Path,
                                                                   mlflow_server: Any, prefix: str) -> None:
    target = ["--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix]
    # Migrated without its read-back: the first sync's report reads back the run it leaves alone.
    first = migrate(sandbox, "neptune3", PROJECT, tmp_path, *target, "--no-validate")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    run_id = _mlflow_run(client, prefix, "run-1").info.run_id
    ch = sandbox.changes

    # Two syncs while the run trains: the best value changes each time, and new points arrive.
    sent = []
    for epoch, (best, grown) in enumerate([(0.4, 10), (0.3, 7)]):
        start = POINTS + sum(n for _, n in [(0.4, 10), (0.3, 7)][:epoch])
        ch.append(PROJECT, "run-1", "train/loss", [(start + i, 0.1 / (i + 1)) for i in range(grown)])
        ch.set(PROJECT, "run-1", PARAM, best)
        out = _sync(sandbox, tmp_path, target)
        assert f"replaced {PROJECT}/run-1" not in out, out
        now = _mlflow_run(client, prefix, "run-1")
        assert now.info.run_id == run_id, "the live run is kept: its links hold"
        assert now.data.params[PARAM] == "0.5", "MLflow params cannot change"
        assert now.data.tags[TAG] == str(best), "the current value, where MLflow lets a value change"
        sent.append(ledger_rows(tmp_path / "state.db", "sync")["run-1"]["details"]["points"])
        assert _archive_rows(tmp_path, PARAM) == [best], "one value per atom in every part together"
        report = _report(tmp_path)
        assert report["ok"], report["mismatches"]
        assert report["approximations"].get("live_param") == 1
        live = next(d for d in report["approximation_details"] if d["kind"] == "live_param")
        assert [r["run_id"] for r in live["runs"]] == ["run-1"]
        assert report["this_pass"]["waiting_for_end"] == [f"{PROJECT}/run-1"]
        by_run = {r["run_id"]: r for r in report["runs"]}
        assert report["totals"]["runs_selected"] == 2, "the run this pass left alone is in the report too"
        assert by_run["run-2"]["this_pass"]["action"] == "unchanged"
        assert by_run["run-2"]["status"] == "validated"
        assert (by_run["run-2"]["this_pass"]["validated"] == "now") == (epoch == 0), by_run["run-2"]["this_pass"]
        assert by_run["run-1"]["this_pass"]["action"] == "synced"
    assert sent == [10, 7], "only the new points were sent, none twice"
    history = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert history == list(range(POINTS + 17)), "every point exactly once"

    # The run ends: the next sync replaces it once, with the final value as the param.
    ch.set(PROJECT, "run-1", PARAM, 0.25)
    ch.finish(PROJECT, "run-1")
    out = _sync(sandbox, tmp_path, target)
    assert f"replaced {PROJECT}/run-1" in out, out
    final = _mlflow_run(client, prefix, "run-1")
    assert final.info.run_id != run_id
    assert final.data.params[PARAM] == "0.25" and TAG not in final.data.tags
    assert sorted(m.step for m in client.get_metric_history(final.info.run_id, "train/loss")) == \
        list(range(POINTS + 17))
    report = _report(tmp_path)
    assert report["ok"] and not report["this_pass"]["waiting_for_end"] and "live_param" not in report["approximations"]

    # Nothing new: the report still proves the whole selection (not `runs_selected: 0`), and nothing is replaced.
    out = _sync(sandbox, tmp_path, target)
    assert f"replaced {PROJECT}" not in out and "runs unchanged (sync)" in out, out
    assert _mlflow_run(client, prefix, "run-1").info.run_id == final.info.run_id, "replaced once"
    report = _report(tmp_path)
    assert report["ok"] and report["totals"]["runs_selected"] == 2 and report["totals"]["runs_validated"] == 2
    assert report["this_pass"]["runs"] == {"unchanged": 2} and report["this_pass"]["validated_earlier"] == 2
    assert report["totals"]["points"] > 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "This sync: 2 unchanged" in md, md[:2000]
    run = Archive(tmp_path / "archive").run(RunRef(PROJECT, "run-1"))
    assert run is not None and not run.live and run.atom_value(PARAM) == 0.25
