"""`status` while another process holds the ledger: a real load (and a real `migrate --sync --every` loop) keeps
its SQLite ledger locked, and `status` still answers at once, read-only, with the totals, within 80 columns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from neptune_migration.sandbox import Sandbox

from .conftest import VENV_BIN, run_cli
from .sync.sync_helpers import growing_project
from .test_interrupt import RUNS, _archive, _count, _popen

NARROW = {"COLUMNS": "80"}


def _status(state: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = run_cli("status", "--state", str(state), *extra, env=NARROW, timeout=60)
    return result, time.monotonic() - started


def _assert_narrow(text: str) -> None:
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long


def test_status_answers_while_a_load_holds_the_ledger(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    archive = _archive(tmp_path / "archive")
    state = tmp_path / "state.db"
    proc = _popen(["load", "--archive", str(archive), "--mlflow-tracking-uri", mlflow_server.uri,
                   "--experiment-prefix", prefix, "--state", str(state), "--workers", "2", "--no-progress"])
    try:
        deadline = time.monotonic() + 120
        while _count(state, "load") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the load finished before status was asked; make the work bigger"

        # What starting the command costs on this (busy) machine, so the bound below measures only waiting.
        _, startup = _status(state, "--help")
        shown, seconds = _status(state)
        as_json, json_seconds = _status(state, "--json")
        assert proc.poll() is None, "the load must still hold the ledger while status answers"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)

    assert shown.returncode == 0, shown.stdout + shown.stderr
    # The writer's lock is never waited for (the old refusal came after 5 s of waiting).
    assert max(seconds, json_seconds) < startup + 3, (startup, seconds, json_seconds)
    assert "In use by a running neptune-migrate" in shown.stdout, shown.stdout
    totals_header = next(line for line in shown.stdout.splitlines() if line.startswith("stage"))
    assert totals_header.split()[:5] == ["stage", "done", "running", "failed", "interrupted"], totals_header
    load_totals = next(line for line in shown.stdout.splitlines() if line.startswith("load "))
    assert int(load_totals.split()[1]) >= 2, shown.stdout
    run_lines = [line for line in shown.stdout.splitlines() if line.startswith("ws/stop/STOP-")]
    assert 2 <= len(run_lines) <= RUNS, shown.stdout  # one line per run started so far
    _assert_narrow(shown.stdout)

    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["in_use"] is True
    assert data["totals"]["load"]["done"] >= 2
    assert data["totals"]["load"]["done"] == sum(1 for e in data["entries"] if e["stage"] == "load"
                                                 and e["status"] == "done")

    # Once the load has stopped (Ctrl-C), nothing holds the ledger, and `status` says so.
    after, _ = _status(state, "--json")
    assert json.loads(after.stdout)["in_use"] is False


def test_status_answers_during_a_sync_loop(tmp_path: Path) -> None:
    """docs/sync.md: keep `migrate --sync --every 15m` running and watch it with `status`."""
    state = tmp_path / "state.db"
    args = ["migrate", "--from", "neptune3", "-p", "sync/live", "--archive", str(tmp_path / "archive"), "--state",
            str(state), "--report-dir", str(tmp_path / "report"), "--no-progress", "--sync", "--every", "1h",
            "--to", "wandb-offline", "--wandb-dir", str(tmp_path / "wandb-root")]
    with Sandbox([growing_project("live")]) as sandbox:
        proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=dict(os.environ, **sandbox.env()),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line or "next sync in 1h" in line:
                    break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            _, startup = _status(state, "--help")
            shown, seconds = _status(state)
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.communicate(timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert seconds < startup + 3, (startup, seconds)
    lines = shown.stdout.splitlines()
    for stage in ("export", "load", "validate"):
        row = next(line for line in lines if line.startswith(stage + " "))
        assert row.split()[1:3] == ["3", "0"], shown.stdout  # 3 done, 0 running: the loop is between rounds
    _assert_narrow(shown.stdout)
