"""The Python API as a user meets it: the README's example and every example of docs/python-api.md, executed as
written against a real MLflow server and the built-in Neptune sandbox (the real neptune-query client)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import neptune_migration as nm
from neptune_migration.sandbox import Sandbox, demo_project

from .conftest import FIXTURES, MlflowServer

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED_URI = "http://127.0.0.1:5000"


def python_blocks(markdown: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    # A server of its own: the examples use fixed experiment names that other tests must not see.
    srv = MlflowServer(tmp_path_factory.mktemp("api-mlflow"))
    srv.start()
    yield srv
    srv.stop()


def _run(code: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A process of its own: neptune-query reads its environment once, when first imported.
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, NEPTUNE_MIGRATION_RETRIES="2", **(env or {})))


def test_readme_example_loads_and_validates_an_exporter_archive(server: MlflowServer, tmp_path: Path) -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "the README has no Python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 5 and DOCUMENTED_URI in example
    shutil.copytree(FIXTURES / "neptune3", tmp_path / "exports")
    done = _run(example.replace(DOCUMENTED_URI, server.uri), tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "validated", done.stdout + done.stderr
    runs = nm.status(state=tmp_path / ".neptune-migration" / "state.db").entries
    assert {(e.stage, e.status) for e in runs} == {("load", "done"), ("validate", "done")}
    assert len({e.ref for e in runs}) == 3  # run-a, run-b, run-b-old: every run of the real exporter archive


def test_python_api_page_examples_run_as_written(server: MlflowServer, tmp_path: Path) -> None:
    page = ROOT / "docs" / "python-api.md"
    blocks = python_blocks(page)
    documented = {name for name in re.findall(r"^## (\w+)", page.read_text(), flags=re.M)}
    assert {"discover", "export", "load", "validate", "migrate", "retry", "status"} <= documented
    script = "\n".join(blocks).replace(DOCUMENTED_URI, server.uri)
    with Sandbox([demo_project()], port=0) as sandbox:
        done = _run(script, tmp_path, sandbox.env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "unknown option 'limt' (did you mean 'limit'?)" in done.stdout
    assert "validated" in done.stdout
    assert (tmp_path / "report" / "report.html").exists() and (tmp_path / "wandb-offline" / "wandb").is_dir()


def test_errors_are_migration_errors_not_system_exit(tmp_path: Path) -> None:
    with pytest.raises(nm.ArchiveError, match="archive not found"):
        nm.load(tmp_path / "nope", to="mlflow", mlflow_tracking_uri=f"sqlite:///{tmp_path / 'm.db'}",
                state=tmp_path / "s.db")
    with pytest.raises(nm.UsageError, match="unknown target 'comet'"):
        nm.load(tmp_path, to="comet", state=tmp_path / "s.db")
    with pytest.raises(nm.UsageError, match="no ledger"):
        nm.status(state=tmp_path / "none.db")
