"""A CreateRun the server committed but whose answer was lost must not become a second MLflow run.

MLflow's own server can answer 503 after it commits a write (a proxy or load balancer in front of it does the same
when the upstream answer is late). Before 3.18 MLflow's client re-sent CreateRun on a 5xx itself; from 3.18 the
error reaches us. Either way the load looks the run up by its key tag before sending CreateRun again.

The proxy is test-local, on the loopback: no real proxy can be told to fail exactly one request after forwarding
it, and that is the case under test. Everything else it relays unchanged to a real `mlflow server`.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from neptune_migration.archive import Archive
from neptune_migration.samples import write_nasty_archive

from .test_mlflow_load import _load

CREATE_RUN = "/api/2.0/mlflow/runs/create"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}


class LosesOneAnswer(ThreadingHTTPServer):
    """Relays every request to `upstream`; the first CreateRun is forwarded, and its answer replaced by a 503."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Relay)
        self.upstream = urlsplit(upstream)
        self.uri = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.lost: list[str] = []  # the answers replaced: CreateRun's body, as the server sent it


class _Relay(BaseHTTPRequestHandler):
    server: LosesOneAnswer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        body = self._body()
        up = self.server.upstream
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()
        conn.close()
        status, reply = answer.status, [(k, v) for k, v in answer.getheaders() if k.lower() not in HOP_BY_HOP]
        if self.command == "POST" and self.path.startswith(CREATE_RUN) and status == 200:
            with self.server.lock:
                lose = not self.server.lost
                if lose:
                    self.server.lost.append(data.decode())
            if lose:
                status, data = 503, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "upstream answer lost"}'
                reply = [("Content-Type", "application/json")]
        self.send_response(status)
        for name, value in reply:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _relay


@pytest.fixture
def lossy_proxy(mlflow_server) -> Iterator[LosesOneAnswer]:
    proxy = LosesOneAnswer(mlflow_server.uri)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_create_run_answered_503_after_commit_makes_one_run(tmp_path: Path, mlflow_server, lossy_proxy,
                                                            prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    summary = _load(archive, lossy_proxy.uri, prefix, tmp_path / "state.db")
    assert len(lossy_proxy.lost) == 1, "the proxy never lost a CreateRun answer: the test tested nothing"
    assert summary.count("loaded") == 2 and not summary.failed, summary

    client = MlflowClient(mlflow_server.uri)  # straight to the server, not through the proxy
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    # Deleted runs too: a second run removed afterwards would still be a second run.
    runs = client.search_runs(exps, run_view_type=ViewType.ALL, max_results=1000)
    keys = sorted(r.data.tags["neptune.run_key"] for r in runs)
    assert keys == sorted(r.ref.key for r in Archive(archive).scan().runs), keys
    assert all(r.info.lifecycle_stage == "active" and r.data.tags["neptune.migration.state"] == "complete"
               for r in runs)
    # The run the lost answer named is the one the load completed.
    assert any(r.info.run_id in lossy_proxy.lost[0] for r in runs)
