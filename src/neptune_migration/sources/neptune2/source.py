"""Read a Neptune 2.x project through the neptune 1.x client (pinned 1.14.0.post2) into an archive.

Listing goes through `fetch_runs_table` sorted ascending by `sys/id`: the client continues past the server's
10,000-row offset limit with a "sort column > last value" query, and a unique sort column is what makes that
continuation list every run exactly once. Each run is then opened read-only and read attribute by attribute.

What the 1.x client cannot give is recorded honestly: file series come back without steps or timestamps, so
the archive holds each file's index as its step (docs/neptune2.md); artifacts hold only their file list, since
their bytes never lived in Neptune.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import shutil
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from neptune_migration.archive import ArchiveWriter
from neptune_migration.archive.delta import HistoryRewritten
from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.retry import (
    Patience,
    ScopedNumber,
    first_contact,
    retrying,
    scoped_settings,
    scoped_value,
    server_name,
    unreachable_reason,
)
from neptune_migration.secrets import redact
from neptune_migration.selection import Selection, compile_regex
from neptune_migration.sources.base import ExportStats, SourceError, api_url, scratch_dir
from neptune_migration.vocabulary import RunRef

log = logging.getLogger("neptune_migration")

# The 1.x client's attribute classes, by class name, and the archive type they become. `sys/state`
# (RunState) has no read method in the client; whether a run failed is in `sys/failed`.
_TYPES = {
    "Float": "float",
    "Integer": "int",
    "String": "string",
    "Boolean": "bool",
    "Datetime": "datetime",
    "StringSet": "string_set",
    "FloatSeries": "float_series",
    "StringSeries": "string_series",
    "File": "file",
    "FileSeries": "file_series",
    "FileSet": "file_set",
    "Artifact": "artifact",
}


@dataclass
class ListedRun2:
    ref: RunRef
    sys_id: str
    modification_time: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    kind: str = "run"  # or "model" / "model_version" for the model registry


F = TypeVar("F", bound=Callable[..., Any])
_RETRIES_TIMEOUT = "NEPTUNE_RETRIES_TIMEOUT"  # neptune 1.x's own name for its retry limit (60 s by default)
_REQUEST_TIMEOUT = "neptune_migration.neptune2.request_timeout"


def _install_limits() -> None:
    """Let neptune 1.x's retry limit and request timeouts follow our options inside `_patient` scopes.

    The client reads both once, at import: the retry limit into a module global (compared with the elapsed time on
    every retry), the timeouts into its request defaults, and it fetches its swagger specs with no timeout at all,
    so a server that accepts connections and never answers holds it for ever. The limit becomes a number that
    answers our scoped value; sessions created inside our scope cap every request's timeout at ours. Outside a
    scope both behave as the client's own."""
    from neptune.common.backends import utils
    from neptune.internal.backends import hosted_client

    if not isinstance(utils.retries_timeout, ScopedNumber):
        utils.retries_timeout = ScopedNumber(_RETRIES_TIMEOUT, float(utils.retries_timeout))
    create = hosted_client.create_http_client
    if getattr(create, "_neptune_migration", False):
        return

    @functools.wraps(create)
    def create_http_client(*args: Any, **kwargs: Any) -> Any:
        client = create(*args, **kwargs)
        ours = scoped_value(_REQUEST_TIMEOUT, lambda: None)
        if ours is not None:
            session = client.session
            send = session.send
            session.send = lambda request, **kw: send(request, **{**kw, "timeout": _capped(kw.get("timeout"), ours)})
        return client

    create_http_client._neptune_migration = True  # type: ignore[attr-defined]
    hosted_client.create_http_client = create_http_client


def _retry(fn: Callable[[], Any]) -> Any:
    # The client already retried within the budget: ours must not start it over.
    return retrying(fn, budget=scoped_value(_RETRIES_TIMEOUT, lambda: None))


def _capped(given: Any, ours: float) -> tuple[float, float]:
    """A requests timeout (None, seconds, or (connect, read)) no longer than ours on either side."""
    if given is None:
        return ours, ours
    connect, read = given if isinstance(given, tuple) else (given, given)
    return (min(float(connect), ours) if connect is not None else ours,
            min(float(read), ours) if read is not None else ours)


def _patient(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Neptune2Source, *args: Any, **kwargs: Any) -> Any:
        with scoped_settings(self._limits):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _utc(value: Any) -> datetime | None:
    """The 1.x client builds naive local datetimes from epoch milliseconds; turn them back into UTC."""
    if value is None:
        return None
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return datetime.fromtimestamp(round(value.timestamp() * 1000) / 1000, UTC)
    return value.astimezone(UTC)


def _nql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Neptune2Source:
    name = "neptune2"

    def __init__(
        self,
        projects: list[str],
        selection: Selection,
        api_token: str,
        query: str | None = None,
        workspace: str | None = None,
        include_projects: str | None = None,
        exclude_projects: str | None = None,
        include_trashed: bool = False,
        file_sets: str = "zip",
        download_workers: int = 4,
        patience: Patience | None = None,
    ) -> None:
        if file_sets not in ("zip", "extract"):
            raise UsageError(f"--file-sets must be 'zip' or 'extract', not {file_sets!r}")
        if not projects and not workspace:
            raise UsageError("name a project with -p WS/PROJ, or a whole workspace with --workspace WS")
        self.projects = list(projects)
        self.selection = selection
        self.token = api_token
        self.query = query
        self.workspace = workspace
        self.include_projects = compile_regex(include_projects, "--include-projects")
        self.exclude_projects = compile_regex(exclude_projects, "--exclude-projects")
        self.include_trashed = include_trashed
        self.file_sets = file_sets
        # File payloads of a run download this many at a time, in the background while its values are read.
        self.download_workers = max(1, download_workers)
        self._checked = False
        self.patience = patience or Patience()
        self._limits = {_RETRIES_TIMEOUT: self.patience.budget, _REQUEST_TIMEOUT: self.patience.timeout}
        _install_limits()

    def _explain(self, exc: BaseException, doing: str, project: str | None = None) -> SourceError:
        text = redact(" ".join(str(exc).split()))
        kind = type(exc).__name__
        where = server_name(api_url(self.token))
        reason = unreachable_reason(exc)
        if reason is not None or "Connection" in kind:
            return SourceError(f"cannot reach the Neptune server at {where} to {doing}: {reason or kind} "
                               f"({self.patience.describe()})")
        if "InvalidApiToken" in kind or "Unauthorized" in text or "401" in text:
            return SourceError(f"the Neptune server at {where} refused the API token")
        if project and ("ProjectNotFound" in kind or "NotFound" in kind or "404" in text):
            return SourceError(f"project {project!r} not found on {where} (or the token cannot read it)")
        return SourceError(f"Neptune: failed to {doing}: {kind}: {text[:300]}")

    @_patient
    def check(self) -> None:
        """Log in, and expand `--workspace` into its projects (with the include/exclude patterns)."""
        if self._checked:
            return
        first_contact(api_url(self.token), self.patience, "Neptune server", SourceError)
        if self.workspace:
            from neptune import management

            try:
                names = management.get_project_list(api_token=self.token)
            except Exception as exc:
                raise self._explain(exc, "list projects") from None
            for name in sorted(names):
                ws, _, proj = name.partition("/")
                if ws != self.workspace:
                    continue
                if self.include_projects and not self.include_projects.search(proj):
                    continue
                if self.exclude_projects and self.exclude_projects.search(proj):
                    continue
                if name not in self.projects:
                    self.projects.append(name)
            if not self.projects:
                raise UsageError(f"no project in workspace {self.workspace!r} matches the project patterns")
        self._checked = True

    # -- listing ----------------------------------------------------------------------------------------
    def run_query(self) -> str | None:
        """The selection as 2.x NQL, combined with the user's own `--query`."""
        sel = self.selection
        parts = []
        if sel.runs:
            parts.append(f"(`sys/id`:string MATCHES {_nql_string(sel.runs.pattern)})")
        if sel.experiments:
            parts.append(f"(`sys/name`:string MATCHES {_nql_string(sel.experiments.pattern)})")
        if sel.since:
            parts.append(f"(`sys/creation_time`:datetime >= {_nql_string(_iso(sel.since))})")
        if sel.until:
            parts.append(f"(`sys/creation_time`:datetime <= {_nql_string(_iso(sel.until))})")
        if sel.tags:
            tag_parts = [f"(`sys/tags`:stringSet CONTAINS {_nql_string(t)})" for t in sel.tags]
            parts.append("(" + (" AND " if sel.all_tags else " OR ").join(tag_parts) + ")")
        if self.query:
            parts.append(f"({self.query})")
        return " AND ".join(parts) if parts else None

    @_patient
    def list_runs(self, project: str) -> list[ListedRun2]:
        _quiet_client()
        import neptune

        self.check()
        try:
            handle = neptune.init_project(project=project, mode="read-only", api_token=self.token)
        except Exception as exc:
            raise self._explain(exc, f"open project {project}", project) from None
        try:
            table = handle.fetch_runs_table(
                query=self.run_query(),
                columns=["sys/id", "sys/modification_time"],
                trashed=None if self.include_trashed else False,
                sort_by="sys/id",
                ascending=True,
                progress_bar=False,
            ).to_pandas()
        except Exception as exc:
            raise self._explain(exc, f"list the runs of {project}", project) from None
        finally:
            handle.stop()
        runs = []
        ids = table["sys/id"].tolist() if "sys/id" in table else []
        mods = table["sys/modification_time"].tolist() if "sys/modification_time" in table else [None] * len(ids)
        for sys_id, mod in zip(ids, mods, strict=True):
            when = _utc(mod)
            runs.append(ListedRun2(RunRef(project, str(sys_id)), str(sys_id), when.isoformat() if when else None))
            if self.selection.limit is not None and len(runs) >= self.selection.limit:
                break
        return runs

    # -- reading a run ----------------------------------------------------------------------------------
    def _open(self, run: ListedRun2) -> Any:
        _quiet_client()
        import neptune

        opener = {"run": neptune.init_run, "model": neptune.init_model,
                  "model_version": neptune.init_model_version}[run.kind]
        return _retry(lambda: opener(project=run.ref.project_id, with_id=run.sys_id, mode="read-only",
                                       api_token=self.token))

    # -- model registry ---------------------------------------------------------------------------------
    @_patient
    def list_registry(self, project: str) -> list[ListedRun2]:
        """Every model of the project, each followed by its versions (so a loader sees models first)."""
        _quiet_client()
        import neptune

        self.check()
        entries: list[ListedRun2] = []
        try:
            handle = neptune.init_project(project=project, mode="read-only", api_token=self.token)
            try:
                # Sorting by the one requested column also keeps the client happy when the table is empty.
                models = handle.fetch_models_table(columns=["sys/id"], sort_by="sys/id", ascending=True,
                                                   progress_bar=False).to_pandas()
            finally:
                handle.stop()
            for model_id in sorted(models["sys/id"].tolist() if "sys/id" in models else []):
                entries.append(ListedRun2(RunRef(project, model_id), model_id, kind="model"))
                model = neptune.init_model(project=project, with_id=model_id, mode="read-only",
                                           api_token=self.token)
                try:
                    versions = model.fetch_model_versions_table(columns=["sys/id"], sort_by="sys/id",
                                                                ascending=True, progress_bar=False).to_pandas()
                finally:
                    model.stop()
                for version_id in sorted(versions["sys/id"].tolist() if "sys/id" in versions else []):
                    entries.append(ListedRun2(RunRef(project, version_id), version_id, kind="model_version"))
        except MigrationError:
            raise
        except Exception as exc:
            raise self._explain(exc, f"list the model registry of {project}", project) from None
        return entries

    def _structure(self, handle: Any) -> dict[str, Any]:
        items = dict(_flatten(handle.get_structure()))
        return {p: a for p, a in items.items()
                if type(a).__name__ in _TYPES and self.selection.wants_attribute(p, _TYPES[type(a).__name__])}

    @_patient
    def describe_run(self, run: ListedRun2) -> dict[str, Any]:
        try:
            handle = self._open(run)
            try:
                items = self._structure(handle)
                experiment = handle["sys/name"].fetch() if "sys/name" in items else None
            finally:
                handle.stop()
        except MigrationError:
            raise
        except Exception as exc:
            raise self._explain(exc, f"describe run {run.ref.key}") from None
        by_type: dict[str, int] = {}
        for attr in items.values():
            t = _TYPES[type(attr).__name__]
            by_type[t] = by_type.get(t, 0) + 1
        return {"attributes_by_type": by_type, "experiment": experiment, "file_bytes": 0}

    @_patient
    def export_run(self, run: ListedRun2, archive: ArchiveWriter) -> ExportStats:
        try:
            handle = self._open(run)
        except Exception as exc:
            raise self._explain(exc, f"open run {run.ref.key}") from None
        try:
            return self._export(handle, run, archive)
        except MigrationError:
            raise
        except Exception as exc:
            raise self._explain(exc, f"export run {run.ref.key}") from None
        finally:
            handle.stop()

    @_patient
    def export_delta(self, run: ListedRun2, delta: Any) -> ExportStats:
        """Write what changed since the archived copy into `delta` (an `archive.delta.DeltaWriter`): float and
        string series are read from the archived count minus one (the offset the 2.x API pages by), so the
        archived last point comes back once as the overlap check. The 1.x client gives no size or hash of a
        file, so payloads are downloaded and compared by content."""
        try:
            handle = self._open(run)
        except Exception as exc:
            raise self._explain(exc, f"open run {run.ref.key}") from None
        try:
            return self._export(handle, run, delta.archive, delta)
        except (MigrationError, HistoryRewritten):  # the sync stage replaces a rewritten run
            raise
        except Exception as exc:
            raise self._explain(exc, f"sync run {run.ref.key}") from None
        finally:
            handle.stop()

    def _export(self, handle: Any, run: ListedRun2, archive: ArchiveWriter, delta: Any = None) -> ExportStats:
        items = self._structure(handle)
        stats = ExportStats(attributes=len(items), modification_time=run.modification_time)
        ordered = sorted(items.items())
        if delta is not None:
            delta.declare([p for p, _ in ordered])
        pool = ThreadPoolExecutor(self.download_workers, thread_name_prefix="neptune2-download")
        with (delta if delta is not None else archive.run(run.ref)) as writer, \
                scratch_dir(archive, "neptune2-export-") as tmp:
            try:
                self._export_values(ordered, Path(tmp), pool, writer, stats)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return stats

    def _export_values(self, ordered: list[tuple[str, Any]], tmp: Path, pool: ThreadPoolExecutor, writer: Any,
                       stats: ExportStats) -> None:
        # Payloads download concurrently (the 1.x client streams each to disk in 1 MB chunks); the run's rows
        # are still written in attribute order.
        downloads: dict[str, Future[None]] = {}
        for n, (path, attr) in enumerate(ordered):
            type_ = _TYPES[type(attr).__name__]
            if type_ in _DOWNLOADED:
                downloads[path] = pool.submit(contextvars.copy_context().run, _download, attr, type_, tmp / str(n))
        for n, (path, attr) in enumerate(ordered):
            type_ = _TYPES[type(attr).__name__]
            stats.by_type[type_] = stats.by_type.get(type_, 0) + 1
            work = tmp / str(n)
            if type_ in ("float", "int", "string", "bool", "datetime", "string_set"):
                value = _retry(attr.fetch)
                if value is None:
                    continue
                if type_ == "datetime":
                    value = _utc(value)
                elif type_ == "string_set":
                    value = sorted(value)
                elif type_ == "string" and not isinstance(value, str):
                    value = str(getattr(value, "value", value))  # sys/state comes as an enum-like value
                writer.add_atom(path, type_, value)
            elif type_ in ("float_series", "string_series") and getattr(writer, "series_tip", None) is not None \
                    and writer.series_tip(path) is not None:
                steps, stamps, values = _series_tail(attr, writer.series_tip(path), writer)
                if type_ == "float_series":
                    values = [float(v) for v in values]
                writer.add_series(path, type_, steps, stamps, values)
                stats.points += len(steps)
            elif type_ in ("float_series", "string_series"):
                frame = _retry(lambda a=attr: a.fetch_values(include_timestamp=True, progress_bar=False))
                steps = frame["step"].astype(float).tolist() if len(frame) else []
                stamps = [_utc(t) for t in frame["timestamp"]] if len(frame) else []
                values = frame["value"].tolist() if len(frame) else []
                if type_ == "float_series":
                    values = [float(v) for v in values]
                writer.add_series(path, type_, steps, stamps, values)
                stats.points += len(steps)
            else:
                if path in downloads:
                    downloads[path].result()
                self._export_files(attr, path, type_, work, writer, stats)

    def _export_files(self, attr: Any, path: str, type_: str, work: Path, writer: Any, stats: ExportStats) -> None:
        """Add the payloads `_download` left in `work` (an artifact's file list is fetched here)."""
        if type_ == "file":
            for local in _files_in(work):
                self._add_file(writer, stats, path, "file", local, local.name)
        elif type_ == "file_series":
            # The 1.x client names each file "<index>.<ext>" and gives no step: the index becomes the step.
            for local in sorted(_files_in(work), key=_index_of):
                self._add_file(writer, stats, path, "file_series", local, local.name, step=float(_index_of(local)))
        elif type_ == "file_set":
            target = work / "files.zip"
            if self.file_sets == "zip":
                self._add_file(writer, stats, path, "file_set", target, "files.zip")
            else:
                for name, member in _safe_zip_members(target, work / "extracted"):
                    self._add_file(writer, stats, path, "file_set", member, name)
                    member.unlink(missing_ok=True)  # add_file moved it away unless the selection left it
        elif type_ == "artifact":
            files = _retry(attr.fetch_files_list)
            listing = [{"filePath": f.file_path, "fileHash": f.file_hash, "type": f.type, "size": f.size,
                        "metadata": [{"key": k, "value": v} for k, v in dict(f.metadata).items()]} for f in files]
            data = json.dumps(listing, indent=1, sort_keys=True).encode()
            self._add_file(writer, stats, path, "artifact", data, "files_list.json")

    def _add_file(self, writer: Any, stats: ExportStats, path: str, type_: str, data: Path | bytes, name: str,
                  step: float | None = None) -> None:
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        if type_ != "artifact" and not self.selection.wants_file(path, name, size):
            return
        # every path here is a scratch download (or an unpacked member): given away, renamed when it can be
        info = writer.add_file(path, type_, data, name, step=step, move=isinstance(data, Path))
        stats.files += 1
        stats.bytes += info.size


_DOWNLOADED = ("file", "file_series", "file_set")
_PAGE = 1000


def _series_tail(attr: Any, tip: Any, writer: Any) -> tuple[list[float], list[int], list[Any]]:
    """A series' points from offset `count - 1` on: the archived last point, then whatever is new."""
    offset = tip.count - 1
    steps: list[float] = []
    stamps: list[int] = []
    values: list[Any] = []
    while True:
        page = _retry(lambda o=offset: attr._fetch_values_from_backend(o, _PAGE))
        total = int(page.totalItemCount)
        if total < tip.count:
            writer.rewritten(f"{attr._path[-1] if getattr(attr, '_path', None) else 'a series'}: "
                             f"{tip.count - total} archived points are gone")
        for entry in page.values:
            steps.append(float(entry.step))
            stamps.append(int(entry.timestampMillis))
            values.append(entry.value)
        offset += len(page.values)
        if not page.values or offset >= total:
            return steps, stamps, values


def _download(attr: Any, type_: str, work: Path) -> None:
    """One attribute's payloads into `work` (a file set as `files.zip`)."""
    work.mkdir(parents=True, exist_ok=True)
    destination = work / "files.zip" if type_ == "file_set" else work
    _retry(lambda: attr.download(destination=str(destination), progress_bar=False))


def _quiet_client() -> None:
    # The client logs a few INFO lines (with links to a web app that no longer exists) per opened run.
    import neptune  # noqa: F401 - configures its logger on import; lower it afterwards
    from neptune.common.warnings import NeptuneDeprecationWarning

    logging.getLogger("neptune").setLevel(logging.WARNING)
    # Reading a 2.x model registry warns that the registry is deprecated on every export: the user is migrating
    # away already. (The client forces these warnings to "always" on import; this filter goes in front of it.)
    warnings.filterwarnings("ignore", category=NeptuneDeprecationWarning)


def _flatten(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}/")
        else:
            yield prefix + key, value


def _files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _index_of(path: Path) -> int:
    try:
        return int(path.name.split(".", 1)[0])
    except ValueError:
        return 0


def _safe_zip_members(archive: Path, scratch: Path) -> Iterator[tuple[str, Path]]:
    """Members of a file-set zip, refusing any that would land outside the set (zip-slip) or are links.

    Each member is unpacked in chunks to a scratch file (a big member never sits in memory); the caller
    consumes it before asking for the next, which overwrites it.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        for n, info in enumerate(zf.infolist()):
            if info.is_dir():
                continue
            name = info.filename.replace("\\", "/")
            parts = PurePosixPath(name).parts
            if name.startswith("/") or ".." in parts or (len(name) > 1 and name[1] == ":"):
                raise SourceError(f"file set {archive.name} holds an entry that escapes it: {name!r}")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise SourceError(f"file set {archive.name} holds a symbolic link: {name!r}")
            member = scratch / str(n)
            with zf.open(info) as src, open(member, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            yield name, member


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
