"""Faults on both sides of a migration: each either completes after retries, or stops with a clear one-line message
and a ledger that a rerun completes. Afterwards the target always equals a clean migration and validates."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.sandbox import Sandbox, generate_project
from neptune_migration.sandbox import auth as sandbox_auth

from ..conftest import VENV_BIN, MlflowServer, run_cli
from .conftest import ledger_rows, mlflow_snapshot, read_report

PROJECT = "sandbox/faults"
RUNS = 3


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    project = generate_project("faults", runs=RUNS, series=2, points=1200, files=2, seed=3, nasty=False)
    with Sandbox([project]) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _no_faults_left(sandbox: Sandbox) -> Iterator[None]:
    sandbox.faults.clear()
    yield
    sandbox.faults.clear()


@pytest.fixture(scope="module")
def clean(sandbox: Sandbox, mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The target after a migration without faults: what every faulty migration must end up equal to."""
    work = tmp_path_factory.mktemp("clean")
    prefix = f"clean{os.getpid()}-"
    result = run_cli(*_args(mlflow_server.uri, work, prefix), env=sandbox.env())
    assert result.returncode == 0, result.stdout + result.stderr
    snapshot = mlflow_snapshot(mlflow_server.uri, prefix)
    assert len(snapshot) == RUNS
    return snapshot


def _args(uri: str, work: Path, prefix: str, *extra: str) -> list[str]:
    return ["migrate", "--from", "neptune3", "-p", PROJECT, "--to", "mlflow", "--mlflow-tracking-uri", uri,
            "--experiment-prefix", prefix, "--archive", str(work / "archive"), "--state", str(work / "state.db"),
            "--report-dir", str(work / "report"), "--workers", "2", "--no-progress", *extra]


def _assert_equal_to_clean(uri: str, work: Path, prefix: str, clean: dict[str, Any]) -> None:
    report = read_report(work / "report")
    assert report["ok"] and report["totals"]["mismatches"] == 0 and report["totals"]["runs_validated"] == RUNS
    got = mlflow_snapshot(uri, prefix)
    assert sorted(got) == sorted(clean)
    for key, expected in clean.items():
        for part in ("params", "tags", "metrics", "artifacts", "status", "start", "end"):
            assert got[key][part] == expected[part], (key, part)


def _assert_one_line_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout


FAULTS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    "429-retry-after": [(r"/entries/search", "429", {"times": 2, "retry_after": 1}),
                        (r"/attributes/query", "429", {"every": 2, "times": 3, "retry_after": 0.5})],
    "5xx-bursts": [(r"/attributes/series/float", "500", {"times": 3}),
                   (r"/attributes/(definitions/query|query)", "503", {"every": 2, "times": 4, "retry_after": None})],
    "slow": [(r"/attributes/", "slow", {"every": 2, "times": 4, "delay": 1.5})],
    "dropped-connections": [(r"/attributes/series/float", "drop", {"times": 2}),
                            (r"(/sandbox/blob/|/storagebridge/)", "drop", {"times": 2})],
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_sandbox_faults_are_retried_to_completion(sandbox: Sandbox, mlflow_server: Any, clean: dict[str, Any],
                                                  tmp_path: Path, prefix: str, case: str) -> None:
    faults = [sandbox.faults.add(route, kind, **options) for route, kind, options in FAULTS[case]]
    result = run_cli(*_args(mlflow_server.uri, tmp_path, prefix), env=dict(sandbox.env(),
                                                                              NEPTUNE_MIGRATION_RETRIES="6"))
    for fault, (_route, _kind, options) in zip(faults, FAULTS[case], strict=True):
        assert fault.served == options["times"], f"{fault} was not injected as often as planned"
    assert result.returncode == 0, result.stdout + result.stderr
    _assert_equal_to_clean(mlflow_server.uri, tmp_path, prefix, clean)


def _wait_for(predicate: Any, seconds: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_token_revoked_mid_run_stops_cleanly_and_resumes(sandbox: Sandbox, mlflow_server: Any,
                                                         clean: dict[str, Any], tmp_path: Path, prefix: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.faults.add(r"/attributes/series/float", "slow", delay=0.5)  # time to revoke while runs are exported
    args = _args(mlflow_server.uri, tmp_path, prefix, "--workers", "1")
    proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=dict(os.environ, **sandbox.env(),
                            NEPTUNE_MIGRATION_RETRIES="2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        exported = _wait_for(lambda: any(stage == "export" and status == "done"
                                         for _r, stage, status, _c in ledger_rows(tmp_path / "state.db")), 90, proc)
        assert exported, "no run was exported before the token could be revoked"
        # Revoked: the key no longer exchanges, and tokens issued before no longer verify.
        assert sandbox.auth is not None
        monkeypatch.setattr(sandbox.auth, "api_token", "revoked")
        monkeypatch.setattr(sandbox_auth, "_SECRET", b"rotated")
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, "a migration that lost its token must not report success"
    assert "Traceback" not in out + err
    assert "401" in err or "rejected" in err or "token" in err.lower(), err[-2000:]
    assert sandbox.api_token not in out + err
    rows = ledger_rows(tmp_path / "state.db")
    assert any(stage == "export" and status == "failed" for _r, stage, status, _c in rows), rows

    monkeypatch.undo()
    sandbox.faults.clear()
    again = run_cli(*args, env=sandbox.env())
    assert again.returncode == 0, again.stdout + again.stderr
    _assert_equal_to_clean(mlflow_server.uri, tmp_path, prefix, clean)


@pytest.fixture
def own_mlflow(tmp_path: Path) -> Iterator[MlflowServer]:
    """A server of this test's own: it is stopped and restarted, which would disturb the session's one."""
    server = MlflowServer(tmp_path / "own-mlflow")
    server.start()
    yield server
    server.stop()


def test_mlflow_server_restarted_mid_load(sandbox: Sandbox, own_mlflow: MlflowServer, clean: dict[str, Any],
                                          tmp_path: Path, prefix: str) -> None:
    work = tmp_path / "work"
    args = _args(own_mlflow.uri, work, prefix, "--workers", "1")
    proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=dict(os.environ, **sandbox.env(),
                            NEPTUNE_MIGRATION_RETRIES="3"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        loading = _wait_for(lambda: any(stage == "load" and status == "running"
                                        for _r, stage, status, _c in ledger_rows(work / "state.db")), 120, proc)
        assert loading, "the load never started"
        own_mlflow.stop()
        time.sleep(3)
        own_mlflow.start()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in out + err
    if proc.returncode != 0:
        # Retries ran out while the server was away: failed runs are in the ledger, and a rerun finishes them.
        rows = ledger_rows(work / "state.db")
        assert any(status == "failed" for _r, _s, status, _c in rows), (rows, err[-2000:])
        again = run_cli(*args, env=sandbox.env())
        assert again.returncode == 0, again.stdout + again.stderr
    _assert_equal_to_clean(own_mlflow.uri, work, prefix, clean)
