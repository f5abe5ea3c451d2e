"""`serve()` (what `neptune-migrate sandbox serve` calls), the module entry point, slow replies, run lookup."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from neptune_migration.sandbox import Sandbox, demo_project
from neptune_migration.sandbox.serve import projects_from_seed, serve
from neptune_migration.sandbox.store import Store


def test_serve_prints_env_and_stops() -> None:
    out = io.StringIO()
    stop = threading.Event()
    ready: list[Sandbox] = []
    thread = threading.Thread(
        target=serve, args=("demo+nasty", 0), kwargs={"out": out, "ready": ready.append, "stop": stop}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not ready and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ready, "serve() never became ready"
    sb = ready[0]
    exports = dict(
        line[len("export ") :].split("=", 1) for line in out.getvalue().splitlines() if line.startswith("export ")
    )
    token = json.loads(base64.b64decode(exports["NEPTUNE_API_TOKEN"]))
    assert token["api_url"] == token["api_address"] == sb.url
    assert exports["OAUTHLIB_INSECURE_TRANSPORT"] == "1"
    req = urllib.request.Request(
        sb.url + "/api/backend/v1/authorization/oauth-token", headers={"X-Neptune-Api-Token": sb.api_token}
    )
    with urllib.request.urlopen(req, timeout=5) as reply:
        assert reply.status == 200
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_module_entry_point_serves_until_signalled() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEPTUNE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "neptune_migration.sandbox", "--seed", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("# Ctrl+C"):
                break
        assert any(line.startswith("export NEPTUNE_API_TOKEN=") for line in lines)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_seed_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown seed"):
        projects_from_seed("demo+nope")
    with pytest.raises(ValueError, match="generate option"):
        projects_from_seed("generate:runs=x")
    assert [p.project_id for p in projects_from_seed("generate:runs=2,points=3")] == ["sandbox/generated"]


def test_slow_fault_delays_but_answers() -> None:
    with Sandbox([demo_project()]) as sb:
        fault = sb.faults.add("oauth-token", "slow", nth=1, delay=0.4)
        req = urllib.request.Request(
            sb.url + "/api/backend/v1/authorization/oauth-token", headers={"X-Neptune-Api-Token": sb.api_token}
        )
        start = time.monotonic()
        with urllib.request.urlopen(req, timeout=5) as reply:
            assert reply.status == 200
        assert time.monotonic() - start >= 0.4 and fault.served == 1
        start = time.monotonic()
        with urllib.request.urlopen(req, timeout=5):
            pass
        assert time.monotonic() - start < 0.4


def test_runs_resolve_by_sys_id_custom_id_and_project() -> None:
    store = Store.build([demo_project()])
    _, run = store.run_by_identifier("sandbox/demo/DEMO-2") or (None, None)
    assert run is not None and run.custom_run_id == "baseline-2"
    _, by_custom = store.run_by_identifier("CUSTOM/sandbox/demo/baseline-2") or (None, None)
    assert by_custom is run
    _, container = store.run_by_identifier("sandbox/demo") or (None, None)
    assert container is not None and container.kind == "project"
    assert store.run_by_identifier("sandbox/demo/DEMO-999") is None
    assert store.run_by_identifier("CUSTOM/other/proj/x") is None
