"""A database store made by another MLflow version is never migrated behind the user's back.

MLflow's client upgrades an older store as it opens it, after which the team's own server of that version no longer
starts. The stores here are made by real older MLflow releases, each in a venv cached outside the repository
(tests/mlflow_venvs.py); the load must refuse in one line, and the store's bytes stay as they were.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from neptune_migration.errors import TargetError
from neptune_migration.samples import write_nasty_archive
from neptune_migration.targets.mlflow.bulk import MlflowBulkTarget
from neptune_migration.targets.mlflow.loader import MlflowTarget
from neptune_migration.targets.mlflow.store_schema import KNOWN_HEADS, client_revision

from .conftest import run_cli
from .mlflow_venvs import mlflow_venv, run_in

pytestmark = pytest.mark.slow

# A team's store: an experiment and a run with a metric, written by that version's own client.
_MAKE_STORE = """
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
exp = client.create_experiment("team-work")
run = client.create_run(exp)
client.log_metric(run.info.run_id, "loss", 0.5, step=1)
client.set_terminated(run.info.run_id)
"""
_READ_STORE = """
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(sys.argv[1])
(exp,) = [e for e in client.search_experiments() if e.name == "team-work"]
(run,) = client.search_runs([exp.experiment_id])
print(run.data.metrics["loss"])
"""


def _revision(db: Path) -> str:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def _digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=["2.16.2", "3.10.1"])
def team_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    version = request.param
    venv = mlflow_venv(version)
    db = tmp_path_factory.mktemp(f"store-{version}") / "mlflow.db"
    made = run_in(venv, "python", "-c", _MAKE_STORE, f"sqlite:///{db}")
    assert made.returncode == 0, made.stderr[-2000:]
    return version, db


def test_older_sqlite_store_is_refused_and_left_as_it_was(team_store: tuple[str, Path], tmp_path: Path) -> None:
    version, db = team_store
    revision, digest = _revision(db), _digest(db)
    assert revision != client_revision() and KNOWN_HEADS[revision] == version.rsplit(".", 1)[0]
    uri = f"sqlite:///{db}"

    archive = write_nasty_archive(tmp_path / "archive")
    for bulk in ((), ("--mlflow-bulk",)):
        done = run_cli("load", "--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", uri, *bulk,
                       "--state", str(tmp_path / f"state{len(bulk)}.db"), "--no-progress")
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
        lines = [line for line in (done.stdout + done.stderr).splitlines() if revision in line]
        assert len(lines) == 1, done.stdout + done.stderr
        line = lines[0]
        # Both versions, and the ways forward.
        assert f"MLflow {version.rsplit('.', 1)[0]}" in line and client_revision() in line, line
        assert "http://" in line and "mlflow db upgrade" in line, line

    for target in (MlflowTarget, MlflowBulkTarget):
        with pytest.raises(TargetError, match=revision):
            target(uri)

    assert _revision(db) == revision and _digest(db) == digest
    # The team's own MLflow still opens its store (it refuses a schema it does not know).
    read = run_in(mlflow_venv(version), "python", "-c", _READ_STORE, uri)
    assert read.returncode == 0 and read.stdout.strip() == "0.5", read.stderr[-2000:]


def test_newer_store_is_refused_naming_the_client(tmp_path: Path) -> None:
    """A store at a schema our client does not know (a newer MLflow's): MLflow would fail half-way; we refuse."""
    db = tmp_path / "mlflow.db"
    MlflowTarget(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    digest = _digest(db)
    with pytest.raises(TargetError) as err:
        MlflowTarget(f"sqlite:///{db}")
    message = str(err.value)
    assert "\n" not in message and "ffffffffffff" in message and client_revision() in message
    assert "install the store's MLflow version" in message and "http://" in message
    assert _digest(db) == digest


def test_store_at_our_schema_and_empty_store_open(tmp_path: Path) -> None:
    db = tmp_path / "new" / "mlflow.db"
    MlflowTarget(f"sqlite:///{db}").close()  # no store yet: created at the client's schema
    assert _revision(db) == client_revision()
    MlflowTarget(f"sqlite:///{db}").close()
    assert _revision(db) == client_revision()
