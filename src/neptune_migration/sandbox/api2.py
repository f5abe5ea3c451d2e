"""The Neptune 2.x read API as the neptune 1.14.0.post2 client calls it (JSON, described by swagger.py).

Differences from the 3.x layer that the client depends on:
- containers are addressed by ``experimentId``; the sandbox uses ``ws/proj/SYS-ID`` as that id;
- the 2.x type names (``imageSeries`` for file series, ``fileSet``, ``artifact``); histogram series do not exist;
- datetimes travel as ISO-8601 strings with a ``Z``; NaN and infinities as the JSON extensions Python reads;
- the search does not hide trashed runs (the client filters on ``sys/trashed`` itself).
"""

from __future__ import annotations

import io
import math
import re
import threading
import uuid
import zipfile
from typing import Any
from urllib.parse import quote

from neptune_migration.sandbox import nql
from neptune_migration.sandbox.store import Store
from neptune_migration.sandbox.swagger import SPECS
from neptune_migration.sandbox.web import HttpError, Reply, Request, Router
from neptune_migration.sandbox.world import ArtifactValue, Attribute, FileValue, Project, Run, float_series_stats

TYPES_2X = {
    "float": "float",
    "int": "int",
    "bool": "bool",
    "string": "string",
    "datetime": "datetime",
    "string_set": "stringSet",
    "float_series": "floatSeries",
    "string_series": "stringSeries",
    "file_series": "imageSeries",
    "file": "file",
    "file_set": "fileSet",
    "artifact": "artifact",
}
KIND_TO_API = {"run": "run", "model": "model", "model_version": "modelVersion", "project": "project"}
ZIP_PREFIX = "/sandbox/zip/"


def register(router: Router, store: Store) -> None:
    api = Api2(store)
    for name in SPECS:
        router.add("GET", f"/api/{name}/swagger.json", api.swagger(name))
    b, lb = "/api/backend/v1", "/api/leaderboard/v1"
    router.add("GET", f"{b}/clients/config", api.client_config)
    router.add("GET", f"{b}/projects", api.list_projects)
    router.add("GET", f"{b}/projects/get", api.get_project)
    router.add("GET", f"{b}/myOrganizations", api.list_organizations)
    router.add("GET", f"{lb}/experiments", api.get_experiment)
    router.add("GET", f"{lb}/attributes", api.get_attributes)
    for kind in ("float", "int", "bool", "string", "datetime", "file", "stringSet", "floatSeries", "stringSeries"):
        router.add("GET", f"{lb}/attributes/{kind}", api.single_attribute(kind))
    router.add("GET", f"{lb}/attributes/artifact", api.single_attribute("artifact"))
    router.add("GET", f"{lb}/attributes/series/float", api.series_values("float_series"))
    router.add("GET", f"{lb}/attributes/series/string", api.series_values("string_series"))
    router.add("GET", f"{lb}/attributes/series/image", api.image_series_count)
    router.add("GET", f"{lb}/attributes/series/image/value", api.image_series_value)
    router.add("GET", f"{lb}/attributes/download", api.download_file)
    router.add("GET", f"{lb}/attributes/fileSet/ls", api.ls_file_set)
    router.add("POST", f"{lb}/attributes/fileSet/zip", api.prepare_zip)
    router.add("GET", f"{lb}/storage/downloadRequest", api.download_request)
    router.add("GET", ZIP_PREFIX + "(?P<id>[0-9a-f-]+)", api.zip_blob)
    router.add("POST", f"{lb}/leaderboard/attributes/search", api.search_attributes)
    router.add("POST", f"{lb}/leaderboard/entries/search/?", api.search_entries)
    router.add("GET", "/api/artifacts/v1/artifacts/files", api.artifact_files)


def disposition(name: str) -> str:
    """A Content-Disposition the 1.x client can read: it takes the text after ``filename=`` as the name, and
    HTTP headers are Latin-1, so other characters (and quotes) are percent-encoded rather than lost."""
    safe = "".join(ch if ch != '"' and ord(ch) < 256 else quote(ch) for ch in name)
    return f'attachment; filename="{safe}"'


def iso(value: Any) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def container_id(project: Project, run: Run) -> str:
    return project.project_id if run.kind == "project" else f"{project.project_id}/{run.sys_id}"


def finite(value: Any) -> Any:
    """2.x never held NaN or infinities (the 1.x client drops them when logging), and the client's JSON
    parser (simplejson) rejects them: they travel as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def visible_points(points: list[Any]) -> list[Any]:
    """Series points a 2.x server could hold: non-finite float points never reached it."""
    return [p for p in points if not (isinstance(p.value, float) and not math.isfinite(p.value))]


def properties(attr: Attribute) -> dict[str, Any] | None:
    """The ``<type>Properties`` object of one attribute, or None when 2.x cannot show it."""
    t, v = attr.type, attr.value
    wire = TYPES_2X.get(t)
    if wire is None:
        return None
    out: dict[str, Any] = {"attributeName": attr.path, "attributeType": wire}
    if t == "datetime":
        out["value"] = iso(v)
    elif t in ("float", "int", "bool", "string"):
        out["value"] = finite(v)
    elif t == "string_set":
        out["values"] = sorted(v)
    elif t in ("float_series", "string_series", "file_series"):
        v = visible_points(v)
        if v:
            out["lastStep"] = v[-1].step
            if t != "file_series":
                out["last"] = v[-1].value
        if t == "float_series" and v:
            stats = float_series_stats(v)
            out |= {k: finite(stats[k]) for k in ("min", "max", "average", "variance")}
    elif t == "file":
        name, _, ext = v.name.rpartition(".")
        out |= {"name": name or v.name, "ext": ext if name else "", "size": v.size, "mimeType": v.mime_type}
    elif t == "file_set":
        out["size"] = sum(len(b) for b in v.values())
    elif t == "artifact":
        out["hash"] = v.hash
    return out


# 2.x types sys/state as experimentState with its own words for the two states
STATE_TO_API = {"active": "running", "inactive": "idle"}


def attribute_json(attr: Attribute) -> dict[str, Any] | None:
    if attr.path == "sys/state" and attr.type == "string":
        value = STATE_TO_API.get(attr.value, attr.value)
        return {
            "name": attr.path,
            "type": "experimentState",
            "experimentStateProperties": {
                "attributeName": attr.path,
                "attributeType": "experimentState",
                "value": value,
            },
        }
    props = properties(attr)
    if props is None:
        return None
    wire = TYPES_2X[attr.type]
    return {"name": attr.path, "type": wire, f"{wire}Properties": props}


class Api2:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._zips: dict[str, tuple[Project, Run, str]] = {}
        self._lock = threading.Lock()

    # -------------------------------------------------------------- specs and config
    def swagger(self, name: str):  # type: ignore[no-untyped-def]
        def handler(req: Request) -> Reply:
            return Reply.json(SPECS[name])

        return handler

    def client_config(self, req: Request) -> Reply:
        base = self.store.base_url
        return Reply.json(
            {
                "apiUrl": base,
                "applicationUrl": base,
                # must not be null: the client refuses to start without version info
                "pyLibVersions": {
                    "minRecommendedVersion": None,
                    "minCompatibleVersion": None,
                    "maxCompatibleVersion": None,
                },
                "multiPartUpload": {"enabled": False},
                "artifacts": {"enabled": True, "apiVersion": 2},
                "sysNameSetByBackend": False,
            }
        )

    # -------------------------------------------------------------- projects
    @staticmethod
    def _project_dto(p: Project) -> dict[str, Any]:
        return {
            "id": p.project_id,
            "name": p.name,
            "organizationName": p.workspace,
            "organizationId": p.workspace,
            "projectKey": p.key,
            "version": 2,
            "visibility": "priv",
            "description": "",
        }

    def list_projects(self, req: Request) -> Reply:
        projects = list(self.store.projects.values())
        ws = req.arg("organizationIdentifier")
        if ws:
            projects = [p for p in projects if p.workspace == ws]
        term = req.arg("searchTerm")
        if term:
            projects = [p for p in projects if term.lower() in p.name.lower()]
        offset = int(req.arg("offset") or 0)
        limit = int(req.arg("limit") or 10_000)
        page = projects[offset : offset + limit]
        return Reply.json(
            {
                "entries": [self._project_dto(p) for p in page],
                "matchingItemCount": len(projects),
                "totalItemCount": len(self.store.projects),
            }
        )

    def get_project(self, req: Request) -> Reply:
        return Reply.json(self._project_dto(self.store.project(req.need_arg("projectIdentifier"))))

    def list_organizations(self, req: Request) -> Reply:
        names = sorted({p.workspace for p in self.store.projects.values()})
        return Reply.json([{"id": n, "name": n} for n in names])

    # -------------------------------------------------------------- one container
    def _container(self, req: Request) -> tuple[Project, Run]:
        identifier = req.need_arg("experimentId")
        hit = self.store.run_by_identifier(identifier)
        if hit is None:
            raise HttpError(404, f"experiment {identifier} not found")
        return hit

    def _attribute(self, req: Request, *types: str) -> tuple[Project, Run, Attribute]:
        project, run = self._container(req)
        path = req.need_arg("attribute")
        attr = run.attributes.get(path)
        if attr is None or (types and attr.type not in types):
            raise HttpError(404, f"attribute {path} not found")
        return project, run, attr

    def get_experiment(self, req: Request) -> Reply:
        project, run = self._container(req)
        return Reply.json(
            {
                "id": container_id(project, run),
                "type": KIND_TO_API[run.kind],
                "shortId": run.sys_id,
                "organizationName": project.workspace,
                "organizationId": project.workspace,
                "projectName": project.name,
                "projectId": project.project_id,
                "trashed": run.trashed,
            }
        )

    def get_attributes(self, req: Request) -> Reply:
        _, run = self._container(req)
        attrs = [a for a in (attribute_json(x) for x in run.attributes.values()) if a is not None]
        return Reply.json({"attributes": attrs})

    def single_attribute(self, wire: str):  # type: ignore[no-untyped-def]
        types = [t for t, w in TYPES_2X.items() if w == wire]

        def handler(req: Request) -> Reply:
            _, _, attr = self._attribute(req, *types)
            return Reply.json(properties(attr))

        return handler

    def series_values(self, type_: str):  # type: ignore[no-untyped-def]
        def handler(req: Request) -> Reply:
            _, _, attr = self._attribute(req, type_)
            offset = int(req.arg("offset") or 0)
            limit = int(req.arg("limit") or 1000)
            points = visible_points(attr.value)
            page = points[offset : offset + limit]
            values = [{"step": p.step, "timestampMillis": p.timestamp_ms, "value": p.value} for p in page]
            return Reply.json({"totalItemCount": len(points), "values": values})

        return handler

    def image_series_count(self, req: Request) -> Reply:
        _, _, attr = self._attribute(req, "file_series")
        return Reply.json({"totalItemCount": len(attr.value)})

    def image_series_value(self, req: Request) -> Reply:
        _, _, attr = self._attribute(req, "file_series")
        index = int(req.need_arg("index"))
        if not 0 <= index < len(attr.value):
            raise HttpError(404, f"no element {index}")
        fv: FileValue = attr.value[index].value
        return Reply.streamed(fv.open(), fv.size, fv.mime_type or "application/octet-stream")

    def download_file(self, req: Request) -> Reply:
        _, _, attr = self._attribute(req, "file")
        fv: FileValue = attr.value
        reply = Reply.streamed(fv.open(), fv.size, "application/octet-stream")
        reply.headers["Content-Disposition"] = disposition(fv.name)
        return reply

    # -------------------------------------------------------------- file sets
    def ls_file_set(self, req: Request) -> Reply:
        _, run, attr = self._attribute(req, "file_set")
        prefix = (req.arg("path") or "").strip("/")
        prefix = f"{prefix}/" if prefix else ""
        entries: dict[str, dict[str, Any]] = {}
        modified = iso(run.attributes["sys/modification_time"].value)
        for rel, data in attr.value.items():
            if not rel.startswith(prefix):
                continue
            head, sep, _ = rel[len(prefix) :].partition("/")
            if sep:
                entries.setdefault(head, {"name": head, "size": 0, "mtime": modified, "fileType": "directory"})
            else:
                entries[head] = {"name": head, "size": len(data), "mtime": modified, "fileType": "file"}
        if prefix and not entries:
            raise HttpError(404, f"no such path {prefix}")
        return Reply.json(list(entries.values()))

    def prepare_zip(self, req: Request) -> Reply:
        project, run, attr = self._attribute(req, "file_set")
        request_id = str(uuid.uuid4())
        with self._lock:
            self._zips[request_id] = (project, run, attr.path)
        # the first poll already finds it ready: the client sleeps 0.5 s per unready poll
        return Reply.json({"id": request_id, "downloadUrl": None})

    def download_request(self, req: Request) -> Reply:
        request_id = req.need_arg("id")
        with self._lock:
            if request_id not in self._zips:
                raise HttpError(404, "no such download request")
        return Reply.json({"id": request_id, "downloadUrl": f"{self.store.base_url}{ZIP_PREFIX}{request_id}"})

    def zip_blob(self, req: Request) -> Reply:
        request_id = req.match.group("id") if req.match else ""
        with self._lock:
            found = self._zips.get(request_id)
        if found is None:
            raise HttpError(404, "no such download")
        _, run, path = found
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel, data in sorted(run.attributes[path].value.items()):
                zf.writestr(rel, data)
        reply = Reply(200, buffer.getvalue(), "application/zip")
        reply.headers["Content-Disposition"] = disposition(f"{path.rsplit('/', 1)[-1]}.zip")
        return reply

    # -------------------------------------------------------------- artifacts
    def artifact_files(self, req: Request) -> Reply:
        project = self.store.project(req.need_arg("projectIdentifier"))
        wanted = req.need_arg("hash")
        for run in project.runs:
            for attr in run.attributes.values():
                if attr.type == "artifact" and attr.value.hash == wanted:
                    value: ArtifactValue = attr.value
                    files = [
                        {
                            "filePath": f.file_path,
                            "fileHash": f.file_hash,
                            "type": f.type,
                            "size": f.size,
                            "metadata": [{"key": k, "value": v} for k, v in f.metadata],
                        }
                        for f in value.files
                    ]
                    return Reply.json({"files": files})
        raise HttpError(404, f"artifact {wanted} not found")

    # -------------------------------------------------------------- leaderboard search
    def _containers(self, project: Project, types: list[str] | None) -> list[Run]:
        kinds = {k for k, api in KIND_TO_API.items() if not types or api in types}
        return [r for r in project.runs if r.kind in kinds]

    def search_attributes(self, req: Request) -> Reply:
        project = self.store.project(req.need_arg("projectIdentifier"))
        search = req.arg("search") or ""
        seen: dict[tuple[str, str], None] = {}
        for run in self._containers(project, req.query.get("type")):
            for attr in run.attributes.values():
                wire = "experimentState" if attr.path == "sys/state" else TYPES_2X.get(attr.type)
                if wire is not None and (search in attr.path or _regex_hit(search, attr.path)):
                    seen[(attr.path, wire)] = None
        return Reply.json({"entries": [{"name": n, "type": t} for n, t in sorted(seen)]})

    def search_entries(self, req: Request) -> Reply:
        project = self.store.project(req.need_arg("projectIdentifier"))
        params = req.json()
        candidates = self._containers(project, req.query.get("type"))
        query = (params.get("query") or {}).get("query")
        try:
            selected = nql.filter_runs(query, candidates)
        except nql.NqlError as e:
            reply = Reply.json({"title": "Syntax error", "message": str(e), "code": 400}, status=400)
            return reply
        sorting = params.get("sorting") or {}
        sort_by = sorting.get("sortBy") or {"name": "sys/creation_time", "type": "datetime"}
        agg = sorting.get("aggregationMode")
        col = nql.column_of(
            sort_by.get("name", "sys/creation_time"), sort_by.get("type"), None if agg == "none" else agg
        )
        order = {id(r): i for i, r in enumerate(project.runs)}
        selected.sort(key=lambda r: (nql.sort_key(r, col), order[id(r)]), reverse=sorting.get("dir") == "descending")
        page = params.get("pagination") or {}
        offset, limit = int(page.get("offset") or 0), int(page.get("limit") if page.get("limit") is not None else 100)
        if offset > 10_000:
            raise HttpError(400, "offset above 10000 is not allowed")  # the real server's limit the client works around
        projection = [f["path"] for f in params.get("attributeFilters") or []] or None
        entries = []
        for run in selected[offset : offset + limit]:
            attrs = (
                run.attributes.values()
                if projection is None
                else [run.attributes[p] for p in projection if p in run.attributes]
            )
            entries.append(
                {
                    "experimentId": container_id(project, run),
                    "type": KIND_TO_API[run.kind],
                    "attributes": [a for a in (attribute_json(x) for x in attrs) if a is not None],
                }
            )
        return Reply.json({"matchingItemCount": len(selected), "entries": entries})


def _regex_hit(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False
