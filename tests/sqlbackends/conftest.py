"""Session fixtures: one real PostgreSQL and one real MariaDB per test session, and an `mlflow server` on each.

Each backend gets two databases: one behind the REST server, one opened in-process by the tests
(`--mlflow-tracking-uri postgresql://...`), so the server's and the client's schema migrations never race.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ..conftest import MlflowServer, free_port
from ..sqlstores import DatabaseUnavailable, MariadbServer, PostgresServer, unavailable

BACKENDS = ("postgresql", "mysql")


@dataclass
class SqlBackend:
    name: str
    server: Any  # PostgresServer or MariadbServer
    database: str
    uri: str  # the in-process tracking URI, with credentials
    rest: MlflowServer

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.server.execute(self.database, sql, params)

    def rest_execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.server.execute("rest", sql, params)


def _start(server: Any) -> Any:
    try:
        server.start()
    except DatabaseUnavailable as exc:
        server.stop()
        unavailable(str(exc))
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _start(PostgresServer(free_port()))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariadbServer]:
    server = _start(MariadbServer(tmp_path_factory.mktemp("mariadb"), free_port()))
    yield server
    server.stop()


def _backend(name: str, server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlBackend]:
    rest = MlflowServer(tmp_path_factory.mktemp(f"mlflow-{name}"), backend_store_uri=server.create_database("rest"))
    rest.start()
    try:
        yield SqlBackend(name, server, "inproc", server.create_database("inproc"), rest)
    finally:
        rest.stop()


@pytest.fixture(scope="session")
def postgresql_backend(postgres_server: PostgresServer,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlBackend]:
    yield from _backend("postgresql", postgres_server, tmp_path_factory)


@pytest.fixture(scope="session")
def mysql_backend(mariadb_server: MariadbServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlBackend]:
    yield from _backend("mysql", mariadb_server, tmp_path_factory)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> SqlBackend:
    """Each test runs against PostgreSQL and against MariaDB (MySQL's wire protocol and SQL dialect)."""
    return request.getfixturevalue(f"{request.param}_backend")
