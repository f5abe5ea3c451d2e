"""Shared tools for the reliability tests: an observing proxy in front of MLflow, and target snapshots.

The proxy lets a test see which MLflow calls a migration has in flight (so a SIGKILL can be aimed at metric
loading, artifact upload or validation) and slow one kind of call down to widen that window.
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.tracking import MlflowClient

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}


def mlflow_category(method: str, path: str) -> str:
    """The kind of MLflow call, as the torture names the stages."""
    if "/mlflow-artifacts/" in path:
        return "artifact_upload" if method == "PUT" else "artifact_read"
    if path.endswith("/runs/log-batch"):
        return "metric_loading"
    if "get-history" in path:
        return "history_read"
    return "other"


class MlflowProxy:
    """A threaded reverse proxy on 127.0.0.1 that counts calls per category and can delay one category."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.delays: dict[str, float] = {}
        self.started: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.down = False  # answer 503 to everything, like a server that is not there
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                category = mlflow_category(self.command, self.path)
                with proxy._lock:
                    proxy.started[category] += 1
                    proxy.in_flight[category] += 1
                try:
                    delay = proxy.delays.get(category, 0.0)
                    if delay:
                        threading.Event().wait(delay)
                    if proxy.down:
                        self._reply(503, [("Content-Type", "text/plain")], b"proxy: upstream down")
                        return
                    conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
                    try:
                        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                        conn.request(self.command, self.path, body=body or None, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        self._reply(resp.status, [(k, v) for k, v in resp.getheaders()
                                                  if k.lower() not in _HOP_BY_HOP], data)
                    except OSError:
                        self._reply(502, [("Content-Type", "text/plain")], b"proxy: upstream unreachable")
                    finally:
                        conn.close()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client was killed mid-call; that is what the torture does
                finally:
                    with proxy._lock:
                        proxy.in_flight[category] -= 1

            def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-call resets its connection; expected here, not worth a traceback

        self.server = Server(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MlflowProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        with self._lock:
            return Counter(self.started), Counter(self.in_flight)


def ledger_rows(state: Path) -> list[tuple[str, str, str, str | None]]:
    """(run_id, stage, status, checkpoint) of every ledger row, read without taking the ledger's lock."""
    if not state.exists():
        return []
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT run_id, stage, status, checkpoint FROM progress").fetchall()
    except sqlite3.Error:
        return []


def validating_since(state: Path, since: float) -> int:
    """Runs whose validation started at or after `since` (epoch seconds) and is still running. A row left
    `running` by a killed earlier invocation is older, so it does not count."""
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM progress WHERE stage='validate' AND status='running' "
                              "AND updated_at >= ?", (since,)).fetchone()[0]
    except sqlite3.Error:
        return 0


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            out.update(_artifacts(client, run_id, item.path))
        else:
            out[item.path] = item.file_size or 0
    return out


def mlflow_snapshot(uri: str, prefix: str) -> dict[str, Any]:
    """Everything the migration wrote under an experiment prefix, keyed by Neptune run key and free of MLflow ids,
    so two migrations of one project compare equal exactly when they hold the same data."""
    client = MlflowClient(uri)
    experiments = {e.experiment_id: e.name[len(prefix):] for e in client.search_experiments()
                   if e.name.startswith(prefix)}
    runs = client.search_runs(list(experiments), max_results=1000) if experiments else []
    key_of = {r.info.run_id: r.data.tags.get("neptune.run_key") for r in runs}
    out: dict[str, Any] = {}
    for run in runs:
        key = run.data.tags.get("neptune.run_key")
        assert key not in out, f"two active MLflow runs for {key}"
        # neptune.migration.ledger names the ledger that created the run: each migration compared has its own.
        tags = {k: v for k, v in run.data.tags.items() if k != "neptune.migration.ledger"}
        if "mlflow.parentRunId" in tags:
            tags["mlflow.parentRunId"] = key_of.get(tags["mlflow.parentRunId"], "?")
        metrics = {}
        for name in sorted(run.data.metrics):
            history = client.get_metric_history(run.info.run_id, name)
            # repr keeps NaN comparable and -0.0 distinct
            metrics[name] = sorted((m.step, m.timestamp, repr(m.value)) for m in history)
        out[key] = {
            "experiment": experiments[run.info.experiment_id],
            "name": run.info.run_name,
            "status": run.info.status,
            "start": run.info.start_time,
            "end": run.info.end_time,
            "params": dict(run.data.params),
            "tags": tags,
            "metrics": metrics,
            "artifacts": _artifacts(client, run.info.run_id),
        }
    return out


def read_report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text())


def _without_ledger(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config without `neptune_migration.migration`: each migration compared names its own ledger."""
    ours = config.get("neptune_migration")
    if not isinstance(ours, dict):
        return config
    return {**config, "neptune_migration": {k: v for k, v in ours.items() if k != "migration"}}


def _wandb_file_sha256(path: Path) -> str:
    """A file's sha256; for a `.wandb` file, of its records with the ledger's identity left out of the run's
    config, so every other byte of every record is still compared."""
    import hashlib

    if path.suffix != ".wandb":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    from neptune_migration.targets.wandb.records import read_records

    digest = hashlib.sha256()
    for rec in read_records(path):
        if rec.WhichOneof("record_type") == "run":
            for item in rec.run.config.update:
                if item.key == "neptune_migration":
                    value = json.loads(item.value_json)
                    item.value_json = json.dumps({k: v for k, v in value.items() if k != "migration"})
        digest.update(rec.SerializeToString(deterministic=True))
    return digest.hexdigest()


def wandb_offline_snapshot(root: Path) -> dict[str, Any]:
    """Everything a `--to wandb-offline` target root holds, read back from the run files, keyed by Neptune run key:
    the folder name, run metadata, config, summary, every history point, string series, artifacts with each
    payload's size and sha256, and the sha256 of every file in the folder (the folders are rebuilt identically, so
    a resumed migration must be byte-for-byte the clean one, but for the identity of the ledger that wrote it).
    Stray entries (temporary folders, two folders for one run, symlinks) fail the snapshot."""
    from neptune_migration.targets.wandb.readback import read_offline_run

    out: dict[str, Any] = {}
    folders = sorted((root / "wandb").iterdir())
    for folder in folders:
        assert folder.is_dir() and folder.name.startswith("offline-run-"), f"stray entry {folder}"
        run_id = folder.name[len("offline-run-"):].split("-", 1)[1]  # offline-run-<YYYYmmdd_HHMMSS>-<run id>
        data = read_offline_run(root, run_id)
        key = data.config["neptune_migration"]["run_key"]
        assert key not in out, f"two run folders for {key}"
        files = {}
        for path in sorted(folder.rglob("*")):
            assert not path.is_symlink(), f"symlink in a run folder: {path}"
            if path.is_file():
                files[path.relative_to(folder).as_posix()] = _wandb_file_sha256(path)
        out[key] = {
            "folder": folder.name,
            "meta": (data.run_id, data.entity, data.project, data.name, data.group, data.notes, sorted(data.tags),
                     data.start_time_ms, data.runtime_s, data.state),
            "config": json.dumps(_without_ledger(data.config), sort_keys=True),
            "summary": json.dumps(data.summary, sort_keys=True),
            "history_rows": data.history_rows,
            # repr keeps NaN comparable and -0.0 distinct
            "history": {k: sorted((repr(s), repr(v), t) for s, v, t in pts) for k, pts in data.history.items()},
            "string_series": {k: sorted(map(repr, pts)) for k, pts in data.string_series.items()},
            "artifacts": {name: (a["type"], a["metadata"], {e: (f.size, f.sha256, f.md5_b64)
                                                             for e, f in a["files"].items()})
                          for name, a in data.artifacts.items()},
            "files": files,
        }
    return out
