"""A sync killed with SIGKILL while it appends, then run again: the same MLflow run holds every point once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from neptune_migration.sandbox import Point, Sandbox

from ..conftest import VENV_BIN
from .sync_helpers import POINTS, growing_project, migrate

PROJECT = "sync/kill"
GROWTH = 40_000


def _sync_batches(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            rows = db.execute("SELECT checkpoint FROM progress WHERE stage='sync'").fetchall()
    except sqlite3.Error:
        return 0
    return max((json.loads(c).get("metric_batches_done", 0) for (c,) in rows if c), default=0)


def test_sigkill_during_sync_then_rerun_is_exact(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    with Sandbox([growing_project("kill", runs=2)]) as sb:
        target = ["--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix]
        first = migrate(sb, "neptune3", PROJECT, tmp_path, *target)
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
        client = MlflowClient(mlflow_server.uri)
        exps = [e.experiment_id for e in client.search_experiments() if e.name == prefix + PROJECT]
        run_id = {r.data.tags["neptune.run_id"]: r.info.run_id for r in client.search_runs(exps)}["run-1"]

        stamp = 1_800_000_000_000
        sb.changes.append(PROJECT, "run-1", "train/loss",
                          [Point(float(POINTS + i), i * 1e-3, stamp + i) for i in range(GROWTH)])
        args = ["migrate", "--from", "neptune3", "-p", PROJECT, "--archive", str(tmp_path / "archive"), "--state",
                str(tmp_path / "state.db"), "--report-dir", str(tmp_path / "report"), "--no-progress",
                "--workers", "1", "--sync", *target]
        env = dict(os.environ, **sb.env(), NEPTUNE_MIGRATION_RETRIES="2")
        proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 180
        while _sync_batches(tmp_path / "state.db") < 5 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the sync finished before it could be killed; make the growth bigger"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = _sync_batches(tmp_path / "state.db")
        assert 0 < killed_at < GROWTH // 1000

        again = migrate(sb, "neptune3", PROJECT, tmp_path, *target, "--sync")
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert "finished an interrupted sync" in again.stdout, again.stdout

        runs = {r.data.tags["neptune.run_id"]: r.info.run_id for r in client.search_runs(exps)}
        assert runs["run-1"] == run_id, "the same MLflow run"
        history = client.get_metric_history(run_id, "train/loss")
        steps = sorted(m.step for m in history)
        assert steps == list(range(POINTS + GROWTH)), "every point exactly once"
        # The archive holds the growth once: one appended part, and no leftover temporary part.
        data = tmp_path / "archive" / "data"
        parts = sorted(p.name for p in data.rglob("*run-1*"))
        assert not [p for p in parts if p.endswith(".tmp")], parts
