"""What several benchmarks start or measure: a local MLflow server, the Neptune sandbox, a child's peak RSS."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, workers: int = 1, backend_uri: str | None = None,
                        extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """`mlflow server` (on SQLite unless `backend_uri`) with proxied artifacts and the job runner off
    (shared/notes/mlflow.md)."""
    port = free_port()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_uri or f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "art"), "--workers", str(workers), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(uri + "/health", timeout=1).status_code == 200:
                return proc, uri
        except requests.RequestException:
            time.sleep(0.2)
    raise SystemExit("mlflow server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait()


def start_sandbox(seed: str) -> tuple[subprocess.Popen, dict[str, str]]:
    """`neptune-migrate sandbox serve` in its own process; returns it and the environment that points at it."""
    cmd = [str(BIN / "neptune-migrate"), "sandbox", "serve", "--seed", seed, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    env: dict[str, str] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("export "):
            key, _, value = line[len("export "):].strip().partition("=")
            env[key] = value.strip("'")
        if line.startswith("# Ctrl+C"):
            return proc, env
    raise SystemExit("the sandbox did not start")


def run_with_peak_rss(cmd: list[str], interval: float = 0.02) -> tuple[int, str, int]:
    """Run a child to the end; (exit code, its stdout, its peak RSS in bytes, polled every `interval` s).
    The child must print little (a result line): its stdout is read once it has exited."""
    import psutil

    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    proc = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(interval)
    out, _ = child.communicate()
    return child.returncode, out, peak


def poll_peak_rss(child: subprocess.Popen) -> float:
    """Peak RSS of a child in MB, polled. (RUSAGE_CHILDREN would count the pages a fork of this process
    inherits before exec, which says nothing about the child's own use.)"""
    import psutil

    peak = 0
    proc = psutil.Process(child.pid)
    while child.poll() is None:
        try:
            peak = max(peak, proc.memory_info().rss)
        except psutil.Error:
            break
        time.sleep(0.05)
    child.wait()
    return peak / 1e6
