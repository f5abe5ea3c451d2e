"""Real `mlflow server`s of the versions teams run, each from its own venv (tests/mlflow_venvs.py, cached outside
the repository): load, SIGKILL mid-run, resume, a reload from a fresh ledger and validate, on an archive with NaN,
infinities and fractional steps. Every command exits 0, every point is in MLflow once, no run is left FAILED or
RUNNING and no live claim tag stays. A server below the supported range is refused before anything is written.

Select these with `-m mlflow_versions`. The first run builds the venvs (about a minute each here); later runs reuse
them.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from neptune_migration.archive import ArchiveWriter
from neptune_migration.targets.mlflow.lease import LEASE_TAG, ExperimentLeases
from neptune_migration.vocabulary import RunRef

from .conftest import VENV_BIN, MlflowServer, run_cli
from .mlflow_venvs import mlflow_venv

pytestmark = [pytest.mark.mlflow_versions, pytest.mark.slow]

SERIES = 3
POINTS = 5_000
RUNS = ("V-1", "V-2")
MAX_DOUBLE = 1.7976931348623157e308


def _value(s: int, i: int) -> float:
    if i % 97 == 5:
        return math.nan
    if i % 211 == 7:
        return math.inf if s % 2 else -math.inf
    return float(i * (s + 1)) / 3


def _archive(root: Path) -> Path:
    writer = ArchiveWriter(root)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for run_id in RUNS:
        with writer.run(RunRef("ws/versions", run_id)) as w:
            w.add_atom("sys/creation_time", "datetime", t0)
            w.add_atom("sys/modification_time", "datetime", t0 + timedelta(hours=1))
            w.add_atom("params/lr", "float", 0.1)
            w.add_atom("params/a b/c:d", "string", "colon and space in the name")
            w.add_file("model/ckpt", "file", run_id.encode() * 1000, "ckpt.bin")
            w.add_series("logs/out", "string_series", [0, 1.5], [t0, t0], ["a line", "another"])
            for s in range(SERIES):
                # Fractional steps (0, 0.5, 1, ...) become integers at scale 10.
                w.add_series(f"train/m{s}", "float_series", [i * 0.5 for i in range(POINTS)],
                             [t0 + timedelta(milliseconds=i) for i in range(POINTS)],
                             [_value(s, i) for i in range(POINTS)])
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


@pytest.fixture(scope="module", params=["2.16.2", "3.10.1", "3.18.0"])
def versioned_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[MlflowServer]:
    venv = mlflow_venv(request.param)
    server = MlflowServer(tmp_path_factory.mktemp(f"mlflow-{request.param}"), bin_dir=venv / "bin")
    server.start()
    yield server
    server.stop()


def _expected(s: int) -> list[tuple[int, float | str]]:
    out = []
    for i in range(POINTS):
        v = _value(s, i)
        out.append((5 * i, "nan" if math.isnan(v) else (math.copysign(MAX_DOUBLE, v) if math.isinf(v) else v)))
    return out


def _check_server(client: MlflowClient, prefix: str) -> None:
    exps = [e for e in client.search_experiments() if e.name.startswith(prefix)]
    assert len(exps) == 1
    claim = exps[0].tags.get(LEASE_TAG)
    assert claim is None or json.loads(claim).get("released"), f"a live claim stayed: {claim}"
    runs = client.search_runs([exps[0].experiment_id], max_results=100)
    assert sorted(r.data.tags["neptune.run_id"] for r in runs) == list(RUNS), "one MLflow run per Neptune run"
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("neptune.migration.load_error")
        assert run.data.tags["neptune.migration.state"] == "complete"
        assert run.info.end_time == int(datetime(2024, 1, 1, 1, tzinfo=UTC).timestamp() * 1000)
        for s in range(SERIES):
            history = client.get_metric_history(run.info.run_id, f"train/m{s}")
            got = sorted((m.step, "nan" if math.isnan(m.value) else m.value) for m in history)
            assert got == _expected(s), "every point exactly once, NaN and infinities included"


def test_load_kill_resume_reload_validate(tmp_path: Path, versioned_server: MlflowServer, prefix: str) -> None:
    archive = _archive(tmp_path / "archive")
    state = tmp_path / "state.db"
    common = ["--archive", str(archive), "--mlflow-tracking-uri", versioned_server.uri, "--experiment-prefix", prefix,
              "--no-progress"]
    load = ["load", *common, "--state", str(state), "--workers", "1"]
    proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *load], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while _batches_done(state) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the loader finished before it could be killed; make the archive bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    resumed = run_cli(*load)
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    version = requests.get(versioned_server.uri + "/version", timeout=5).text.strip()
    assert f"MLflow server {version}" in resumed.stdout + resumed.stderr
    client = MlflowClient(versioned_server.uri)
    _check_server(client, prefix)

    # Another ledger (another machine, or a lost state file): every run is found by its key and nothing is resent.
    fresh = run_cli("load", *common, "--state", str(tmp_path / "fresh.db"))
    assert fresh.returncode == 0, fresh.stderr + fresh.stdout
    _check_server(client, prefix)

    report = tmp_path / "report"
    validated = run_cli("validate", *common, "--state", str(state), "--report-dir", str(report))
    assert validated.returncode == 0, validated.stderr + validated.stdout
    data = json.loads((report / "report.json").read_text())
    assert data["target_server"] == f"MLflow server {version}"
    assert all(r["status"] == "validated" for r in data["runs"]) and len(data["runs"]) == len(RUNS)

    # A writer on another host may claim the experiment at once: the claim was removed or marked released.
    exp = next(e for e in client.search_experiments() if e.name.startswith(prefix))
    other = ExperimentLeases(client, lambda call: call())
    other.me["host"] = "another-host"
    other.claim(exp.experiment_id, exp.name)
    other.release()


def test_server_below_the_minimum_is_refused_before_anything_is_written(tmp_path: Path, prefix: str) -> None:
    server = MlflowServer(tmp_path / "server", bin_dir=mlflow_venv("2.9.2") / "bin")
    server.start()
    try:
        archive = _archive(tmp_path / "archive")
        result = run_cli("load", "--archive", str(archive), "--mlflow-tracking-uri", server.uri,
                         "--experiment-prefix", prefix, "--state", str(tmp_path / "state.db"), "--no-progress")
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if "2.9.2" in line]
        assert len(lines) == 1 and "2.16 to 3.18.x" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        names = [e.name for e in MlflowClient(server.uri).search_experiments()]
        assert not any(n.startswith(prefix) for n in names), "nothing written"
    finally:
        server.stop()
