"""`--mlflow-bulk` into real PostgreSQL stores: binary COPY, exact resume after SIGKILL, the schema pin, and the
refusal while another session (an MLflow server) is connected. Each test gets a database of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.errors import TargetError
from neptune_migration.ledger import Ledger
from neptune_migration.samples import write_nasty_archive
from neptune_migration.selection import Selection
from neptune_migration.stages.validate import validate
from neptune_migration.targets.mlflow import bulk as mlflow_bulk
from neptune_migration.targets.mlflow import readback
from neptune_migration.targets.mlflow.bulk import SCHEMA_REVISIONS, MlflowBulkTarget
from neptune_migration.targets.mlflow.loader import MlflowTarget
from neptune_migration.targets.mlflow.store_schema import client_revision
from neptune_migration.vocabulary import RunRef

from ..conftest import VENV_BIN, run_cli
from ..sqlstores import PostgresServer
from ..test_mlflow_bulk import T0, _edge_archive, _load, _snapshot
from .conftest import SqlBackend
from .test_sql_stores import _approx, _load_and_validate, _quiet


def _fresh(server: PostgresServer) -> tuple[str, str]:
    name = f"bulk_{uuid.uuid4().hex[:10]}"
    return name, server.create_database(name)


def test_nasty_archive_bulk_validates(postgres_server: PostgresServer, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Several transactions per archive batch, so latest_metrics is folded across transaction boundaries.
    monkeypatch.setattr(mlflow_bulk, "ROWS_PER_TRANSACTION", 300)
    archive = write_nasty_archive(tmp_path / "archive", rows_per_part=700)
    name, uri = _fresh(postgres_server)
    loaded, summary = _load_and_validate(archive, uri, "p-", tmp_path / "s.db", target_class=MlflowBulkTarget)
    assert _approx(summary, "inf_clamped_by_mlflow") == 2
    # PostgreSQL's float8 keeps -0.0, and the binary COPY sends its sign: nothing to count.
    assert _approx(summary, "negative_zero_stored_as_zero") == 0
    assert loaded.approximations().get("negative_zero_stored_as_zero", 0) == 0
    progress = postgres_server.execute(name, "SELECT value FROM tags WHERE key = 'neptune.bulk_rows'")
    assert progress and all(int(v.split(":")[0]) > 0 for (v,) in progress)
    # The staging table is our session's own: nothing is left in MLflow's schema.
    assert postgres_server.execute(name, "SELECT count(*) FROM information_schema.tables WHERE table_name = "
                                   "'neptune_bulk_points' AND table_schema = 'public'") == [(0,)]

    # The batched read-back sees what the table holds: one point gone, one value changed, both reported, the same
    # whether a run is read in one query or key by key.
    run_id = summary.checks[0].target_id
    key, step = postgres_server.execute(
        name, "SELECT key, min(step) FROM metrics WHERE run_uuid = %s AND NOT is_nan GROUP BY key "
        "HAVING count(DISTINCT step) > 2 ORDER BY key LIMIT 1", (run_id,))[0]
    postgres_server.execute(name, "DELETE FROM metrics WHERE run_uuid = %s AND key = %s AND step = "
                            "(SELECT max(step) FROM metrics WHERE run_uuid = %s AND key = %s)",
                            (run_id, key, run_id, key))
    postgres_server.execute(name, "UPDATE metrics SET value = value + 1 WHERE run_uuid = %s AND key = %s AND "
                            "step = %s", (run_id, key, step))
    for per_query in (readback.MAX_POINTS_PER_QUERY, 0):
        monkeypatch.setattr(readback, "MAX_POINTS_PER_QUERY", per_query)
        target = MlflowTarget(uri, experiment_prefix="p-")
        try:
            with Ledger(tmp_path / f"again-{per_query}.db") as ledger:
                again = validate(Archive(archive), target, Selection(), ledger, _quiet, workers=1)
        finally:
            target.close()
        kinds = {(m.kind, m.detail.split("'")[1]) for c in again.checks for m in c.mismatches}
        assert kinds == {("missing_points", key), ("value", key)}, kinds


def test_bulk_reads_back_like_log_batch(postgres_server: PostgresServer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ties that decide the latest value, exact repeats, NaN: row for row what MLflow's own store writes."""
    monkeypatch.setattr(mlflow_bulk, "ROWS_PER_TRANSACTION", 7_000)
    archive = _edge_archive(tmp_path / "edge")
    _, plain_uri = _fresh(postgres_server)
    _, bulk_uri = _fresh(postgres_server)
    assert not _load(archive, MlflowTarget(plain_uri), tmp_path / "plain.db").failed
    assert not _load(archive, MlflowBulkTarget(bulk_uri), tmp_path / "bulk.db").failed
    want, got = _snapshot(plain_uri), _snapshot(bulk_uri)
    assert want.keys() == got.keys() and want
    for key in want:
        assert got[key] == want[key], key
    assert len(got["bulk/edge/EDGE-1"]["history"]["repeat"]) == 2


def _observe(server: PostgresServer, database: str, sql: str, params: tuple = ()) -> list[tuple]:
    """A query while a bulk load runs: named like our own sessions, so the loader does not take the test for
    another writer and refuse."""
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=server.port, user=server.user, password=server.password,
                         dbname=database, autocommit=True, application_name="neptune-migrate test") as conn:
        return conn.execute(sql, params).fetchall()


def _count(server: PostgresServer, database: str) -> int:
    try:
        return _observe(server, database, "SELECT count(*) FROM metrics")[0][0]
    except Exception:  # the tables do not exist yet
        return 0


def test_sigkill_in_the_metrics_then_rerun_stores_every_point_once(postgres_server: PostgresServer,
                                                                   tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    writer = ArchiveWriter(archive, rows_per_batch=10_000)
    n = 60_000
    with writer.run(RunRef("bulk/kill", "KILL-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        for s in range(4):
            w.add_series(f"m/{s}", "float_series", list(range(n)), [T0 + timedelta(milliseconds=i) for i in range(n)],
                         [float(i * (s + 1)) for i in range(n)])
        # Every point twice: exact repeats inside the archive, in every transaction of the run.
        w.add_series("dup", "float_series", [i // 2 for i in range(n)],
                     [T0 + timedelta(milliseconds=i // 2) for i in range(n)], [float(i // 2) for i in range(n)])
    name, uri = _fresh(postgres_server)
    args = ["load", "--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", uri, "--mlflow-bulk",
            "--state", str(tmp_path / "state.db"), "--no-progress", "--workers", "1"]
    env = dict(os.environ, NEPTUNE_MIGRATION_RETRIES="2")
    child = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _count(postgres_server, name) == 0 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, "the load finished before it could be killed; make the archive bigger"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    partial = _count(postgres_server, name)
    assert 0 < partial < 4 * n + n // 2
    state = _observe(postgres_server, name, "SELECT value FROM tags WHERE key = 'neptune.migration.state'")
    assert state == [("loading",)]
    for _ in range(2):  # the second pass over a complete run adds nothing
        again = run_cli(*args)
        assert again.returncode == 0, again.stdout + again.stderr

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["neptune.migration.state"] == "complete"
    run_id = runs[0].info.run_id
    per_key = dict(postgres_server.execute(
        name, "SELECT key, count(*) FROM metrics WHERE run_uuid = %s GROUP BY key", (run_id,)))
    assert per_key == {**{f"m/{s}": n for s in range(4)}, "dup": n // 2}
    # Every (key, step, timestamp) exactly once: nothing doubled by the rerun, nothing lost by the kill.
    doubled = postgres_server.execute(
        name, "SELECT count(*) FROM (SELECT key, step, timestamp FROM metrics WHERE run_uuid = %s "
        "GROUP BY key, step, timestamp HAVING count(*) > 1) d", (run_id,))
    assert doubled == [(0,)]
    assert runs[0].data.tags["neptune.bulk_rows"] == f"{5 * n}:{n // 2}"
    assert runs[0].data.metrics == {**{f"m/{s}": float((n - 1) * (s + 1)) for s in range(4)},
                                    "dup": float(n // 2 - 1)}
    history = client.get_metric_history(run_id, "m/3")
    assert sorted((m.step, m.value) for m in history) == [(i, float(i * 4)) for i in range(n)]


def test_other_schema_revision_is_refused(postgres_server: PostgresServer, tmp_path: Path) -> None:
    name, uri = _fresh(postgres_server)
    MlflowBulkTarget(uri).close()  # MLflow creates its client's schema in the empty database
    assert postgres_server.execute(name, "SELECT version_num FROM alembic_version") == [(client_revision(),)]
    assert client_revision() in SCHEMA_REVISIONS
    # A throwaway database of the test's own: the product never alters MLflow's schema.
    postgres_server.execute(name, "UPDATE alembic_version SET version_num = 'f5a4f2784254'")
    with pytest.raises(TargetError) as err:
        MlflowBulkTarget(uri)
    message = str(err.value)
    assert "\n" not in message and "f5a4f2784254" in message and client_revision() in message
    assert postgres_server.password not in message
    archive = write_nasty_archive(tmp_path / "archive")
    done = run_cli("load", "--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", uri,
                   "--mlflow-bulk", "--state", str(tmp_path / "s.db"), "--no-progress")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "f5a4f2784254" in done.stdout + done.stderr
    # Without the bulk option too: MLflow's client would upgrade the store as it opened it.
    done = run_cli("load", "--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", uri,
                   "--state", str(tmp_path / "s2.db"), "--no-progress")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "f5a4f2784254" in done.stdout + done.stderr and "mlflow db upgrade" in done.stdout + done.stderr
    assert postgres_server.password not in done.stdout + done.stderr
    assert postgres_server.execute(name, "SELECT count(*) FROM runs") == [(0,)]
    assert postgres_server.execute(name, "SELECT version_num FROM alembic_version") == [("f5a4f2784254",)]


def test_refused_while_an_mlflow_server_is_connected(postgresql_backend: SqlBackend) -> None:
    server = postgresql_backend.server
    uri = server.uri("rest")  # the database behind the session's MLflow server
    MlflowClient(postgresql_backend.rest.uri).search_experiments()  # the server holds a pooled connection now
    with pytest.raises(TargetError, match="other session") as err:
        MlflowBulkTarget(uri)
    message = str(err.value)
    assert "\n" not in message and "--mlflow-bulk-allow-writers" in message and server.password not in message
    MlflowBulkTarget(uri, allow_other_writers=True).close()


def test_a_role_that_may_not_skip_triggers_keeps_the_foreign_key_check(postgres_server: PostgresServer,
                                                                       tmp_path: Path) -> None:
    """A production role is rarely a superuser: it cannot set `session_replication_role`, so each row keeps the
    foreign-key check on `runs`, and the load is the same row for row. The fixture's own role may: its sessions
    skip that check, and `metrics` has no trigger of MLflow's own that the setting would skip as well."""
    name, super_uri = _fresh(postgres_server)
    role, password = f"owner_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    postgres_server.execute("postgres", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    postgres_server.execute("postgres", f'ALTER DATABASE "{name}" OWNER TO {role}')
    postgres_server.execute(name, f"ALTER SCHEMA public OWNER TO {role}")
    uri = super_uri.replace(f"{postgres_server.user}:{postgres_server.password}@", f"{role}:{password}@")
    archive = write_nasty_archive(tmp_path / "archive", rows_per_part=700)
    loaded, summary = _load_and_validate(archive, uri, "p-", tmp_path / "s.db", target_class=MlflowBulkTarget)
    assert not loaded.failed and summary.ok
    assert postgres_server.execute(name, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'metrics'::regclass "
                                   "AND NOT tgisinternal") == [(0,)]
    for store_uri, skipped in ((uri, False), (super_uri, True)):
        target = MlflowBulkTarget(store_uri, experiment_prefix="p-")
        try:
            session = target.store.session()
            assert session.triggers_skipped is skipped
            session.close()
        finally:
            target.close()


def test_an_in_process_load_of_ours_is_not_another_writer(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """MLflow keeps one pooled engine per URI for the process: a notebook that loaded without the bulk option and
    then loads in bulk into the same database must not be refused for its own earlier sessions."""
    name, uri = _fresh(postgres_server)
    archive = write_nasty_archive(tmp_path / "archive")
    assert not _load(archive, MlflowTarget(uri, experiment_prefix="plain-"), tmp_path / "plain.db").failed
    names = postgres_server.execute(name, "SELECT DISTINCT application_name FROM pg_stat_activity WHERE datname = "
                                    "current_database() AND pid <> pg_backend_pid()")
    assert names == [("neptune-migrate",)], names  # the in-process engine's pooled connections are named as ours
    loaded = _load(archive, MlflowBulkTarget(uri, experiment_prefix="bulk-"), tmp_path / "bulk.db")
    assert not loaded.failed and loaded.points > 0
