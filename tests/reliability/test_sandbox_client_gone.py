"""The sandbox is quiet when a client goes away mid-reply (the crash tortures kill clients all the time), and
still prints the traceback of any other error."""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.sandbox import Sandbox, generate_project


def _reset_mid_request(sb: Sandbox, path: str) -> None:
    """Send a request, then drop the connection with a TCP reset before the (slowed) reply is written."""
    with socket.create_connection((sb.host, sb.port)) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {sb.host}\r\nContent-Length: 0\r\n\r\n".encode())
        time.sleep(0.1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _wait_logged(sb: Sandbox, path: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not sb.requests_to(path):
        time.sleep(0.02)
    time.sleep(0.3)  # the reply is written (and fails) after the request is logged


def test_client_gone_is_silent(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="neptune_migration.sandbox.server")
    with Sandbox([generate_project("quiet", runs=1, points=5, files=0, nasty=False)]) as sb:
        sb.faults.add(r"/api/backend/swagger.json", "slow", delay=0.5)
        for _ in range(3):
            _reset_mid_request(sb, "/api/backend/swagger.json")
        _wait_logged(sb, "/api/backend/swagger.json")
        time.sleep(0.5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
    assert any("went away" in r.getMessage() for r in caplog.records), "no client was cut off mid-reply"


def test_other_errors_keep_their_traceback(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    import requests

    with Sandbox([generate_project("loud", runs=1, points=5, files=0, nasty=False)]) as sb:
        def broken(req: Any) -> Any:
            raise RuntimeError("a sandbox bug")

        monkeypatch.setattr(sb, "handle", broken)
        with pytest.raises(requests.ConnectionError):
            requests.get(sb.url + "/api/backend/swagger.json", timeout=5)
    err = capfd.readouterr().err
    assert "Traceback" in err and "RuntimeError: a sandbox bug" in err, err
