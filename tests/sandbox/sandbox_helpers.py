"""Helpers shared by the sandbox test modules (a plain module: `conftest` is not importable by name when
several test folders have one)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.sandbox import Sandbox, demo_project, generate_project


def ok(results: dict[str, Any], name: str) -> Any:
    """A client call's result, failing the test with the client's traceback if it raised."""
    value = results[name]
    if isinstance(value, Exception):
        pytest.fail(f"{name} raised in the client:\n{value}")
    return value


HERE = Path(__file__).parent

# Small batch sizes so every paging path of neptune-query runs against the sandbox.
NQ_PAGING_ENV = {
    "NEPTUNE_QUERY_EXPERIMENT_SYS_ATTRS_BATCH_SIZE": "2",
    "NEPTUNE_QUERY_ATTRIBUTE_DEFINITIONS_BATCH_SIZE": "4",
    "NEPTUNE_QUERY_ATTRIBUTE_VALUES_BATCH_SIZE": "5",
    "NEPTUNE_QUERY_SERIES_BATCH_SIZE": "3",
    "NEPTUNE_QUERY_FILES_BATCH_SIZE": "2",
    "NEPTUNE_QUERY_RETRY_SOFT_TIMEOUT": "60",
    "NEPTUNE_QUERY_RETRY_HARD_TIMEOUT": "90",
}


def seeded_projects() -> list[Any]:
    """The projects every contract test sees; rebuilt identically when a test needs a pristine copy."""
    return [demo_project(), generate_project("nasty", runs=6, series=3, points=20, files=2, seed=1)]


def client_env(sandbox: Sandbox, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEPTUNE_", "SANDBOX_TEST_"))}
    env.update(sandbox.env())
    env.update(extra or {})
    return env


def run_client(script: str, func: str, env: dict[str, str], timeout: float = 150) -> Any:
    """Run ``func`` of ``script`` (a module next to this file) in a fresh interpreter; return its result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.pickle"
        proc = subprocess.run(
            [sys.executable, str(HERE / script), func, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{script}:{func} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        with out.open("rb") as fh:
            return pickle.load(fh)
