"""A small project that keeps changing, and helpers to migrate it with the real CLI."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

from neptune_migration.sandbox import FileValue, Histogram, Project

from ..conftest import run_cli

T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
POINTS = 50


def growing_project(name: str, runs: int = 3) -> Project:
    project = Project("sync", name)
    for n in range(1, runs + 1):
        run = project.new_run(f"run-{n}", experiment_name=f"exp-{n}", creation_time=T0 + dt.timedelta(minutes=n),
                              tags=["a", "b"], description=f"run {n}")
        run.set("params/lr", 0.01 * n)
        run.set("params/optimizer", "adam")
        for i in range(POINTS):
            stamp = T0 + dt.timedelta(minutes=n, seconds=i)
            run.log("train/loss", "float_series", i, 1.0 / (i + 1) + n, stamp)
            run.log("train/acc", "float_series", i * 0.5, i / POINTS, stamp)
            if i % 10 == 0:
                run.log("logs/stdout", "string_series", i, f"line {i} of run {n}", stamp)
                run.log("hist/w", "histogram_series", i, Histogram("COUNTING", [0.0, 1.0, 2.0], [float(i), 1.0]),
                        stamp)
        run.set("model/weights", FileValue(f"weights of run {n}".encode(), "weights.bin"), "file")
        run.touch()
    return project


def migrate(sandbox: Any, source: str, project: str, tmp: Path, *extra: str) -> Any:
    args = ["migrate", "--from", source, "-p", project, "--archive", str(tmp / "archive"), "--state",
            str(tmp / "state.db"), "--report-dir", str(tmp / "report"), "--no-progress", "--workers", "2", *extra]
    return run_cli(*args, env=sandbox.env() | {"COLUMNS": "250"})


def ledger_rows(state: Path, stage: str) -> dict[str, dict[str, Any]]:
    import json

    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT run_id, status, details FROM progress WHERE stage=?", (stage,)).fetchall()
    return {run_id: {"status": status, "details": json.loads(d) if d else None} for run_id, status, d in rows}
