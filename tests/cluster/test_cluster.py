"""Migrating on a real Dask cluster: a scheduler and two worker processes on loopback (`distributed.LocalCluster`,
processes, with nannies that restart a killed worker), a real MLflow server, the archive on a local S3 server
(moto), the ledger in a real PostgreSQL. Workers open everything themselves from what each task carries.

The faults are real too: a worker process SIGKILLed in the middle of a run's metrics, a driver SIGKILLed in the
middle of a migration, two drivers on one ledger. Each ends with exactly one MLflow run per Neptune run and a
validation that finds every point once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import neptune_migration as nm
from neptune_migration.archive import Archive
from neptune_migration.errors import UsageError
from neptune_migration.sandbox import Sandbox, generate_project

from ..conftest import VENV_BIN
from ..test_object_store import BUCKET, S3Server, _mlflow_contents

distributed = pytest.importorskip("distributed")
pytest.importorskip("psycopg")

PROJECT = "sandbox/cluster"
LEASE = "3"  # seconds: a killed worker's runs are free again soon


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    # Few runs, long metrics: loading one takes long enough to kill a worker in the middle of it.
    with Sandbox([generate_project("cluster", runs=4, series=2, points=4_000, files=1, nasty=True)]) as sb:
        yield sb


@pytest.fixture(scope="module")
def env(s3: S3Server, sandbox: Any) -> Iterator[dict[str, str]]:
    """What every process of the migration sees: the driver (this one or a subprocess) and the workers."""
    values = {**sandbox.env(PROJECT), **s3.env(), "NEPTUNE_MIGRATION_LEASE_SECONDS": LEASE,
              "NEPTUNE_MIGRATION_RETRIES": "2"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in values.items():
            mp.setenv(key, value)
        mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        yield values


@pytest.fixture(scope="module")
def cluster(env: dict[str, str]) -> Iterator[Any]:
    # Started after `env`: the spawned worker processes inherit the AWS and Neptune settings, as real workers
    # would from their own environment.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
                                  dashboard_address=None, scheduler_port=0, silence_logs=40) as local:
        yield local


@pytest.fixture(scope="module")
def archive(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The project exported once (locally, into the bucket): what the load tests read."""
    url = f"s3://{BUCKET}/cluster-archive"
    state = tmp_path_factory.mktemp("export") / "s.db"
    assert nm.export("neptune3", project=[PROJECT], archive=url, state=state).ok
    return url


def _one_run_per_key(client: Any, prefix: str) -> dict[str, int]:
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    keys: dict[str, int] = {}
    for run in client.search_runs(exps):
        key = run.data.tags["neptune.run_key"]
        keys[key] = keys.get(key, 0) + 1
    return keys


def _metric_points(client: Any, prefix: str) -> dict[tuple[str, str], int]:
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    out = {}
    for run in client.search_runs(exps):
        for name in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, name)
            # Every point once: no (step, timestamp) twice.
            assert len({(m.step, m.timestamp) for m in history}) == len(history), (run.data.tags, name)
            out[(run.data.tags["neptune.run_key"], name)] = len(history)
    return out


def test_load_and_validate_on_the_cluster_match_a_local_run(cluster: Any, archive: str, pg_state: str,
                                                            mlflow_server: Any, prefix: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    target = {"to": "mlflow", "mlflow_tracking_uri": mlflow_server.uri, "experiment_prefix": prefix}
    loaded = nm.load(archive, state=pg_state, cluster=cluster.scheduler_address, **target)
    runs = len(Archive(archive).scan().runs)
    assert loaded.ok and loaded.summary.count("loaded") == runs
    workers = set(cluster.scheduler_info["workers"])
    # The report says which worker did each run, and the ledger keeps it with the run's details.
    assert set(loaded.summary.workers) == {o.key for o in loaded.summary.outcomes}
    assert set(loaded.summary.workers.values()) <= workers
    assert loaded.to_dict()["workers"] == loaded.summary.workers
    ledger_workers = {e.ref.key: (e.details or {}).get("worker") for e in nm.status(state=pg_state).entries
                      if e.stage == "load"}
    assert ledger_workers == loaded.summary.workers

    checked = nm.validate(archive, state=pg_state, cluster=cluster.scheduler_address,
                          report_dir=tmp_path / "report", **target)
    assert checked.ok, checked.report["totals"]
    assert checked.report["totals"]["runs_validated"] == runs and checked.report["totals"]["runs_mismatched"] == 0
    assert set(checked.summary.workers.values()) <= workers
    assert json.loads((tmp_path / "report" / "report.json").read_text())["workers"] == checked.summary.workers

    # The same archive loaded by threads of this process lands the same runs, values and artifacts.
    local = nm.load(archive, state=tmp_path / "local.db", **{**target, "experiment_prefix": prefix + "local-"})
    assert local.ok
    client = MlflowClient(mlflow_server.uri)
    assert _mlflow_contents(client, prefix, exclude=prefix + "local-") == _mlflow_contents(client, prefix + "local-")

    again = nm.load(archive, state=pg_state, cluster=cluster.scheduler_address, **target)
    assert again.summary.count("already_loaded") == runs and again.summary.count("loaded") == 0


def test_a_worker_killed_mid_metrics_is_retried_elsewhere_exactly(cluster: Any, archive: str, pg_state: str,
                                                                 postgres: Any, mlflow_server: Any, prefix: str,
                                                                 tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    target = {"to": "mlflow", "mlflow_tracking_uri": mlflow_server.uri, "experiment_prefix": prefix}
    database = pg_state.rsplit("/", 1)[1]
    killed: list[tuple[str, int]] = []

    def kill_one_mid_metrics() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            try:
                rows = postgres.execute(database, "SELECT run_id, owner, checkpoint FROM neptune_migration_progress "
                                                  "WHERE stage='load' AND status='running'")
            except Exception:  # the table is created by the driver's first connection
                rows = []
            for run_id, owner, checkpoint in rows:
                if checkpoint and json.loads(checkpoint).get("metric_batches_done", 0) >= 2:
                    pid = int(owner.split(":")[1])
                    os.kill(pid, signal.SIGKILL)
                    killed.append((run_id, pid))
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_mid_metrics)
    killer.start()
    loaded = nm.load(archive, state=pg_state, cluster=cluster.scheduler_address, **target)
    killer.join()
    assert killed, "no worker was caught in the middle of a run's metrics"
    run_id, _pid = killed[0]
    assert loaded.ok, [(o.key, o.error) for o in loaded.summary.failed]
    runs = {r.ref.key: r for r in Archive(archive).scan().runs}
    assert loaded.summary.count("loaded") == len(runs)
    entry = next(e for e in nm.status(state=pg_state).entries if e.stage == "load" and e.ref.run_id == run_id)
    assert entry.status == "done" and entry.attempts >= 2  # resumed by another attempt, from the checkpoint

    client = MlflowClient(mlflow_server.uri)
    assert _one_run_per_key(client, prefix) == dict.fromkeys(runs, 1)
    checked = nm.validate(archive, state=pg_state, cluster=cluster.scheduler_address,
                          report_dir=tmp_path / "report", **target)
    assert checked.ok and checked.report["totals"]["runs_validated"] == len(runs), checked.report["totals"]
    points = _metric_points(client, prefix)
    assert sum(points.values()) == loaded.summary.points > 0


def _migrate_cli(env: dict[str, str], cluster: Any, pg_state: str, mlflow_uri: str, prefix: str, tmp: Path,
                 archive: str) -> list[str]:
    return [str(VENV_BIN / "neptune-migrate"), "migrate", "--from", "neptune3", "-p", PROJECT, "--to", "mlflow",
            "--mlflow-tracking-uri", mlflow_uri, "--experiment-prefix", prefix, "--archive", archive,
            "--state", pg_state, "--cluster", cluster.scheduler_address, "--report-dir", str(tmp / "report"),
            "--no-progress"]


def _done(postgres: Any, database: str, stage: str) -> int:
    try:
        return postgres.execute(database, "SELECT count(*) FROM neptune_migration_progress WHERE stage=%s AND "
                                          "status='done'", (stage,))[0][0]
    except Exception:
        return 0


def test_a_killed_driver_is_continued_by_a_new_one(cluster: Any, env: dict[str, str], pg_state: str, postgres: Any,
                                                   mlflow_server: Any, prefix: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    archive = f"s3://{BUCKET}/cluster-{prefix}"
    command = _migrate_cli(env, cluster, pg_state, mlflow_server.uri, prefix, tmp_path, archive)
    database = pg_state.rsplit("/", 1)[1]
    proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while _done(postgres, database, "load") < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, output
    validated_when_killed = _done(postgres, database, "validate")

    again = subprocess.run(command, env={**os.environ, **env}, cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    runs = {r.ref.key for r in Archive(archive).scan().runs}
    assert validated_when_killed < len(runs), "the driver finished before it could be killed"
    assert report["totals"]["runs_validated"] == len(runs), report["totals"]
    client = MlflowClient(mlflow_server.uri)
    assert _one_run_per_key(client, prefix) == dict.fromkeys(runs, 1)
    _metric_points(client, prefix)  # every point once


def test_two_drivers_on_one_ledger_never_take_the_same_run(cluster: Any, env: dict[str, str], archive: str,
                                                           pg_state: str, mlflow_server: Any, prefix: str,
                                                           tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    command = [str(VENV_BIN / "neptune-migrate"), "load", "--archive", archive, "--to", "mlflow",
               "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix, "--state", pg_state,
               "--cluster", cluster.scheduler_address, "--no-progress"]
    drivers = [subprocess.Popen(command, env={**os.environ, **env}, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [d.communicate(timeout=300)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    runs = {r.ref.key for r in Archive(archive).scan().runs}

    def count(label: str, text: str) -> int:
        line = next(line for line in text.splitlines() if line.strip().startswith(label))
        return int(line.split()[-1])

    loaded = [count("runs loaded", out) for out in outputs]
    skipped = [count("runs already loaded", out) for out in outputs]
    assert sum(loaded) == len(runs) and [a + b for a, b in zip(loaded, skipped, strict=True)] == [len(runs)] * 2
    entries = [e for e in nm.status(state=pg_state).entries if e.stage == "load"]
    assert {e.ref.key for e in entries} == runs and all(e.attempts == 1 for e in entries), entries
    assert _one_run_per_key(MlflowClient(mlflow_server.uri), prefix) == dict.fromkeys(runs, 1)


def test_cluster_rules_are_checked_before_any_run(cluster: Any, archive: str, pg_state: str, mlflow_server: Any,
                                                  tmp_path: Path) -> None:
    target = {"to": "mlflow", "mlflow_tracking_uri": mlflow_server.uri}
    with pytest.raises(UsageError, match="--state postgresql://"):
        nm.load(archive, state=tmp_path / "s.db", cluster=cluster.scheduler_address, **target)
    with pytest.raises(UsageError, match="ray"):
        nm.load(archive, state=pg_state, cluster="ray://127.0.0.1:10001", **target)
    with pytest.raises(UsageError, match="Dask scheduler address"):
        nm.load(archive, state=pg_state, cluster="127.0.0.1:8786", **target)
    password = pg_state.split(":")[2].split("@")[0]
    result = subprocess.run([str(VENV_BIN / "neptune-migrate"), "load", "--archive", archive, "--to", "mlflow",
                             "--mlflow-tracking-uri", mlflow_server.uri, "--state",
                             pg_state.replace(password, password + "x"), "--cluster", cluster.scheduler_address],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert password not in result.stdout + result.stderr and "***" in result.stderr
