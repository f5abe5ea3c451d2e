"""The Neptune 3.x read API as neptune-query 1.14.1 calls it.

Requests are JSON (camelCase); replies are protobuf except attribute definitions and signed URLs.
The wire facts are in ../shared/notes/neptune-api.md; the comments below say where the client's own
paging logic constrains what the server may answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

try:  # neptune-api (a neptune-scale dependency) ships the same messages and imports 1 s faster
    from neptune_api.proto.neptune_pb.api.v1.model import (
        attributes_pb2,
        leaderboard_entries_pb2,
        series_values_pb2,
    )
except ImportError:  # pragma: no cover - neptune-query alone
    from neptune_query.generated.neptune_api.proto.neptune_pb.api.v1.model import (  # type: ignore[no-redef]
        attributes_pb2,
        leaderboard_entries_pb2,
        series_values_pb2,
    )

from neptune_migration.sandbox import nql
from neptune_migration.sandbox.store import Store
from neptune_migration.sandbox.web import HttpError, Reply, Request, Router
from neptune_migration.sandbox.world import (
    WIRE_TYPES,
    Attribute,
    Project,
    Run,
    lineage_attribute,
    lineage_points,
    series_stats,
    to_ms,
)

BLOB_PREFIX = "/sandbox/blob/"


def register(router: Router, store: Store) -> None:
    api = Api3(store)
    lb = "/api/leaderboard/v1"
    router.add("POST", f"{lb}/proto/leaderboard/entries/search/?", api.search_entries)
    router.add("POST", f"{lb}/leaderboard/attributes/definitions/query", api.attribute_definitions)
    router.add("POST", f"{lb}/proto/leaderboard/attributes/query", api.attribute_values)
    router.add("POST", f"{lb}/proto/attributes/series/float", api.float_series)
    router.add("POST", f"{lb}/proto/attributes/series", api.series)
    router.add("POST", "/api/storagebridge/v1/signedUrl", api.signed_urls)
    router.add("GET", BLOB_PREFIX + "(?P<path>.+)", api.blob)


# ------------------------------------------------------------------ encoding helpers


def fill_attribute(dto: Any, attr: Attribute) -> None:
    """Fill a ProtoAttributeDTO from a model attribute."""
    wire = WIRE_TYPES[attr.type]
    dto.name = attr.path
    dto.type = wire
    t, v = attr.type, attr.value
    if t in ("float", "int", "string", "bool", "datetime"):
        props = getattr(dto, f"{t}_properties")
        props.value = to_ms(v) if t == "datetime" else v
    elif t == "string_set":
        props = dto.string_set_properties
        props.value.extend(sorted(v))
    elif t == "file":
        props = dto.file_ref_properties
        props.path, props.sizeBytes, props.mimeType = v.path, v.size, v.mime_type
    elif t == "float_series":
        props = dto.float_series_properties
        props.has_preview = any(p.is_preview for p in v)
        if v:
            for key, value in series_stats(attr).items():
                setattr(props, key, value)
    elif t == "string_series":
        props = dto.string_series_properties
        if v:
            props.last_step, props.last = v[-1].step, v[-1].value
    elif t == "file_series":
        props = dto.file_ref_series_properties
        if v:
            props.last_step = v[-1].step
            f = v[-1].value
            props.last.path, props.last.sizeBytes, props.last.mimeType = f.path, f.size, f.mime_type
    elif t == "histogram_series":
        props = dto.histogram_series_properties
        if v:
            props.last_step = v[-1].step
            h = v[-1].value
            props.last.type = h.type
            props.last.edges.extend(h.edges)
            props.last.values.extend(h.values)
    else:  # pragma: no cover - ATTRIBUTE_TYPES is closed
        raise AssertionError(t)
    props.attribute_name = attr.path
    props.attribute_type = wire


def _name_filter_matches(path: str, type_: str, body: dict[str, Any]) -> bool:
    names = body.get("attributeNamesFilter")
    if names is not None and path not in names:
        return False
    types = body.get("attributeFilter")
    if types and WIRE_TYPES[type_] not in {t.get("attributeType") for t in types}:
        return False
    alternatives = (body.get("attributeNameFilter") or {}).get("mustMatchAny")
    if not alternatives:
        return True
    for alt in alternatives:
        must = alt.get("mustMatchRegexes") or []
        must_not = alt.get("mustNotMatchRegexes") or []
        if all(re.search(r, path) for r in must) and not any(re.search(r, path) for r in must_not):
            return True
    return False


def _int_token(token: str | None) -> int:
    try:
        return int(token) if token else 0
    except ValueError as e:
        raise HttpError(400, f"bad page token {token!r}") from e


class Api3:
    def __init__(self, store: Store) -> None:
        self.store = store

    # -------------------------------------------------------------- runs and experiments
    def _runs_for_ids(self, ids: Iterable[str] | None, projects: Iterable[Project]) -> list[tuple[Project, Run]]:
        if ids is None:
            return [(p, r) for p in projects for r in p.runs if not r.trashed and r.kind == "run"]
        found = []
        for identifier in ids:
            hit = self.store.run_by_identifier(identifier)
            if hit is not None and hit[1].kind == "run":
                found.append(hit)
        return found

    def search_entries(self, req: Request) -> Reply:
        project = self.store.project(req.arg("projectIdentifier"))
        body = req.json()
        if body.get("experimentLeader"):
            candidates = project.experiment_leaders()
        else:
            candidates = [r for r in project.runs if not r.trashed and r.kind == "run"]
        query = (body.get("query") or {}).get("query")
        try:
            selected = nql.filter_runs(query, candidates)
        except nql.NqlError as e:
            raise HttpError(400, str(e)) from e
        sorting = body.get("sorting") or {}
        sort_by = sorting.get("sortBy") or {"name": "sys/creation_time", "type": "datetime"}
        col = nql.column_of(
            sort_by.get("name", "sys/creation_time"), sort_by.get("type"), sorting.get("aggregationMode")
        )
        order = {id(r): i for i, r in enumerate(project.runs)}
        descending = sorting.get("dir", "descending") == "descending"
        selected.sort(key=lambda r: (nql.sort_key(r, col), order[id(r)]), reverse=descending)
        page = body.get("pagination") or {}
        offset = int(page.get("offset") or 0)
        limit = int(page.get("limit") if page.get("limit") is not None else 50)
        chosen = selected[offset : offset + limit]
        projection = [f.get("path") for f in body.get("attributeFilters") or []]

        dto = leaderboard_entries_pb2.ProtoLeaderboardEntriesSearchResultDTO()
        dto.matching_item_count = len(selected)
        for run in chosen:
            entry = dto.entries.add()
            entry.experiment_id = run.sys_id
            entry.type = "run"
            entry.project_id = project.project_id
            entry.project_name = project.name
            entry.organization_id = project.workspace
            entry.organization_name = project.workspace
            for path in projection:
                attr = run.attributes.get(path)
                if attr is not None and attr.type in WIRE_TYPES:
                    fill_attribute(entry.attributes.add(), attr)
        return Reply.proto(dto)

    # -------------------------------------------------------------- attributes
    def attribute_definitions(self, req: Request) -> Reply:
        body = req.json()
        projects = [self.store.project(p) for p in body.get("projectIdentifiers") or []]
        runs = self._runs_for_ids(body.get("experimentIdsFilter"), projects)
        seen: dict[tuple[str, str], None] = {}
        for _, run in runs:
            for attr in run.attributes.values():
                if attr.type in WIRE_TYPES and _name_filter_matches(attr.path, attr.type, body):
                    seen[(attr.path, WIRE_TYPES[attr.type])] = None
        definitions = sorted(seen)
        page = body.get("nextPage") or {}
        start = _int_token(page.get("nextPageToken"))
        limit = int(page.get("limit") or 10_000)
        chunk = definitions[start : start + limit]
        end = start + len(chunk)
        next_page: dict[str, Any] = {"limit": limit}
        if end < len(definitions):
            next_page["nextPageToken"] = str(end)
        return Reply.json({"entries": [{"name": n, "type": t} for n, t in chunk], "nextPage": next_page})

    def attribute_values(self, req: Request) -> Reply:
        body = req.json()
        project = self.store.project(req.arg("projectIdentifier"))
        runs = self._runs_for_ids(body.get("experimentIdsFilter"), [project])
        # a page holds at most `limit` attribute values; a run may span pages
        pairs = [
            (run, attr)
            for _, run in runs
            for attr in run.attributes.values()
            if attr.type in WIRE_TYPES and _name_filter_matches(attr.path, attr.type, body)
        ]
        page = body.get("nextPage") or {}
        start = _int_token(page.get("nextPageToken"))
        limit = int(page.get("limit") or 10_000)
        chunk = pairs[start : start + limit]
        dto = attributes_pb2.ProtoQueryAttributesResultDTO()
        current_run, entry = None, None
        for run, attr in chunk:
            if run is not current_run:
                current_run, entry = run, dto.entries.add()
                entry.experimentId = run.sys_id
                entry.experimentShortId = run.sys_id
            fill_attribute(entry.attributes.add(), attr)  # type: ignore[union-attr]
        end = start + len(chunk)
        dto.nextPage.limit = limit
        if end < len(pairs):
            dto.nextPage.nextPageToken = str(end)
        return Reply.proto(dto)

    # -------------------------------------------------------------- series
    def _series_points(self, series: dict[str, Any]) -> tuple[str, list[Any]] | None:
        holder = (series.get("holder") or {}).get("identifier", "")
        hit = self.store.run_by_identifier(holder)
        if hit is None:
            return None
        _, run = hit
        path = series.get("attribute", "")
        full = series.get("lineage", "NONE") == "FULL"
        attr = lineage_attribute(run, path, full=full)
        if attr is None or not attr.is_series:
            return None
        return attr.type, lineage_points(run, path, full=full)

    @staticmethod
    def _in_range(points: list[Any], step_range: dict[str, Any] | None, descending: bool) -> list[Any]:
        lo = (step_range or {}).get("from")
        hi = (step_range or {}).get("to")
        out = [p for p in points if (lo is None or p.step >= lo) and (hi is None or p.step <= hi)]
        return out[::-1] if descending else out

    def float_series(self, req: Request) -> Reply:
        body = req.json()
        descending = body.get("order", "ascending") == "descending"
        limit = body.get("perSeriesPointsLimit")
        dto = series_values_pb2.ProtoFloatSeriesValuesResponseDTO()
        for request in body.get("requests") or []:
            series = request.get("series") or {}
            found = self._series_points(series)
            if found is None or found[0] != "float_series":
                continue
            points = found[1]
            if not series.get("includePreview"):
                points = [p for p in points if not p.is_preview]
            points = self._in_range(points, body.get("stepRange"), descending)
            after = request.get("afterStep")
            if after is not None:
                points = [p for p in points if (p.step < after if descending else p.step > after)]
            total = len(points)
            # the client stops paging on a short page, so a page must be exactly `limit` when more remain
            if limit is not None:
                points = points[: int(limit)]
            one = dto.series.add()
            one.requestId = request.get("requestId", "")
            one.series.total_item_count = total
            for p in points:
                v = one.series.values.add()
                v.timestamp_millis, v.step, v.value = p.timestamp_ms, p.step, p.value
                v.is_preview, v.completion_ratio = p.is_preview, p.completion_ratio
        return Reply.proto(dto)

    def series(self, req: Request) -> Reply:
        body = req.json()
        descending = body.get("order", "ascending") == "descending"
        tail = body.get("perSeriesPointsLimit")
        dto = series_values_pb2.ProtoSeriesValuesResponseDTO()
        for request in body.get("requests") or []:
            series = request.get("series") or {}
            found = self._series_points(series)
            if found is None or found[0] == "float_series":
                continue  # a missing series is left out of the reply
            type_, points = found
            points = self._in_range(points, body.get("stepRange"), descending)
            token = (request.get("searchAfter") or {}).get("token") or ""
            sent = 0
            if token:
                last_step_text, _, sent_text = token.partition("|")
                last_step, sent = float(last_step_text), int(sent_text or 0)
                points = [p for p in points if (p.step < last_step if descending else p.step > last_step)]
            budget = len(points) if tail is None else max(0, int(tail) - sent)
            page = points[: min(self.store.series_page_size, budget)]
            sent += len(page)
            finished = len(page) == min(len(points), budget)
            one = dto.series.add()
            one.requestId = request.get("requestId", "")
            if page:
                one.searchAfter.token = f"{page[-1].step!r}|{sent}"
            else:
                one.searchAfter.token = token or "end"
            one.searchAfter.finished = finished
            for p in page:
                v = one.seriesValues.values.add()
                v.timestamp_millis, v.step = p.timestamp_ms, p.step
                _fill_point_object(v.object, type_, p.value)
        return Reply.proto(dto)

    # -------------------------------------------------------------- files
    def signed_urls(self, req: Request) -> Reply:
        body = req.json()
        files = []
        for f in body.get("files") or []:
            path = f.get("path", "")
            files.append(
                {
                    "path": path,
                    "project_identifier": f.get("project_identifier", ""),
                    "provider": "aws",
                    "url": f"{self.store.base_url}{BLOB_PREFIX}{quote(path, safe='/')}",
                }
            )
        return Reply.json({"files": files})

    def blob(self, req: Request) -> Reply:
        path = unquote(req.match.group("path")) if req.match else ""
        fv = self.store.files.get(path)
        if fv is None:
            return Reply(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        return Reply.streamed(fv.open(), fv.size, fv.mime_type)


def _fill_point_object(obj: Any, type_: str, value: Any) -> None:
    if type_ == "string_series":
        obj.stringValue = value
    elif type_ == "file_series":
        obj.fileRef.path, obj.fileRef.sizeBytes, obj.fileRef.mimeType = value.path, value.size, value.mime_type
    else:
        obj.histogram.type = value.type
        obj.histogram.edges.extend(value.edges)
        obj.histogram.values.extend(value.values)
