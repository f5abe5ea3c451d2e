"""Shared fixtures: a real MLflow tracking server, and helpers to run the real CLI in a subprocess."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

# Real archives written by neptune-exporter, copied from shared/fixtures so a clone tests on its own.
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "neptune-exporter-archives"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a free port; its tracking store is SQLite in `root` unless `backend_store_uri` names
    another (a PostgreSQL or MySQL database from tests/sqlstores.py). `bin_dir`: the venv whose `mlflow` serves
    (another MLflow version's, from tests/mlflow_venvs.py); this interpreter's by default."""

    def __init__(self, root: Path, workers: int = 1, backend_store_uri: str | None = None,
                 bin_dir: Path = VENV_BIN) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.bin_dir = bin_dir

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        if self.bin_dir != VENV_BIN:  # another venv's mlflow must not import this tree's packages
            for name in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
                env.pop(name, None)
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [
                str(self.bin_dir / "mlflow"), "server",
                "--host", "127.0.0.1", "--port", str(self.port),
                "--backend-store-uri", self.backend_store_uri,
                "--artifacts-destination", str(self.root / "artifacts"),
                "--workers", str(self.workers),
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        # The first start on a database runs every schema migration: slower on PostgreSQL and MySQL.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                if requests.get(self.uri + "/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError("mlflow server did not become healthy in 90 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    """An experiment-name prefix unique to the test, so tests sharing one server never see each other."""
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def exporter_archives(tmp_path: Path) -> Path:
    """A writable copy of the real neptune-exporter archives (the test tree stays as committed)."""
    if not FIXTURES.exists():
        pytest.skip(f"neptune-exporter fixtures not found at {FIXTURES}")
    dest = tmp_path / "exporter"
    shutil.copytree(FIXTURES, dest)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, **(env or {}))
    full_env.setdefault("NEPTUNE_MIGRATION_RETRIES", "2")
    return subprocess.run(
        [str(VENV_BIN / "neptune-migrate"), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )
