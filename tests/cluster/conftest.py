"""Fixtures for the cluster tests: a real PostgreSQL for the shared ledger (tests/sqlstores.py), created once
per session; each test gets a database of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ..conftest import free_port
from ..sqlstores import DatabaseUnavailable, PostgresServer, unavailable


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(free_port())
    try:
        server.start()
    except DatabaseUnavailable as exc:
        server.stop()
        unavailable(str(exc))
    yield server
    server.stop()


@pytest.fixture
def pg_state(postgres: PostgresServer) -> str:
    """A fresh database's URI (with its password) for `--state`."""
    return postgres.create_database(f"ledger_{uuid.uuid4().hex[:10]}")
