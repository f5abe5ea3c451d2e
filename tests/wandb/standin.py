"""A small local stand-in for a W&B server: enough of the wire protocol for wandb 0.31 to sync runs and for
`wandb.Api` to read them back. It records what the real `wandb` package sends so tests can assert on it.

This is a contract test, not a backend. It speaks:
- POST /graphql: the operations `wandb sync` sends (ServerFeaturesQuery, Viewer, UpsertBucket, artifact
  create / manifest / files / commit, CreateRunFiles) and the read queries `wandb.Api` makes for a run's
  config, summary, history and artifacts;
- POST /files/<entity>/<project>/<run>/file_stream: history, summary, events and console lines, stored by
  offset (as W&B does: a replayed chunk overwrites the same lines, it does not append);
- PUT /upload/<key>: file and artifact payloads; GET /download/<key> serves them back.
- Fault injection: `fail_next(pattern, n, status=429, retry_after=1)` answers the next n requests whose label
  matches (`graphql:<operation>`, `file_stream`, `upload`) with 429 (RateLimit-Remaining / RateLimit-Reset /
  Retry-After headers) or another status (500, 502, 503...: a burst of server errors); the returned `Fault` counts
  what it served and when.
Binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

DEFAULT_ENTITY = "standin-user"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients (wandb-core) drop keep-alive connections at will; that is not a test failure


@dataclass
class RunState:
    entity: str
    project: str
    name: str
    id: str
    upserts: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    display_name: str = ""
    group: str = ""
    notes: str = ""
    tags: list[str] = field(default_factory=list)
    created_at: str = ""
    # file_stream file name -> {offset: line}
    streams: dict[str, dict[int, str]] = field(default_factory=dict)
    # every (file name, offset, n lines) chunk received, replays included
    chunks: list[tuple[str, int, int]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    complete: bool = False
    files: dict[str, str] = field(default_factory=dict)  # run file name -> upload key

    def history(self) -> list[dict[str, Any]]:
        lines = self.streams.get("wandb-history.jsonl", {})
        return [json.loads(lines[k]) for k in sorted(lines)]

    @property
    def state(self) -> str:
        if not self.complete:
            return "running"
        return "finished" if not self.exit_code else "failed"


@dataclass
class ArtifactState:
    id: str
    name: str  # collection name
    type: str
    digest: str
    entity: str
    project: str
    run_id: str
    metadata: str | None
    version: int
    state: str = "PENDING"
    manifest_key: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # entry path -> upload key


@dataclass
class Fault:
    pattern: re.Pattern[str]
    remaining: int
    status: int
    retry_after: float | None
    served: int = 0
    # (label, monotonic time) of every request this fault answered, and of the first one after each it let through
    hits: list[tuple[str, float]] = field(default_factory=list)


class StandIn:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.runs: dict[tuple[str, str, str], RunState] = {}
        self.artifacts: dict[str, ArtifactState] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, operation)
        self.faults: list[Fault] = []
        self.times: list[tuple[str, float]] = []  # (label, monotonic time) of every labelled request
        self.unknown: list[str] = []
        self.file_stream_delay = 0.0  # seconds per file-stream request: widens the window for a crash test
        self.upload_delay = 0.0  # seconds per PUT upload, likewise
        self._ids = 0
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, pattern: str, n: int = 1, status: int = 429, retry_after: float | None = 1.0) -> Fault:
        """Answer the next `n` matching requests with `status`; Retry-After (seconds) is sent with 429 and 503."""
        fault = Fault(re.compile(pattern), n, status, retry_after)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def served(self) -> int:
        return sum(f.served for f in self.faults)

    def run(self, entity: str, project: str, name: str) -> RunState:
        return self.runs[(entity, project, name)]

    def count(self, operation: str) -> int:
        return sum(1 for _m, _p, op in self.requests if op == operation)

    # -- helpers -----------------------------------------------------------------------------------------
    def _new_id(self, kind: str) -> str:
        self._ids += 1
        return base64.b64encode(f"{kind}:{self._ids}".encode()).decode()

    def _fault(self, label: str) -> Fault | None:
        with self.lock:
            self.times.append((label, time.monotonic()))
            for f in self.faults:
                if f.remaining > 0 and f.pattern.search(label):
                    f.remaining -= 1
                    f.served += 1
                    f.hits.append((label, time.monotonic()))
                    return f
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, body: bytes = b"", ctype: str = "application/json", **hdrs: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in hdrs.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                self.wfile.write(body)

            def _json(self, obj: Any, status: int = 200) -> None:
                self._send(status, json.dumps(obj).encode())

            def _maybe_fault(self, label: str) -> bool:
                fault = standin._fault(label)
                if fault is None:
                    return False
                hdrs = {}
                if fault.retry_after is not None and fault.status in (429, 503):
                    wait = f"{fault.retry_after:g}"
                    hdrs = {"Retry_After": wait, "RateLimit_Remaining": "0", "RateLimit_Reset": wait}
                message = "rate limit exceeded" if fault.status == 429 else "injected server error"
                self._send(fault.status, json.dumps({"errors": [{"message": message}]}).encode(), **hdrs)
                return True

            def do_POST(self) -> None:
                body = self._body()
                path = urlparse(self.path).path
                if path.endswith("/graphql"):
                    try:
                        req = json.loads(body or b"{}")
                    except ValueError:
                        self._json({"errors": [{"message": "bad json"}]}, 400)
                        return
                    op = req.get("operationName") or _op_name(req.get("query", ""))
                    standin.requests.append(("POST", path, op))
                    if self._maybe_fault(f"graphql:{op}"):
                        return
                    try:
                        data = standin._graphql(op, req.get("query", ""), req.get("variables") or {})
                    except KeyError as exc:
                        print(f"standin: {op} refers to something unknown: {exc}", file=sys.stderr)
                        self._json({"data": None, "errors": [{"message": f"not found: {exc}"}]})
                        return
                    self._json({"data": data})
                    return
                m = re.match(r"^/files/([^/]+)/([^/]+)/([^/]+)/file_stream$", path)
                if m:
                    standin.requests.append(("POST", path, "file_stream"))
                    if standin.file_stream_delay:
                        time.sleep(standin.file_stream_delay)
                    if self._maybe_fault("file_stream"):
                        return
                    standin._file_stream(m.group(1), m.group(2), m.group(3), json.loads(body or b"{}"))
                    self._json({"exitcode": None, "limits": {}})
                    return
                standin.requests.append(("POST", path, "?"))
                standin.unknown.append(f"POST {path}")
                self._json({}, 404)

            def do_PUT(self) -> None:
                body = self._body()
                path = urlparse(self.path).path
                standin.requests.append(("PUT", path, "upload"))
                if standin.upload_delay:
                    time.sleep(standin.upload_delay)
                if self._maybe_fault("upload"):
                    return
                key = path[len("/upload/") :]
                with standin.lock:
                    standin.blobs[key] = body
                self._send(200, b"", "text/plain")

            def do_GET(self) -> None:
                path = urlparse(self.path).path
                standin.requests.append(("GET", path, "download"))
                if path.startswith("/download/"):
                    key = path[len("/download/") :]
                    data = standin.blobs.get(key)
                    if data is None:
                        self._send(404, b"")
                    else:
                        self._send(200, data, "application/octet-stream")
                    return
                if path in ("/", "/healthz"):
                    self._json({"ok": True})
                    return
                standin.unknown.append(f"GET {self.path}")
                self._send(404, b"")

        return Handler

    # -- file stream -------------------------------------------------------------------------------------
    def _file_stream(self, entity: str, project: str, name: str, body: dict[str, Any]) -> None:
        with self.lock:
            run = self.runs.get((entity, project, name))
            if run is None:
                run = self._upsert_run({"name": name, "project": project, "entity": entity})
            for fname, chunk in (body.get("files") or {}).items():
                offset = int(chunk.get("offset", 0))
                content = chunk.get("content") or []
                run.chunks.append((fname, offset, len(content)))
                lines = run.streams.setdefault(fname, {})
                for i, line in enumerate(content):
                    lines[offset + i] = line
                if fname == "wandb-summary.json" and content:
                    run.summary = json.loads(content[-1])
            if body.get("complete"):
                run.complete = True
                run.exit_code = body.get("exitcode")

    # -- GraphQL -----------------------------------------------------------------------------------------
    def _graphql(self, op: str, query: str, v: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                self.unknown.append(op)
                print(f"standin: unknown operation {op}: {json.dumps(v)[:300]}\n{query}", file=sys.stderr)
                return {}
            return handler(query, v.get("input", v) if isinstance(v.get("input"), dict) else v)

    def _op_ServerFeaturesQuery(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        return {"serverInfo": {"features": []}}

    def _op_Viewer(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        return {"viewer": _viewer()}

    _op_ViewerEntity = _op_Viewer
    _op_GetDefaultEntity = _op_Viewer
    _op_GetViewer = _op_Viewer

    def _upsert_run(self, v: dict[str, Any]) -> RunState:
        entity = v.get("entity") or v.get("entityName") or DEFAULT_ENTITY
        project = v.get("project") or v.get("modelName") or "uncategorized"
        name = v.get("name") or self._new_id("Run")
        key = (entity, project, name)
        run = self.runs.get(key)
        if run is None:
            run = self.runs[key] = RunState(entity, project, name, self._new_id("Run"))
            run.created_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        run.upserts.append(dict(v))
        if v.get("config"):
            run.config = json.loads(v["config"])
        for attr, var in (("display_name", "displayName"), ("group", "groupName"), ("notes", "notes")):
            if v.get(var) is not None:
                setattr(run, attr, v[var])
        if v.get("tags") is not None:
            run.tags = list(v["tags"])
        return run

    def _op_UpsertBucket(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        existed = (v.get("entity") or DEFAULT_ENTITY, v.get("project") or "uncategorized", v.get("name")) in self.runs
        run = self._upsert_run(v)
        return {
            "upsertBucket": {
                "bucket": {
                    "id": run.id,
                    "name": run.name,
                    "displayName": run.display_name,
                    "description": run.notes,
                    "config": json.dumps(run.config),
                    "sweepName": None,
                    "project": {"id": self._new_id("Project"), "name": run.project,
                                "entity": {"id": "RW50aXR5OjE=", "name": run.entity}},
                    "historyLineCount": len(run.streams.get("wandb-history.jsonl", {})),
                },
                "inserted": not existed,
            }
        }

    # the target's own tag/config update of an older generation (targets/wandb/loader.py: _SUPERSEDE)
    def _op_NeptuneMigrationSupersede(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        return self._op_UpsertBucket(q, v)

    def _op_RunResumeStatus(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        run = self.runs.get((v.get("entity") or DEFAULT_ENTITY, v.get("project"), v.get("name")))
        if run is None:
            entity = {"id": "x", "name": DEFAULT_ENTITY}
            return {"model": {"id": "UHJvamVjdDox", "name": v.get("project"), "entity": entity, "bucket": None}}
        return {"model": {"id": "UHJvamVjdDox", "name": run.project, "entity": {"id": "x", "name": run.entity},
                          "bucket": _bucket_for_resume(run)}}

    # reads (wandb.Api) -----------------------------------------------------------------------------------
    def _find_run(self, v: dict[str, Any]) -> RunState | None:
        return self.runs.get((v.get("entity") or DEFAULT_ENTITY, v.get("project"), v.get("name")))

    def _run_node(self, run: RunState, v: dict[str, Any]) -> dict[str, Any]:
        history = run.history()
        last = max((row.get("_step", -1) for row in history), default=-1)
        node = {
            "id": run.id, "projectId": 1, "tags": run.tags, "name": run.name,
            "displayName": run.display_name, "sweepName": None, "state": run.state,
            "config": json.dumps(run.config), "group": run.group, "jobType": None, "commit": None,
            "readOnly": False, "createdAt": run.created_at, "heartbeatAt": run.created_at,
            "description": run.notes, "notes": run.notes, "systemMetrics": "{}",
            "summaryMetrics": json.dumps(run.summary), "historyLineCount": len(history),
            "user": {"name": DEFAULT_ENTITY, "username": DEFAULT_ENTITY},
            "historyKeys": {"lastStep": last, "keys": {}},
        }
        if "minStep" in v or "samples" in v:
            lo = v.get("minStep") or 0
            hi = v.get("maxStep")
            # Served as received (a re-encoded line would lose what JSON parsing loses, such as the sign of -0).
            raw = run.streams.get("wandb-history.jsonl", {})
            lines = [raw[k] for k in sorted(raw)]
            rows = [line for line, r in zip(lines, history, strict=True)
                    if r.get("_step", 0) >= lo and (hi is None or r.get("_step", 0) < hi)]
            node["history"] = rows[: v.get("samples") or len(rows)]
        return node

    def _op_Run(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        run = self._find_run(v)
        return {"project": {"run": self._run_node(run, v) if run else None}}

    _op_RunFullHistory = _op_Run
    _op_NeptuneMigrationHistoryPage = _op_Run

    def _op_GetProjects(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        """`wandb.Api().projects(entity)`: every project holding a run of the entity, in one page."""
        entity = v.get("entity") or DEFAULT_ENTITY
        names = sorted({p for e, p, _n in self.runs if e == entity})
        nodes = [{"__typename": "Project", "id": self._new_id("Project"), "name": name, "entityName": entity,
                  "createdAt": "2026-01-01T00:00:00", "isBenchmark": False, "user": None} for name in names]
        return {"models": {"pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False},
                           "edges": [{"node": node} for node in nodes]}}

    def _op_NeptuneMigrationCopies(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        """The target's aliased lookup of one run id in many projects (targets/wandb/placement.py): `pN` names a
        project, answered under the same alias (null: no such project; run null: no such run there)."""
        entity, name = v.get("entity") or DEFAULT_ENTITY, v.get("name")
        known = {p for e, p, _n in self.runs if e == entity}
        out: dict[str, Any] = {}
        for alias, project in v.items():
            if re.fullmatch(r"p\d+", alias):
                run = self.runs.get((entity, project, name))
                out[alias] = None if project not in known else {
                    "run": None if run is None else {"name": run.name, "config": json.dumps(run.config)}}
        return out

    def _project_info(self, project: str, entity: str) -> dict[str, Any]:
        return {"id": "UHJvamVjdDox", "internalId": "1", "name": project, "entity": {"name": entity}}

    def _artifact_node(self, a: ArtifactState) -> dict[str, Any]:
        seq = {"__typename": "ArtifactSequence", "name": a.name, "project": self._project_info(a.project, a.entity)}
        coll = {"__typename": "ArtifactSequence", "name": a.name, "project": self._project_info(a.project, a.entity)}
        size = sum(len(self.blobs.get(k, b"")) for k in a.files.values())
        return {
            "__typename": "Artifact", "id": a.id, "artifactSequence": seq, "versionIndex": a.version,
            "artifactType": {"name": a.type}, "description": None, "metadata": a.metadata,
            "ttlDurationSeconds": -2, "ttlIsInherited": True, "tags": [], "historyStep": None,
            "state": a.state, "size": size, "digest": a.digest, "commitHash": None, "fileCount": len(a.files),
            "createdAt": "2026-01-01T00:00:00", "updatedAt": None,
            "aliases": [{"__typename": "ArtifactAlias", "id": a.id + "-latest", "alias": "latest",
                         "artifactCollection": coll}],
            "currentManifest": {"file": self._upload_file(a.manifest_key or "missing")},
        }

    def _op_RunOutputArtifacts(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        run = self.runs.get((v.get("entity") or DEFAULT_ENTITY, v.get("project"), v.get("run")))
        # A run's own artifacts: the same run id in another project (or entity) is another run.
        arts = [a for a in self.artifacts.values() if run and a.run_id == run.name and a.project == run.project
                and a.entity == run.entity and a.state == "COMMITTED"]
        return {"project": {"run": {"artifacts": {
            "totalCount": len(arts),
            "pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False},
            "edges": [{"node": self._artifact_node(a)} for a in arts],
        }}}}

    def _op_FetchArtifactManifest(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        a = self.artifacts[v["id"]]
        return {"artifact": {"currentManifest": {"file": self._upload_file(a.manifest_key or "missing")}}}

    def _op_GetArtifactMembershipFileUrls(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        arts = [a for a in self.artifacts.values() if a.name == v["collection"] and a.project == v["project"]
                and a.state == "COMMITTED"]
        alias = v["alias"]
        match = [a for a in arts if alias == f"v{a.version}"] or (
            [max(arts, key=lambda a: a.version)] if alias == "latest" and arts else [])
        if not match:
            return {"project": {"artifactCollection": None}}
        edges = [{"node": {"__typename": "File", "name": name, "directUrl": f"{self.url}/download/{key}"}}
                 for name, key in sorted(match[0].files.items())]
        return {"project": {"artifactCollection": {"__typename": "ArtifactSequence", "artifactMembership": {
            "files": {"pageInfo": {"__typename": "PageInfo", "endCursor": None, "hasNextPage": False},
                      "edges": edges}}}}}

    _op_NeptuneMigrationArtifactFiles = _op_GetArtifactMembershipFileUrls

    def _op_RunFiles(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        run = self._find_run(v)
        if run is None:
            return {"project": {"internalId": "1", "run": None}}
        names = v.get("fileNames") or sorted(run.files)
        edges = []
        for name in names:
            key = run.files.get(name)
            if key is None:
                continue
            data = self.blobs.get(key, b"")
            edges.append({"node": {"id": self._new_id("File"), "name": name, "url": f"{self.url}/download/{key}",
                                   "directUrl": f"{self.url}/download/{key}", "sizeBytes": len(data),
                                   "mimetype": "application/octet-stream", "updatedAt": "2026-01-01T00:00:00",
                                   "md5": base64.b64encode(hashlib.md5(data).digest()).decode()},
                          "cursor": name})
        return {"project": {"internalId": "1", "run": {"fileCount": len(run.files), "files": {
            "edges": edges, "pageInfo": {"endCursor": None, "hasNextPage": False}}}}}

    # artifacts ------------------------------------------------------------------------------------------
    def _op_CreateArtifact(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        name = v["artifactCollectionName"]
        same = [a for a in self.artifacts.values() if a.name == name and a.project == v.get("projectName")]
        for a in same:
            if a.digest == v["digest"] and a.state == "COMMITTED":
                return {"createArtifact": {"artifact": {"id": a.id, "state": a.state,
                                                        "artifactSequence": {"latestArtifact": {"id": a.id}}}}}
        for a in same:
            if a.digest == v["digest"]:
                art = a
                break
        else:
            art = ArtifactState(
                id=self._new_id("Artifact"), name=name, type=v.get("artifactTypeName", ""), digest=v["digest"],
                entity=v.get("entityName") or DEFAULT_ENTITY, project=v.get("projectName", ""),
                run_id=v.get("runName", ""), metadata=v.get("metadata"), version=len(same),
            )
            self.artifacts[art.id] = art
        latest = max((a for a in same if a.state == "COMMITTED"), key=lambda a: a.version, default=None)
        return {"createArtifact": {"artifact": {"id": art.id, "state": art.state, "artifactSequence": {
            "latestArtifact": {"id": latest.id} if latest else None}}}}

    def _upload_file(self, key: str) -> dict[str, Any]:
        return {"id": self._new_id("File"), "name": key, "displayName": key.rsplit("/", 1)[-1],
                "uploadUrl": f"{self.url}/upload/{key}", "uploadHeaders": [],
                "directUrl": f"{self.url}/download/{key}", "url": f"{self.url}/download/{key}",
                "storagePath": key, "artifact": None}

    def _op_CreateArtifactManifest(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        art = self.artifacts[v["artifactID"]]
        art.manifest_key = f"manifests/{art.id}/{v.get('name', 'wandb_manifest.json')}"
        return {"createArtifactManifest": {"artifactManifest": {"id": self._new_id("Manifest"),
                                                                 "file": self._upload_file(art.manifest_key)}}}

    def _op_UpdateArtifactManifest(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        art = next(a for a in self.artifacts.values() if a.manifest_key)
        manifest = {"id": "x", "file": self._upload_file(art.manifest_key or "missing")}
        return {"updateArtifactManifest": {"artifactManifest": manifest}}

    def _op_CreateArtifactFiles(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        edges = []
        for spec in v.get("artifactFiles", []):
            art = self.artifacts[spec["artifactID"]]
            key = f"artifacts/{art.id}/{spec['name']}"
            art.files[spec["name"]] = key
            f = self._upload_file(key)
            f["artifact"] = {"id": art.id}
            edges.append({"node": f})
        return {"createArtifactFiles": {"files": {"edges": edges}}}

    def _op_CommitArtifact(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        art = self.artifacts[v["artifactID"]]
        art.state = "COMMITTED"
        return {"commitArtifact": {"artifact": {"id": art.id, "digest": art.digest}}}

    def _op_CreateRunFiles(self, q: str, v: dict[str, Any]) -> dict[str, Any]:
        run = self.runs[(v.get("entity") or DEFAULT_ENTITY, v["project"], v["run"])]
        files = []
        for name in v.get("files", []):
            key = f"runs/{run.id}/{name}"
            run.files[name] = key
            files.append({"name": name, "uploadUrl": f"{self.url}/upload/{key}"})
        return {"createRunFiles": {"runID": run.id, "uploadHeaders": [], "files": files}}


def _op_name(query: str) -> str:
    m = re.search(r"\b(?:query|mutation)\s+(\w+)", query)
    return m.group(1) if m else "?"


def _viewer() -> dict[str, Any]:
    return {"id": "VXNlcjox", "entity": DEFAULT_ENTITY, "username": DEFAULT_ENTITY, "flags": None,
            "name": "Stand In", "deletedAt": None,
            "teams": {"edges": []}, "email": "standin@example.invalid", "admin": False,
            "defaultFramework": None, "photoUrl": None, "apiKeys": None}


def _bucket_for_resume(run: RunState) -> dict[str, Any]:
    return {"id": run.id, "name": run.name, "summaryMetrics": json.dumps(run.summary),
            "displayName": run.display_name, "logLineCount": 0,
            "historyLineCount": len(run.streams.get("wandb-history.jsonl", {})),
            "eventsLineCount": 0, "historyTail": "[]", "eventsTail": "[]", "config": json.dumps(run.config),
            "tags": run.tags, "wandbConfig": "{}"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    s = StandIn().start()
    print(s.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        s.stop()
