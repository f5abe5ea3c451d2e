"""A loader killed with SIGKILL in the middle of a run's metrics resumes into exactly one complete run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mlflow.tracking import MlflowClient

from neptune_migration.archive import ArchiveWriter
from neptune_migration.vocabulary import RunRef

from .conftest import VENV_BIN, run_cli

SERIES = 3
POINTS = 15_000


def _big_archive(root: Path) -> Path:
    writer = ArchiveWriter(root)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for run_id in ("BIG-1", "BIG-2"):
        with writer.run(RunRef("ws/resume", run_id)) as w:
            w.add_atom("sys/creation_time", "datetime", t0)
            w.add_atom("params/lr", "float", 0.1)
            for s in range(SERIES):
                w.add_series(f"train/m{s}", "float_series", [i * 0.5 for i in range(POINTS)],
                             [t0 + timedelta(milliseconds=i) for i in range(POINTS)],
                             [float(i * (s + 1)) for i in range(POINTS)])
            w.add_file("model/ckpt", "file", os.urandom(200_000), "ckpt.bin")
    return root


def _batches_done(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            rows = db.execute("SELECT checkpoint FROM progress WHERE stage='load'").fetchall()
    except sqlite3.Error:
        return 0
    return max((json.loads(c).get("metric_batches_done", 0) for (c,) in rows if c), default=0)


def test_sigkill_mid_metrics_then_rerun_gives_one_complete_run(tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = _big_archive(tmp_path / "archive")
    state = tmp_path / "state.db"
    args = ["load", "--archive", str(archive), "--mlflow-tracking-uri", mlflow_server.uri,
            "--experiment-prefix", prefix, "--state", str(state), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while _batches_done(state) < 10 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the loader finished before it could be killed; make the archive bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _batches_done(state)
    assert 0 < killed_at < SERIES * POINTS // 1000

    client = MlflowClient(mlflow_server.uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    partial = client.search_runs(exps)
    assert len(partial) == 1 and partial[0].data.tags["neptune.migration.state"] == "loading"

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr + result.stdout

    runs = client.search_runs(exps, max_results=100)
    keys = sorted(r.data.tags["neptune.run_key"] for r in runs)
    assert keys == ["ws/resume/BIG-1", "ws/resume/BIG-2"], "exactly one MLflow run per Neptune run"
    for run in runs:
        assert run.data.tags["neptune.migration.state"] == "complete"
        assert run.data.params == {"params/lr": "0.1"}
        for s in range(SERIES):
            history = client.get_metric_history(run.info.run_id, f"train/m{s}")
            steps = [m.step for m in history]
            assert len(history) == POINTS, "every point exactly once"
            assert sorted(steps) == [5 * i for i in range(POINTS)], "steps 0, 0.5, 1... scaled by 10, none merged"
    assert json.loads(runs[0].data.tags["neptune.step_scale"]) == {f"train/m{s}": 10 for s in range(SERIES)}
