"""Dead, silent and mistyped endpoints: the command fails within its budget, in one line naming the server, and a
mistyped MLflow URI is refused before anything is written."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from neptune_migration.errors import UsageError
from neptune_migration.samples import write_nasty_archive
from neptune_migration.targets.mlflow.endpoint import check_tracking_uri

from .conftest import free_port, run_cli

FAST = ("--timeout", "1", "--retry-budget", "3")
ACCEPTED_FORMS = ("http(s)://", "sqlite:///", "postgresql://", "mysql://", "file:///", "databricks")


def _token(url: str) -> str:
    return base64.b64encode(json.dumps({"api_address": url, "api_url": url}).encode()).decode()


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (a hung proxy, a stopped process's socket)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


# -- the MLflow URI rule --------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.com/", "sqlite:///x/m.db",
                                 "postgresql://u:p@db/mlflow", "postgresql+psycopg2://db/mlflow",
                                 "mysql+pymysql://db/mlflow", "databricks", "databricks://profile"])
def test_accepted_tracking_uris(uri: str) -> None:
    assert check_tracking_uri(uri) == uri


def test_existing_folder_accepted_missing_refused(tmp_path: Path) -> None:
    assert check_tracking_uri(str(tmp_path)) == str(tmp_path)
    assert check_tracking_uri(tmp_path.as_uri()) == tmp_path.as_uri()
    for missing in (str(tmp_path / "nope"), (tmp_path / "nope").as_uri()):
        with pytest.raises(UsageError, match="accepted: http"):
            check_tracking_uri(missing)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("uri,why", [("127.0.0.1:5055", "no scheme"), ("localhost:5000", "no scheme"),
                                     ("ftp://x", "unknown scheme 'ftp://'"), ("htp://host", "unknown scheme"),
                                     ("http://", "no host"), ("", "empty")])
def test_refused_tracking_uris(uri: str, why: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_tracking_uri(uri)
    assert why in str(caught.value)
    for form in ACCEPTED_FORMS:
        assert form in str(caught.value)


@pytest.mark.parametrize("uri", ["127.0.0.1:5055", "ftp://x"])
def test_load_refuses_mistyped_uri_and_writes_nothing(tmp_path: Path, uri: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    cwd = tmp_path / "work"
    cwd.mkdir()
    result = run_cli("load", "--archive", str(archive), "--mlflow-tracking-uri", uri, cwd=cwd, timeout=60)
    assert result.returncode == 2, result.stderr
    _assert_one_line_error(result, "--mlflow-tracking-uri", *ACCEPTED_FORMS)
    assert list(cwd.iterdir()) == []


# -- dead and silent servers ----------------------------------------------------------------------------------
def test_neptune3_closed_port_fails_within_budget(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli("discover", "--from", "neptune3", "-p", "ws/proj", *FAST, cwd=tmp_path,
                     env={"NEPTUNE_API_TOKEN": _token(url)}, timeout=60)
    elapsed = time.monotonic() - started
    _assert_one_line_error(result, f"cannot reach the Neptune server at {url}", "connection refused",
                           "--retry-budget 3")
    # Budget + one timeout + interpreter start-up: far from neptune-query's own 1800 s.
    assert elapsed < 20, elapsed


def test_neptune2_silent_server_fails_within_budget(tmp_path: Path, silent_server: str) -> None:
    started = time.monotonic()
    result = run_cli("discover", "--from", "neptune2", "-p", "ws/proj", *FAST, cwd=tmp_path,
                     env={"NEPTUNE_API_TOKEN": _token(silent_server)}, timeout=60)
    elapsed = time.monotonic() - started
    _assert_one_line_error(result, f"cannot reach the Neptune server at {silent_server}", "no answer",
                           "--timeout 1")
    assert elapsed < 25, elapsed


def test_mlflow_silent_server_fails_within_budget(tmp_path: Path, silent_server: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    started = time.monotonic()
    result = run_cli("load", "--archive", str(archive), "--state", str(tmp_path / "s.db"),
                     "--mlflow-tracking-uri", silent_server, *FAST, cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - started
    _assert_one_line_error(result, f"cannot reach the MLflow tracking server at {silent_server}", "no answer")
    assert elapsed < 25, elapsed
