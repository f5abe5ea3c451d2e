"""The sandbox HTTP server: one in-memory model served over both Neptune APIs on 127.0.0.1.

with Sandbox([demo_project()], port=0) as sb:
    env = sb.env()            # NEPTUNE_API_TOKEN, NEPTUNE_PROJECT, OAUTHLIB_INSECURE_TRANSPORT, ...
    sb.faults.add(r"/entries/search", "429", nth=1, retry_after=0.2)
    ...                       # run neptune-query / neptune 1.x with env
    sb.request_log            # [LoggedRequest(method, path, query, body, status), ...]
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

from neptune_migration.sandbox import api2, api3
from neptune_migration.sandbox.auth import Auth, make_api_token
from neptune_migration.sandbox.changes import Changes
from neptune_migration.sandbox.faults import Faults
from neptune_migration.sandbox.store import Store
from neptune_migration.sandbox.web import HttpError, Reply, Request, Router
from neptune_migration.sandbox.world import Project

log = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes per write of a streamed reply

# Routes a client reaches without a bearer token.
_OPEN_ROUTES = (
    "/sandbox/zip/",
    "/api/backend/v1/authorization/oauth-token",
    "/auth/",
    api3.BLOB_PREFIX,
    "/api/backend/swagger.json",
    "/api/leaderboard/swagger.json",
    "/api/artifacts/swagger.json",
    "/api/backend/v1/clients/config",
)


class LoggedRequest(NamedTuple):
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON body, or None
    status: int  # 0 when the connection was dropped on purpose


class Sandbox:
    """A Neptune API server for tests and demos.

    Requests read the model without locks: change it before ``start()``, add whole projects with
    ``add_project``, or change a served project through ``changes`` (copy-on-write, see changes.py).
    """

    def __init__(
        self,
        projects: Iterable[Project] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "sandbox-api-key",
        series_page_size: int = 1000,
        fault_seed: int = 0,
        request_log_limit: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.store = Store.build(projects, series_page_size=series_page_size)
        self.faults = Faults(seed=fault_seed)
        # Append points, add runs, set params, add files, rewrite a series while clients are being served.
        self.changes = Changes(self.store)
        self.request_log: list[LoggedRequest] = []
        # tests keep every request; a long-running `serve` keeps the newest ones only
        self.request_log_limit = request_log_limit
        self._log_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.router = Router()
        self.auth: Auth | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> Sandbox:
        if self._httpd is not None:
            return self
        handler = _make_handler(self)
        self._httpd = _Server((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.store.base_url = self.url
        self.api_token = make_api_token(self.url, self.api_key)
        self.auth = Auth(self.url, self.api_token)
        self.router = Router()
        self.router.add("GET", "/api/backend/v1/authorization/oauth-token", self.auth.exchange)
        self.router.add("POST", "/auth/realms/neptune/protocol/openid-connect/token", self.auth.refresh)
        api3.register(self.router, self.store)
        api2.register(self.router, self.store)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"neptune-sandbox-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_project(self, project: Project) -> None:
        """Serve one more project, also while running (its files get storage paths and become downloadable)."""
        added = Store.build([project])
        if project.project_id in self.store.projects:
            raise ValueError(f"project {project.project_id} is already served")
        self.store.projects[project.project_id] = project
        self.store.files.update(added.files)

    # -------------------------------------------------------------- what clients need
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def projects(self) -> dict[str, Project]:
        return self.store.projects

    def env(self, project: str | None = None) -> dict[str, str]:
        """Environment both clients need to talk to this sandbox."""
        if self._httpd is None:
            raise RuntimeError("start the sandbox first")
        project = project or next(iter(self.store.projects), None)
        env = {
            "NEPTUNE_API_TOKEN": self.api_token,
            "OAUTHLIB_INSECURE_TRANSPORT": "1",  # the 1.x client refuses OAuth over plain http otherwise
            "NEPTUNE_VERIFY_SSL": "false",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        if project:
            env["NEPTUNE_PROJECT"] = project
        return env

    def requests_to(self, path_regex: str) -> list[LoggedRequest]:
        import re

        pattern = re.compile(path_regex)
        with self._log_lock:
            return [r for r in self.request_log if pattern.search(r.path)]

    # -------------------------------------------------------------- dispatch
    def _record(self, req: Request, status: int) -> None:
        entry = LoggedRequest(
            req.method, req.path, {k: v[-1] for k, v in req.query.items()}, req.json_or_none(), status
        )
        with self._log_lock:
            self.request_log.append(entry)
            if self.request_log_limit is not None and len(self.request_log) > self.request_log_limit:
                del self.request_log[: len(self.request_log) - self.request_log_limit]

    def handle(self, req: Request) -> Reply | None:
        """Serve one request; ``None`` means drop the connection."""
        fault = self.faults.pick(req.method, req.path)
        if fault is not None:
            if fault.kind == "drop":
                self._record(req, 0)
                return None
            if fault.kind == "slow":
                time.sleep(fault.delay)
            else:
                status = int(fault.kind)
                reply = Reply.error(status, f"sandbox fault {fault.kind}")
                if fault.retry_after is not None and status in (429, 503):
                    reply.headers["Retry-After"] = f"{fault.retry_after:g}"
                self._record(req, status)
                return reply
        found = self.router.resolve(req.method, req.path)
        if found is None:
            reply = Reply.error(404, f"sandbox has no route {req.method} {req.path}")
        else:
            handler, match = found
            req.match = match
            try:
                if not req.path.startswith(_OPEN_ROUTES) and self.auth is not None:
                    self.auth.check_bearer(req)
                reply = handler(req)
            except HttpError as e:
                reply = Reply.error(e.status, e.message)
            except Exception as e:  # a sandbox bug must reach the test as a 500, not hang the client
                log.exception("sandbox handler failed for %s %s", req.method, req.path)
                reply = Reply.error(500, f"sandbox error: {type(e).__name__}: {e}")
        self._record(req, reply.status)
        return reply


# A client that went away mid-reply (killed, timed out, dropped its keep-alive connection) is not a server error.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], _CLIENT_GONE):
            log.debug("client %s went away mid-request", client_address)
            return
        super().handle_error(request, client_address)  # anything else keeps its traceback on stderr


def _make_handler(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as both clients expect

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            req = Request.build(self.command, self.path, headers, body)
            reply = sandbox.handle(req)
            if reply is None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                length = reply.length if reply.stream is not None else len(reply.body)
                self.send_header("Content-Length", str(length))
                for name, value in reply.headers.items():
                    # headers are Latin-1; a handler's stray character must not break the connection
                    self.send_header(name, value.encode("latin-1", "replace").decode("latin-1"))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if reply.stream is None:
                    self.wfile.write(reply.body)
                    return
                # file payloads go out in chunks, so a 2 GB file costs the sandbox 1 MB of memory
                left = length
                while left > 0:
                    chunk = reply.stream.read(min(left, _CHUNK))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    left -= len(chunk)
                if left:
                    self.close_connection = True  # the file shrank under us: the client sees a short body
            finally:
                if reply.stream is not None:
                    reply.stream.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve

    return Handler
