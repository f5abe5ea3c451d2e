"""Fixtures for the sandbox contract tests: one seeded sandbox per session, clients in subprocesses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_helpers import NQ_PAGING_ENV, client_env, run_client, seeded_projects

from neptune_migration.sandbox import Sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    # a tiny series page so string/file/histogram series page with searchAfter
    with Sandbox(seeded_projects(), series_page_size=3) as sb:
        yield sb


@pytest.fixture(scope="session")
def nq_results(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    downloads = tmp_path_factory.mktemp("nq-downloads")
    env = client_env(sandbox, NQ_PAGING_ENV | {"SANDBOX_TEST_DOWNLOADS": str(downloads)})
    start = len(sandbox.request_log)
    results = run_client("sandbox_nq_calls.py", "contract_calls", env)
    results["__requests__"] = sandbox.request_log[start:]
    return results
