"""One Ctrl-C stops `load` and `migrate` within seconds, leaves every run done or interrupted (never failed, never
running), and the same command run again finishes the job: every run once, every point once.

Everything is real: the CLI in a subprocess, a real MLflow server, the sandbox's Neptune API, a real SIGINT.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

import neptune_migration as nm
from neptune_migration import interrupt
from neptune_migration.archive import ArchiveWriter
from neptune_migration.ledger import DONE, FAILED, INTERRUPTED, RUNNING, Ledger
from neptune_migration.sandbox import Sandbox, generate_project
from neptune_migration.vocabulary import RunRef

from .conftest import VENV_BIN, run_cli

RUNS = 30
SERIES = 2
POINTS = 2_500  # per series: 5000 points and a few batches a run, so 30 runs take well over 10 s to load


def _archive(root: Path) -> Path:
    writer = ArchiveWriter(root)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for n in range(RUNS):
        with writer.run(RunRef("ws/stop", f"STOP-{n}")) as w:
            w.add_atom("sys/creation_time", "datetime", t0)
            w.add_atom("params/n", "int", n)
            for s in range(SERIES):
                w.add_series(f"train/m{s}", "float_series", [float(i) for i in range(POINTS)],
                             [t0 + timedelta(milliseconds=i) for i in range(POINTS)],
                             [float(i * (s + 1) + n) for i in range(POINTS)])
    return root


def _count(state: Path, stage: str, status: str = DONE) -> int:
    """Rows of one stage and status; 0 while the ledger does not exist yet or is locked for a moment."""
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM progress WHERE stage=? AND status=?", (stage, status)).fetchone()[0]
    except sqlite3.Error:
        return 0


def _interrupt_when(proc: subprocess.Popen[str], ready: Any, what: str) -> tuple[int, str, str, float]:
    deadline = time.monotonic() + 120
    while not ready() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"the command finished before {what}; make the work bigger"
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)  # one Ctrl-C, to the command only
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running 10 s after one SIGINT:\n{err[-3000:]}") from None
    return proc.returncode, out, err, time.monotonic() - sent


def _assert_settled(state: Path) -> dict[str, int]:
    with Ledger(state) as ledger:
        entries = list(ledger.entries())
    statuses: dict[str, int] = {}
    for e in entries:
        statuses[e.status] = statuses.get(e.status, 0) + 1
    assert not [e for e in entries if e.status in (FAILED, RUNNING)], [
        (e.ref.key, e.stage, e.status, e.last_error) for e in entries if e.status in (FAILED, RUNNING)]
    return statuses


def _popen(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("NEPTUNE_MIGRATION_RETRIES", "2")
    return subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full_env, start_new_session=True)


def test_one_ctrl_c_stops_load_and_the_rerun_completes(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    archive = _archive(tmp_path / "archive")
    state = tmp_path / "state.db"
    target = ["--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix, "--state", str(state)]
    args = ["load", "--archive", str(archive), *target, "--workers", "2", "--no-progress"]

    proc = _popen(args)
    code, out, err, seconds = _interrupt_when(proc, lambda: _count(state, "load") >= 3, "three runs loaded")
    assert code == 130, out + err
    assert "interrupted:" in err and "rerun the same command to continue" in err, err
    assert "cannot schedule new futures" not in err and "closed database" not in err, err
    statuses = _assert_settled(state)
    done = statuses.get(DONE, 0)
    assert 3 <= done < RUNS, statuses
    assert f"interrupted: {done} runs done, {RUNS - done} interrupted" in err, err
    assert seconds < 10

    status = run_cli("status", "--state", str(state))
    assert status.returncode == 0, status.stderr
    if statuses.get(INTERRUPTED):
        assert "interrupted" in status.stdout

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr + again.stdout
    checked = run_cli("validate", "--archive", str(archive), *target, "--no-progress",
                      "--report-dir", str(tmp_path / "report"))
    assert checked.returncode == 0, checked.stderr + checked.stdout

    client = MlflowClient(mlflow_server.uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    runs = client.search_runs(exps, max_results=1000)
    assert sorted(r.data.tags["neptune.run_key"] for r in runs) == sorted(f"ws/stop/STOP-{n}" for n in range(RUNS))
    assert all(r.data.tags["neptune.migration.state"] == "complete" for r in runs)
    _assert_settled(state)


def test_the_api_raises_interrupted_with_the_counts(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    """What a notebook user sees: `Interrupted` (exit code 130) with the counts, and a ledger with nothing running."""
    archive = _archive(tmp_path / "archive")
    state = tmp_path / "state.db"

    def stop_after_two() -> None:
        deadline = time.monotonic() + 120
        while _count(state, "load") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        interrupt.request_stop()  # what the first Ctrl-C does

    stopper = threading.Thread(target=stop_after_two)
    stopper.start()
    with pytest.raises(nm.Interrupted) as caught:
        nm.load(archive, to="mlflow", mlflow_tracking_uri=mlflow_server.uri, experiment_prefix=prefix,
                state=state, workers=2)
    stopper.join()
    exc = caught.value
    assert exc.exit_code == 130 and exc.stage == "load"
    assert exc.done >= 2 and exc.done + exc.interrupted == RUNS and exc.failed == 0
    assert _assert_settled(state).get(DONE) == exc.done


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    archive = _archive(tmp_path / "archive")
    state = tmp_path / "state.db"
    args = ["load", "--archive", str(archive), "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix",
            prefix, "--state", str(state), "--workers", "2", "--no-progress"]
    # A long grace period: only the second signal can end the command quickly.
    proc = _popen(args, {"NEPTUNE_MIGRATION_STOP_GRACE": "120"})
    deadline = time.monotonic() + 120
    while _count(state, "load", RUNNING) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, err
    assert time.monotonic() - sent < 3
    assert "interrupted" in err, err
    assert _count(state, "load", FAILED) == 0


def test_one_ctrl_c_stops_migrate_and_the_rerun_completes(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    project = generate_project("stop", runs=12, series=2, points=1000, files=1, nasty=False)
    with Sandbox([project]) as sb:
        sb.faults.add(r"/attributes/series/float", "slow", delay=0.2)  # exports long enough to be stopped
        env = sb.env()
        state = tmp_path / "state.db"
        args = ["migrate", "--from", "neptune3", "-p", "sandbox/stop", "--to", "mlflow", "--mlflow-tracking-uri",
                mlflow_server.uri, "--experiment-prefix", prefix, "--archive", str(tmp_path / "a"),
                "--state", str(state), "--report-dir", str(tmp_path / "report"), "--workers", "2", "--no-progress"]
        proc = _popen(args, env)
        code, out, err, _ = _interrupt_when(proc, lambda: _count(state, "export") >= 2, "two runs exported")
        assert code == 130, out + err
        assert "interrupted:" in err, err
        _assert_settled(state)

        again = run_cli(*args, env=env)
        assert again.returncode == 0, again.stderr + again.stdout
        assert _count(state, "validate") == 12
        client = MlflowClient(mlflow_server.uri)
        exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
        assert len(client.search_runs(exps, max_results=1000)) == 12
