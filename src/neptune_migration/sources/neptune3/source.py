"""Read a Neptune 3.x project through neptune-query (pinned 1.14.1) and write its runs into an archive.

We call neptune-query's retrieval layer rather than its pandas API: it gives every point with its exact step,
absolute timestamp and preview flag, keeps NaN apart from "no point at this step", and lets us address runs by
their sys/id. Server-side filtering (NQL) does the run selection; attribute filters are applied to the
attribute definitions, so unwanted values are never downloaded.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
import re
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from neptune_migration.archive import ArchiveWriter
from neptune_migration.archive.delta import HistoryRewritten
from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.retry import (
    Patience,
    cause_chain,
    first_contact,
    retrying,
    scope_getter,
    scoped_settings,
    server_name,
    unreachable_reason,
)
from neptune_migration.secrets import redact
from neptune_migration.selection import Selection
from neptune_migration.sources.base import ExportStats, SourceError, api_url, scratch_dir
from neptune_migration.vocabulary import ATOM_TYPES, RunRef

log = logging.getLogger("neptune_migration")

# Attribute kinds fetched as one series request each, so a run with many series is fetched in slices.
SERIES_PER_REQUEST = 32
# Float points per page across the series of one request: a page is decoded into Python tuples (about 150 bytes
# a point) and written out before the next is asked for, so this bounds the exporter's memory for any run size.
POINTS_PER_PAGE = 100_000

F = TypeVar("F", bound=Callable[..., Any])


def _patient(method: F) -> F:
    """Run a source method with neptune-query's retry limits set from our --retry-budget.

    neptune-query reads NEPTUNE_QUERY_RETRY_SOFT_TIMEOUT/HARD_TIMEOUT (1800 s / 3600 s by default) on every call;
    inside this scope it reads ours, elsewhere in the process its own, so nothing leaks into other callers."""
    @functools.wraps(method)
    def wrapper(self: Neptune3Source, *args: Any, **kwargs: Any) -> Any:
        with scoped_settings(self._query_settings):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass
class ListedRun:
    ref: RunRef
    sys_id: str
    modification_time: str | None = None  # ISO-8601; lets `--refresh` re-export only runs that changed
    attributes: dict[str, str] = field(default_factory=dict)  # path -> type, filled by `attribute_definitions`


class Neptune3Source:
    name = "neptune3"

    def __init__(
        self,
        projects: list[str],
        selection: Selection,
        api_token: str,
        lineage: str = "own",
        previews: bool = False,
        download_workers: int = 4,
        patience: Patience | None = None,
    ) -> None:
        if lineage not in ("own", "full"):
            raise UsageError(f"--lineage must be 'own' or 'full', not {lineage!r}")
        if not projects:
            raise UsageError("name at least one project with -p WS/PROJ (or set NEPTUNE_PROJECT)")
        self.projects = projects
        self.selection = selection
        self.token = api_token
        self.lineage = lineage
        self.previews = previews
        self.download_workers = download_workers
        self.patience = patience or Patience()
        from neptune_query import warnings as nq_warnings
        from neptune_query.internal import env

        # "We will retry automatically" said once, then silence for the whole budget, reads like a hang; the
        # budget's end gives one line naming the server instead. Only retry warnings from neptune-query's modules.
        for category in (nq_warnings.HttpOtherWarning, nq_warnings.Http5xxWarning, nq_warnings.Http503Warning):
            warnings.filterwarnings("ignore", category=category, module=r"neptune_query\.")
        for setting in (env.NEPTUNE_QUERY_RETRY_SOFT_TIMEOUT, env.NEPTUNE_QUERY_RETRY_HARD_TIMEOUT):
            scope_getter(setting)
        budget = max(1, math.ceil(self.patience.budget))
        self._query_settings = {env.NEPTUNE_QUERY_RETRY_SOFT_TIMEOUT.name: budget,
                                env.NEPTUNE_QUERY_RETRY_HARD_TIMEOUT.name: budget}
        self._client: Any = None

    # -- connection -------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            import httpx
            from neptune_query.generated.neptune_api.credentials import Credentials
            from neptune_query.internal.api_utils import create_auth_api_client

            try:
                # Our own client, not neptune-query's per-token cache: its timeout (read from
                # NEPTUNE_HTTP_REQUEST_TIMEOUT_SECONDS when a client is made) is ours, and theirs stays theirs.
                client = create_auth_api_client(credentials=Credentials.from_api_key(api_key=self.token))
                self._client = client.with_timeout(httpx.Timeout(self.patience.timeout))
            except Exception as exc:
                raise self._explain(exc, "log in") from None
        return self._client

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        # neptune-query already retried within the budget: ours must not start the budget over.
        return retrying(fn, budget=self.patience.budget)

    def _explain(self, exc: BaseException, doing: str, project: str | None = None) -> SourceError:
        text = redact(" ".join(str(exc).split()))
        kind = type(exc).__name__
        where = server_name(api_url(self.token))
        reason = unreachable_reason(exc)
        if reason is not None:
            tried = _tries(exc)
            return SourceError(f"cannot reach the Neptune server at {where} to {doing}: {reason}{tried} "
                               f"({self.patience.describe()})")
        if "Credentials" in kind or "401" in text or "403" in text or "Unauthorized" in text:
            return SourceError(f"the Neptune server at {where} refused the API token")
        if project and ("404" in text or "not found" in text.lower() or "Inaccessible" in kind):
            return SourceError(f"project {project!r} not found on {where} (or the token cannot read it)")
        return SourceError(f"Neptune: failed to {doing}: {kind}: {text[:300]}")

    @_patient
    def check(self) -> None:
        first_contact(api_url(self.token), self.patience, "Neptune server", SourceError)
        _ = self.client

    # -- listing ----------------------------------------------------------------------------------------
    def run_filter(self) -> Any:
        """The selection as an NQL filter, so the server does the selecting."""
        from neptune_query.internal.filters import _Attribute as Attribute
        from neptune_query.internal.filters import _Filter as Filter

        sel = self.selection
        parts = []
        if sel.runs:
            parts.append(Filter.matches_all(Attribute("sys/custom_run_id", type="string"), sel.runs.pattern))
        if sel.experiments:
            parts.append(Filter.matches_all(Attribute("sys/name", type="string"), sel.experiments.pattern))
        if sel.since:
            parts.append(Filter.ge(Attribute("sys/creation_time", type="datetime"), sel.since))
        if sel.until:
            parts.append(Filter.le(Attribute("sys/creation_time", type="datetime"), sel.until))
        if sel.tags:
            tags = Attribute("sys/tags", type="string_set")
            if sel.all_tags:
                parts.append(Filter.contains_all(tags, list(sel.tags)))
            else:
                parts.append(Filter.any([Filter.contains_all(tags, t) for t in sel.tags]))
        if not sel.include_archived:
            parts.append(Filter.ne(Attribute("sys/archived", type="bool"), True))
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else Filter.all(parts)

    @_patient
    def list_runs(self, project: str) -> list[ListedRun]:
        from neptune_query.internal.filters import _Attribute as Attribute
        from neptune_query.internal.retrieval import search

        try:
            fetch = search.fetch_sys_id_labels(search.ContainerType.RUN)
            pages = fetch(
                self.client,
                project,
                filter_=self.run_filter(),
                # Oldest first: parents before their forks, and a stable order for resumes.
                sort_by=Attribute("sys/creation_time", type="datetime"),
                sort_direction="asc",
                limit=self.selection.limit,
                container_type=search.ContainerType.RUN,
            )
            runs = [
                ListedRun(RunRef(project, str(item.sys_custom_run_id or item.sys_id)), str(item.sys_id))
                for page in pages
                for item in page.items
            ]
            self._modification_times(project, runs)
        except MigrationError:
            raise
        except Exception as exc:
            raise self._explain(exc, f"list the runs of {project}", project) from None
        return runs

    def _modification_times(self, project: str, runs: list[ListedRun]) -> None:
        from neptune_query.internal.identifiers import AttributeDefinition, RunIdentifier
        from neptune_query.internal.retrieval import attribute_values

        by_sys_id = {r.sys_id: r for r in runs}
        definition = AttributeDefinition("sys/modification_time", "datetime")
        for chunk in _chunks(list(by_sys_id), 1000):
            ids = [RunIdentifier(project, sys_id=s) for s in chunk]
            pages = self._retrying(lambda i=ids: list(attribute_values.fetch_attribute_values(
                self.client, project, i, [definition])))
            for page in pages:
                for item in page.items:
                    run = by_sys_id.get(str(item.run_identifier.sys_id))
                    if run is not None and isinstance(item.value, datetime):
                        run.modification_time = item.value.astimezone(UTC).isoformat()

    def attribute_definitions(self, run: ListedRun) -> dict[str, str]:
        from neptune_query.internal.filters import _AttributeFilter
        from neptune_query.internal.identifiers import RunIdentifier
        from neptune_query.internal.retrieval import attribute_definitions as defs

        rid = RunIdentifier(run.ref.project_id, sys_id=run.sys_id)
        found: dict[str, str] = {}
        pages = self._retrying(lambda: list(defs.fetch_attribute_definitions_single_filter(
            self.client, [run.ref.project_id], [rid], _AttributeFilter())))
        for page in pages:
            for item in page.items:
                if self.selection.wants_attribute(item.name, item.type):
                    found[item.name] = item.type
        run.attributes = found
        return found

    @_patient
    def describe_run(self, run: ListedRun) -> dict[str, Any]:
        """For `discover`: attribute counts by type, the experiment name and the size of file attributes."""
        from neptune_query.internal.identifiers import RunIdentifier

        try:
            attributes = self.attribute_definitions(run)
            rid = RunIdentifier(run.ref.project_id, sys_id=run.sys_id)
            wanted = {p: t for p, t in attributes.items() if p == "sys/name" or t == "file"}
            experiment, file_bytes = None, 0
            for value in self._atom_values(rid, wanted):
                if value.attribute_definition.name == "sys/name":
                    experiment = value.value
                elif value.attribute_definition.type == "file":
                    file_bytes += int(getattr(value.value, "size_bytes", 0) or 0)
        except MigrationError:
            raise
        except Exception as exc:
            raise self._explain(exc, f"describe run {run.ref.key}") from None
        by_type: dict[str, int] = {}
        for type_ in attributes.values():
            by_type[type_] = by_type.get(type_, 0) + 1
        return {"attributes_by_type": by_type, "experiment": experiment, "file_bytes": file_bytes}

    # -- export -----------------------------------------------------------------------------------------
    @_patient
    def export_run(self, run: ListedRun, archive: ArchiveWriter) -> ExportStats:
        """Write one run into the archive, atomically: it appears whole or not at all."""
        try:
            return self._export_run(run, archive)
        except MigrationError:
            raise
        except Exception as exc:
            raise self._explain(exc, f"export run {run.ref.key}") from None

    @_patient
    def export_delta(self, run: ListedRun, delta: Any) -> ExportStats:
        """Write what changed since the archived copy into `delta` (an `archive.delta.DeltaWriter`): series are
        fetched after their second-to-last archived step, files the archive holds unchanged are not downloaded."""
        run.attributes = {}  # the definitions may have changed since the run was listed
        try:
            return self._export_run(run, delta.archive, delta)
        except (MigrationError, HistoryRewritten):  # the sync stage replaces a rewritten run
            raise
        except Exception as exc:
            raise self._explain(exc, f"sync run {run.ref.key}") from None

    def _export_run(self, run: ListedRun, archive: ArchiveWriter, delta: Any = None) -> ExportStats:
        from neptune_query.internal.identifiers import AttributeDefinition, RunAttributeDefinition, RunIdentifier

        attributes = run.attributes or self.attribute_definitions(run)
        rid = RunIdentifier(run.ref.project_id, sys_id=run.sys_id)
        stats = ExportStats(attributes=len(attributes))
        for type_ in attributes.values():
            stats.by_type[type_] = stats.by_type.get(type_, 0) + 1
        if delta is not None:
            delta.declare(list(attributes))
        with (delta if delta is not None else archive.run(run.ref)) as writer, \
                scratch_dir(archive, "neptune-export-") as tmp:
            downloads = _Downloads(self, Path(tmp), writer, stats)
            atoms = {p: t for p, t in attributes.items() if t in (*ATOM_TYPES, "file")}
            for value in self._atom_values(rid, atoms):
                path, type_ = value.attribute_definition.name, value.attribute_definition.type
                if type_ == "file":
                    downloads.add(path, "file", value.value, None, None)
                    continue
                val = value.value
                if type_ == "string_set":
                    val = sorted(val)
                if path == "sys/modification_time" and isinstance(val, datetime):
                    stats.modification_time = val.astimezone(UTC).isoformat()
                writer.add_atom(path, type_, val)
            for chunk in _chunks([p for p, t in attributes.items() if t == "float_series"], SERIES_PER_REQUEST):
                defs = [RunAttributeDefinition(rid, AttributeDefinition(p, "float_series")) for p in chunk]
                after = {p: delta.after_step(p) for p in chunk} if delta is not None else {}
                for path, points in self._float_series(defs, after):
                    steps = [p.step for p in points]
                    stamps = [int(p.timestamp_millis) for p in points]
                    values = [p.value for p in points]
                    previews = [(bool(p.is_preview), float(p.completion_ratio)) for p in points] if self.previews \
                        else None
                    writer.add_series(path, "float_series", steps, stamps, values, previews)
                    stats.points += len(points)
            other = [(p, t) for p, t in attributes.items() if t in ("string_series", "histogram_series", "file_series")]
            for chunk in _chunks(other, SERIES_PER_REQUEST):
                defs = [RunAttributeDefinition(rid, AttributeDefinition(p, t)) for p, t in chunk]
                for key, values in self._series(defs, _from_step(delta, chunk)).items():
                    path, type_ = key.attribute_definition.name, key.attribute_definition.type
                    if type_ == "file_series":
                        for v in values:
                            downloads.add(path, "file_series", v.value, v.step, int(v.timestamp_millis))
                        continue
                    data = [_histogram(v.value) if type_ == "histogram_series" else v.value for v in values]
                    writer.add_series(path, type_, [v.step for v in values],
                                      [int(v.timestamp_millis) for v in values], data)
                    stats.points += len(values)
            downloads.finish()
        return stats

    def _atom_values(self, rid: Any, atoms: dict[str, str]) -> Iterator[Any]:
        from neptune_query.internal.identifiers import AttributeDefinition
        from neptune_query.internal.retrieval import attribute_values

        if not atoms:
            return iter(())
        definitions = [AttributeDefinition(p, t) for p, t in atoms.items()]
        pages = self._retrying(lambda: list(attribute_values.fetch_attribute_values(
            self.client, rid.project_identifier, [rid], definitions)))
        return (item for page in pages for item in page.items)

    def _float_series(self, defs: list[Any], after: dict[str, float | None] | None = None
                      ) -> Iterator[tuple[str, list[Any]]]:
        """(attribute path, points) page by page, in ascending step order, each page retried on its own.

        neptune-query's `fetch_multiple_series_values` gathers every page of every series before returning (a
        10-million-point series as 10 million tuples); here each page goes to the archive writer before the next
        one is asked for. Paging continues after the last step a series returned (`afterStep`), so a retried page
        is the same page and no point is written twice.
        """
        from neptune_query.internal.retrieval import metrics

        requests = [
            {
                "requestId": str(i),
                "series": {
                    "holder": {"identifier": str(d.run_identifier), "type": "experiment"},
                    "attribute": d.attribute_definition.name,
                    "lineage": "FULL" if self.lineage == "full" else "NONE",
                    "lineageEntityType": "RUN",
                    "includePreview": self.previews,
                },
            }
            for i, d in enumerate(defs)
        ]
        for request, d in zip(requests, defs, strict=True):
            # A sync starts after a step (the paging key), so only a series' tail is fetched.
            start = (after or {}).get(d.attribute_definition.name)
            if start is not None:
                request["afterStep"] = start
        paths = {str(i): d.attribute_definition.name for i, d in enumerate(defs)}
        while requests:
            limit = max(1, POINTS_PER_PAGE // len(requests))
            params = {"requests": requests, "stepRange": {"from": None, "to": None}, "order": "ascending",
                      "perSeriesPointsLimit": limit}
            page = self._retrying(lambda p=params: metrics._fetch_metrics_page(self.client, p))
            more = []
            by_id = {r["requestId"]: r for r in requests}
            for series in page.series:
                values = series.series.values
                if values:
                    yield paths[series.requestId], values
                if len(values) == limit:
                    more.append(by_id[series.requestId] | {"afterStep": values[-1].step})
            requests = more

    def _series(self, defs: list[Any], from_step: float | None = None) -> dict[Any, list[Any]]:
        from neptune_query.internal.retrieval import search, series

        return self._retrying(lambda: series.fetch_series_values(
            self.client, defs, include_inherited=self.lineage == "full", container_type=search.ContainerType.RUN,
            step_range=(from_step, None)))

    @_patient
    def download(self, project: str, file: Any, target: Path) -> Path | None:
        from neptune_query.internal.retrieval import files

        # Signing needs the project next to the storage path; attribute values carry only the path.
        ref = _StoredFile(project, file.path)
        signed = self._retrying(lambda: files.fetch_signed_urls(self.client, [ref]))[0]
        # download_file_complete's loop, with a timeout: neptune-query's default (NEPTUNE_QUERY_FILES_TIMEOUT,
        # read once at import) is none at all, so a storage host that stops answering would hold the run forever.
        timeout = max(1, math.ceil(self.patience.timeout))
        for _ in range(3):
            result = files.download_file(signed, target, timeout=timeout)
            if result.status == "success":
                return target
            if result.status == "not_found":
                return None
            if result.status == "expired":
                signed = files.refresh_signed_file(self.client, signed)
        raise SourceError(f"Neptune: downloading {file.path} failed 3 times (last HTTP status {result.status_code})")


class _Downloads:
    """File payloads of one run, downloaded concurrently, then added to the run in a stable order."""

    def __init__(self, source: Neptune3Source, tmp: Path, writer: Any, stats: ExportStats) -> None:
        self.source = source
        self.project = writer.ref.project_id
        self.tmp = tmp
        self.writer = writer
        self.stats = stats
        self.pool = ThreadPoolExecutor(source.download_workers, thread_name_prefix="download")
        self.pending: list[tuple[str, str, Any, float | None, int | None, Any]] = []

    def add(self, path: str, type_: str, file: Any, step: float | None, timestamp: int | None) -> None:
        name = _file_name(path, file, step)
        size = int(getattr(file, "size_bytes", 0) or 0)
        if not self.source.selection.wants_file(path, name, size):
            return
        wants = getattr(self.writer, "wants_download", None)
        if wants is not None and not wants(path, type_, step, name, size):
            return  # a sync: the archive holds this payload already
        target = self.tmp / f"{len(self.pending)}"
        # A copy of this thread's context, so the download runs inside the same retry-limit scope.
        fut = self.pool.submit(contextvars.copy_context().run, self.source.download, self.project, file, target)
        self.pending.append((path, type_, file, step, timestamp, fut))

    def finish(self) -> None:
        try:
            for path, type_, file, step, timestamp, fut in self.pending:
                local = fut.result()
                if local is None:
                    self.stats.missing_files.append(f"{path}" + (f"@{step}" if step is not None else ""))
                    log.warning("file %s of a run is gone from Neptune's storage; recorded as missing", path)
                    continue
                info = self.writer.add_file(path, type_, local, _file_name(path, file, step), step=step,
                                            timestamp=timestamp, mime=getattr(file, "mime_type", None), move=True)
                local.unlink(missing_ok=True)
                self.stats.files += 1
                self.stats.bytes += info.size
        finally:
            self.pool.shutdown(wait=True)


@dataclass(frozen=True)
class _StoredFile:
    project_identifier: str
    path: str


def _tries(exc: BaseException) -> str:
    """', N tries in S s' from neptune-query's NeptuneRetryError, when the error is one."""
    for cur in cause_chain(exc):
        if type(cur).__name__ == "NeptuneRetryError":
            found = re.search(r"after (\d+) retries, ([\d.]+) seconds", str(cur))
            if found:
                return f"; {found.group(1)} tries in {float(found.group(2)):.0f}s"
    return ""


def _file_name(path: str, file: Any, step: float | None) -> str:
    """The name a payload had when it was logged: the last part of its storage path."""
    stored = str(getattr(file, "path", "") or "")
    name = stored.rsplit("/", 1)[-1] if stored else ""
    return name or path.rsplit("/", 1)[-1]


def _from_step(delta: Any, chunk: list[tuple[str, str]]) -> float | None:
    """Where a sync's request for string, histogram and file series starts: one step range serves the whole
    request, so the earliest archived last step of its series (None when one of them is new)."""
    if delta is None:
        return None
    tips = [delta.series_tip(p) for p, _ in chunk]
    if any(t is None for t in tips):
        return None
    return min(t.last_step for t in tips)


def _histogram(value: Any) -> dict[str, Any]:
    return {"type": value.type, "edges": list(value.edges), "values": list(value.values)}


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
