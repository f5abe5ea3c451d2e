"""An MLflow database store's schema, read before MLflow's client opens the store.

Opening a `sqlite://`/`postgresql://`/... store whose schema is older than the client's upgrades it in place
(`SqlAlchemyStore` runs every migration when a table of its own is missing), after which the team's MLflow server
of the older version no longer starts. So an in-process store whose `alembic_version` is not our client's head is
refused here, and nothing is written. A store with no MLflow tables yet is created at the client's schema, as MLflow
would. Reading never writes: SQLite is opened read-only, a database server through SQLAlchemy with no DDL.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from neptune_migration.errors import TargetError
from neptune_migration.targets.mlflow.endpoint import DATABASE_SCHEMES, database_of, naming_our_sessions

# The alembic heads of the MLflow releases the tests (or docs/mlflow.md's measurements) met, for messages only.
KNOWN_HEADS = {
    "f4a9b2c7d1e6": "3.18",
    "dc11669786a5": "3.17",
    "1b5f0d9ad7c1": "3.10",
    "4465047574b1": "2.16",
}


def client_revision() -> str:
    """The alembic head of the installed MLflow: the schema its client creates or upgrades a store to."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def client_knows(revision: str) -> bool:
    """Whether `revision` is in the installed MLflow's migration history (an older schema, not a newer one)."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        return ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_revision(revision) is not None
    except Exception:
        return False


def store_revision(uri: str) -> tuple[bool, str | None]:
    """(whether the store holds MLflow's tables, its alembic revision when recorded). A store that cannot be read
    counts as empty: MLflow's own open then says why."""
    if uri.startswith("sqlite:///"):
        return _sqlite_revision(Path(uri[len("sqlite:///") :]))
    if database_of(uri) not in DATABASE_SCHEMES:
        return False, None
    return _server_revision(uri)


def _sqlite_revision(db: Path) -> tuple[bool, str | None]:
    if not db.is_file() or db.stat().st_size == 0:
        return False, None
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as conn:
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "alembic_version" not in tables:
                return "experiments" in tables, None
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.DatabaseError:
            return False, None
    return True, row[0] if row else None


def _server_revision(uri: str) -> tuple[bool, str | None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(naming_our_sessions(uri), poolclass=NullPool)
    except Exception:
        return False, None
    try:
        with engine.connect() as conn:
            tables = set(sqlalchemy.inspect(conn).get_table_names())
            if "alembic_version" not in tables:
                return "experiments" in tables, None
            row = conn.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).fetchone()
            return True, row[0] if row else None
    except Exception:
        return False, None
    finally:
        engine.dispose()


def described(revision: str | None) -> str:
    if revision is None:
        return "no recorded schema version"
    known = KNOWN_HEADS.get(revision)
    return f"schema {revision}" + (f" (MLflow {known})" if known else "")


def refusal(where: str, found: str | None, ours: str) -> TargetError:
    from mlflow.version import VERSION

    client = f"this tool's MLflow client {VERSION} uses schema {ours}"
    if found is not None and client_knows(found):
        forward = ("opening it would upgrade it in place; load through an MLflow server of the store's version "
                   "(--mlflow-tracking-uri http://HOST:PORT), or back the store up and upgrade it yourself with "
                   f"`mlflow db upgrade {where}`")
    else:
        forward = ("load through an MLflow server of the store's version (--mlflow-tracking-uri http://HOST:PORT), "
                   "or install the store's MLflow version beside this tool")
    return TargetError(f"MLflow store {where} has {described(found)}, {client}: {forward}")


def check_store_schema(uri: str, where: str) -> None:
    """Refuse (one line) a database store holding MLflow's tables at a schema other than our client's head.
    `where` names the store in the message (no credentials)."""
    exists, found = store_revision(uri)
    if not exists:
        return
    ours = client_revision()
    if found != ours:
        raise refusal(where, found, ours)
