"""Weights & Biases target: offline (`--to wandb-offline DIR`) and online (`--to wandb`).

Both modes write each run as a sync-ready offline run folder with a hand-written `.wandb` file (see
folder.py for why); online mode then replays it with `wandb sync` against `WANDB_BASE_URL`.
Mapping and approximations: docs/wandb.md.

Resumability: the W&B run id is derived from the run key, and the run folder is rebuilt identically on every
attempt, so a rerun after a crash replays the same records. W&B's file stream writes history lines at their
offsets, so replaying a half-synced run completes it instead of doubling it; nothing is ever deleted on the
server (a deleted id is blocked for about a week).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from neptune_migration.archive import ArchivedRun
from neptune_migration.errors import TargetError, UsageError
from neptune_migration.retry import Patience, backoff, first_contact, server_name, unreachable_reason
from neptune_migration.targets.base import Copy, LoadContext, LoadResult, Placement
from neptune_migration.targets.wandb.folder import RunSpec, WrittenRun, fork_parent, spec_for, write_run
from neptune_migration.targets.wandb.generations import (
    SUPERSEDED_TAG,
    Existing,
    existing_from_config,
    offline_existing,
    offline_mark,
    resolve,
)
from neptune_migration.targets.wandb.online_readback import read_online
from neptune_migration.targets.wandb.placement import offline_copies, online_copies, placement, projects
from neptune_migration.targets.wandb.readback import RunFolderIndex, WandbRunData, read_offline_run, run_folders
from neptune_migration.targets.wandb.server import with_backoff
from neptune_migration.vocabulary import RunRef

__all__ = ["RateLimiter", "WandbOfflineTarget", "WandbOnlineTarget", "fork_parent", "read_offline_run", "with_backoff"]

class RateLimiter:
    """At most `per_second` acquisitions per second across threads (run creations are rate-limited)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            wait = self._next - now
            self._next = max(now, self._next) + self.interval
        if wait > 0:
            time.sleep(wait)


class WandbOfflineTarget:
    """Writes sync-ready offline run folders under `directory`; `sync_command()` says how to upload them."""

    name = "wandb-offline"

    def __init__(
        self,
        directory: Path,
        *,
        entity: str | None = None,
        project: str | None = None,
        project_prefix: str = "",
    ) -> None:
        self.root = Path(directory).absolute()
        self.entity = entity or None
        self.project = project or None
        self.project_prefix = project_prefix
        self._written: list[Path] = []
        self._lock = threading.Lock()
        self._folders = RunFolderIndex(self.root)

    @property
    def canonical(self) -> str:
        return f"wandb-offline:{self.root.resolve()}"

    def check(self) -> None:
        try:
            (self.root / "wandb").mkdir(parents=True, exist_ok=True)
            probe = self.root / "wandb" / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise TargetError(f"cannot write W&B offline runs under {self.root}: {exc.strerror or exc}") from None
        # From here until close() this target is the folder's only writer: run folders are looked up in an index.
        self._folders.activate()

    def spec(self, run: ArchivedRun) -> RunSpec:
        """Where the run goes: its base id, or a new generation's id when the archive holds a re-export of a
        changed run (targets/wandb/generations.py)."""
        base = spec_for(run, self.entity, self.project, self.project_prefix)
        run_id, supersedes = resolve(run, offline_existing(self.root, base.run_id))
        return RunSpec(base.entity, base.project, run_id, supersedes)

    def placement(self, run: ArchivedRun) -> Placement:
        return placement(run, self.entity, self.project, self.project_prefix, self.entity)

    def copies(self, ref: RunRef) -> list[Copy]:
        return offline_copies(self.root, ref)

    def load_run(self, run: ArchivedRun, ctx: LoadContext) -> LoadResult:
        spec = self.spec(run)
        synced = self._synced_folder(spec.run_id)
        if synced is not None:
            # `wandb sync` already (partly) uploaded this folder. Rebuilding it would drop wandb's own sync
            # state, and a second sync would append the history again: leave it exactly as it is.
            data = read_offline_run(self.root, spec.run_id)
            result = LoadResult(target_id="/".join(p for p in (spec.entity, spec.project, spec.run_id) if p))
            result.points = sum(len(v) for v in data.history.values()) + sum(
                len(v) for v in data.string_series.values()
            )
            result.files = sum(len(a["files"]) for a in data.artifacts.values())
            result.warnings.append(f"{synced.name} was already synced with wandb sync; left unchanged")
            with self._lock:
                self._written.append(synced)
            return result
        result = self.write(run, ctx, spec).result
        if spec.supersedes:
            self._supersede(run, spec, result)
        return result

    def sync_run(self, run: ArchivedRun, delta: ArchivedRun, ctx: LoadContext) -> LoadResult:
        """`migrate --sync`: one more offline folder for the same W&B run id, resuming it with only the history
        rows after the ones its earlier folders hold (sync.py)."""
        from neptune_migration.targets.wandb.sync import sync_offline

        return sync_offline(self, run, delta, ctx)

    def _supersede(self, run: ArchivedRun, spec: RunSpec, result: LoadResult) -> None:
        """The new generation is complete: tag the run it replaces, and point the base run at the new one."""
        base_id = spec_for(run, self.entity, self.project, self.project_prefix).run_id
        marks = [(spec.supersedes, {"superseded_by": spec.run_id})]
        marks.append((base_id, {"current": spec.run_id}))
        for run_id, change in marks:
            if run_id and not offline_mark(self.root, run_id, **change):
                result.warnings.append(f"run {run_id} was already synced with wandb sync; on the server, tag it "
                                       f"'{SUPERSEDED_TAG}' by hand (replaced by {spec.run_id})")
        result.warnings.append(f"replaces W&B run {spec.supersedes} (tagged '{SUPERSEDED_TAG}'): the run changed "
                               "in Neptune")

    def _synced_folder(self, wandb_run_id: str) -> Path | None:
        for folder in run_folders(self.root, wandb_run_id):
            if any(folder.glob("*.wandb.synced")) or any(folder.glob("*.wandb.syncstate")):
                return folder
        return None

    def write(self, run: ArchivedRun, ctx: LoadContext, spec: RunSpec | None = None) -> WrittenRun:
        spec = spec or self.spec(run)
        # A whole run written again (a resume, a replace): earlier sync folders of this id are no longer its tail.
        for folder in run_folders(self.root, spec.run_id):
            if "_sync" in folder.name and not any(folder.glob("*.wandb.sync*")):
                shutil.rmtree(folder, ignore_errors=True)
        # An interrupted attempt left at most a temporary folder (removed here) or a complete identical one.
        written = write_run(run, ctx, self.root, spec)
        ctx.save_checkpoint({"stage": "written", "run_id": spec.run_id, "folder": written.folder.name})
        with self._lock:
            self._written.append(written.folder)
        return written

    def run_id_for(self, run: ArchivedRun) -> str:
        return self.spec(run).run_id

    def sync_command(self, folders: list[Path] | None = None) -> str:
        """The exact command to upload the folders from a connected machine (set WANDB_API_KEY first,
        and WANDB_BASE_URL for a dedicated or self-managed server). Must run from the target root."""
        folders = folders if folders is not None else sorted(self._written)
        rel = [f.relative_to(self.root).as_posix() for f in folders] or ["wandb"]
        return f"cd {shlex.quote(str(self.root))} && wandb sync {' '.join(shlex.quote(r) for r in rel)}"

    def read_back(self, run: ArchivedRun) -> WandbRunData:
        return read_offline_run(self.root, self.run_id_for(run))

    def close(self) -> None:
        self._folders.deactivate()


class WandbOnlineTarget:
    """Loads runs into a W&B server: writes the run folder to a staging area, then `wandb sync`s it.

    The API key comes from `api_key` or WANDB_API_KEY and is only ever handed to wandb through the
    environment of the sync process; it never reaches a message, log line or the ledger.
    """

    name = "wandb"

    def __init__(
        self,
        *,
        entity: str | None = None,
        project: str | None = None,
        project_prefix: str = "",
        base_url: str | None = None,
        api_key: str | None = None,
        staging_dir: Path | None = None,
        runs_per_second: float = 2.0,
        sync_timeout: float = 3600.0,
        verify_timeout: float | None = None,
        keep_staging: bool = False,
        upload_workers: int | None = None,
        patience: Patience | None = None,
    ) -> None:
        """`upload_workers`: at most this many runs upload at once (one `wandb sync` each, whose wandb-core
        streams every file from disk); None lets every loading worker upload. `patience`: the timeout of one
        request to the server and how long the login is retried."""
        self.patience = patience or Patience()
        self.entity = entity or os.environ.get("WANDB_ENTITY") or None
        self._configured_entity = self.entity
        self.project = project or None
        self.project_prefix = project_prefix
        self.base_url = (base_url or os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").rstrip("/")
        self._api_key = api_key or os.environ.get("WANDB_API_KEY") or ""
        self.staging = Path(staging_dir or Path(tempfile.gettempdir()) / "neptune-migration-wandb").absolute()
        self.limiter = RateLimiter(runs_per_second)
        self.sync_timeout = sync_timeout
        # How long to wait for the server to count the last history lines after `wandb sync` exited.
        self.verify_timeout = verify_timeout if verify_timeout is not None else float(
            os.environ.get("NEPTUNE_MIGRATION_WANDB_VERIFY_TIMEOUT") or 30.0)
        self.keep_staging = keep_staging
        self._api: Any = None
        self._api_lock = threading.Lock()
        self.upload_workers = max(1, upload_workers) if upload_workers is not None else None
        self._uploads = threading.BoundedSemaphore(self.upload_workers) if self.upload_workers else None
        # The entity's projects, listed once per command: where copies of a run at another place are looked for.
        self._projects: list[str] | None = None
        # run id -> (entity, project) of the runs this target wrote or read back, for their UI links.
        self._run_paths: dict[str, tuple[str | None, str]] = {}

    def run_url(self, run_id: str) -> str | None:
        """The run's page in the W&B UI, for a run this target loaded or read back (None otherwise)."""
        where = self._run_paths.get(run_id)
        if where is None or not where[0]:
            return None
        parts = urlsplit(self.base_url)
        # W&B's cloud serves its API and its UI on different hosts; a self-hosted server serves both.
        host = "wandb.ai" if parts.hostname == "api.wandb.ai" else parts.netloc
        return f"{parts.scheme}://{host}/{quote(where[0])}/{quote(where[1])}/runs/{quote(run_id)}"

    @property
    def canonical(self) -> str:
        # The entity as configured, not as learned from the server later: the ledger key must not change.
        return f"wandb:{self.base_url}/{self._configured_entity or ''}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["WANDB_API_KEY"] = self._api_key
        env["WANDB_BASE_URL"] = self.base_url
        env["WANDB_SILENT"] = "true"
        env.pop("WANDB_MODE", None)
        # A wandb.Api in this process starts a wandb-core and advertises it in WANDB_SERVICE; the sync must
        # get its own, configured for this server, not attach to ours.
        env.pop("WANDB_SERVICE", None)
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
            env.setdefault(var, str(self.staging / var.lower()))
        return env

    def api(self) -> Any:
        with self._api_lock:
            if self._api is None:
                import wandb

                if not self._api_key:
                    raise UsageError("W&B needs an API key: set WANDB_API_KEY")
                self._api = wandb.Api(api_key=self._api_key, overrides={"base_url": self.base_url},
                                       timeout=max(1, math.ceil(self.patience.timeout)))
            return self._api

    def check(self) -> None:
        if not self._api_key:
            raise UsageError("W&B needs an API key: set WANDB_API_KEY")
        first_contact(self.base_url, self.patience, "W&B server", TargetError)
        try:
            viewer = backoff(lambda: self.api().viewer, budget=self.patience.budget, cap=10.0)
        except Exception as exc:
            reason = unreachable_reason(exc)
            if reason is not None:
                raise TargetError(f"cannot reach W&B at {server_name(self.base_url)} to log in: {reason} "
                                  f"({self.patience.describe()})") from None
            raise TargetError(f"W&B at {self.base_url} refused the login: {_safe(exc, self._api_key)}") from None
        if self.entity is None:
            self.entity = getattr(viewer, "entity", None) or getattr(viewer, "username", None)

    def spec(self, run: ArchivedRun) -> RunSpec:
        """Where the run goes: its base id, or a new generation's id when the archive holds a re-export of a
        changed run (targets/wandb/generations.py). Asks the server about the base run."""
        base = spec_for(run, self.entity, self.project, self.project_prefix)
        run_id, supersedes = resolve(run, self._existing(base))
        return RunSpec(base.entity, base.project, run_id, supersedes)

    def run_id_for(self, run: ArchivedRun) -> str:
        return self.spec(run).run_id

    def placement(self, run: ArchivedRun) -> Placement:
        if self.entity is None:
            self.check()  # the key's default entity names the place
        return placement(run, self.entity, self.project, self.project_prefix, self._configured_entity)

    def copies(self, ref: RunRef) -> list[Copy]:
        if self.entity is None:
            self.check()
        api = self.api()
        if self._projects is None:
            self._projects = projects(api, self.entity or "")  # two threads may both list: the same answer
        return online_copies(api, self.entity or "", ref, list(self._projects))

    def _server_run(self, spec: RunSpec) -> Any | None:
        """The run on the server (fresh, not cached), or None when there is none."""
        from wandb.errors import CommError

        path = f"{spec.entity or self.entity}/{spec.project}/{spec.run_id}"
        try:
            run = with_backoff(lambda: self.api().run(path))
            with_backoff(lambda: run.load(force=True))
        except CommError as exc:
            if "could not find run" in str(exc).lower():
                return None
            raise TargetError(f"cannot look up {path} on {self.base_url}: {_safe(exc, self._api_key)}") from None
        return run

    def _existing(self, base: RunSpec) -> Existing | None:
        run = self._server_run(base)
        return None if run is None else existing_from_config(dict(run.config))

    def _supersede(self, run: ArchivedRun, spec: RunSpec, result: LoadResult) -> None:
        """The new generation is complete: tag the run it replaces, and point the base run at the new one."""
        base = spec_for(run, self.entity, self.project, self.project_prefix)
        for run_id, change in ((spec.supersedes, {"superseded_by": spec.run_id}), (base.run_id,
                                                                                     {"current": spec.run_id})):
            old = self._server_run(RunSpec(spec.entity, spec.project, run_id or ""))
            if old is None:
                continue
            raw = dict(old.rawconfig or {})  # the whole config, values unwrapped
            raw["neptune_migration"] = {**(raw.get("neptune_migration") or {}), **change}
            tags = list(old.tags or [])
            if "superseded_by" in change and SUPERSEDED_TAG not in tags:
                tags.append(SUPERSEDED_TAG)
            variables = {"entity": old.entity, "project": spec.project, "name": run_id, "tags": tags,
                         "config": json.dumps({k: {"value": v, "desc": None} for k, v in raw.items()})}
            with_backoff(lambda v=variables: self.api()._service_api.execute_graphql(_SUPERSEDE, v))
        result.warnings.append(f"replaces W&B run {spec.supersedes} (tagged '{SUPERSEDED_TAG}'): the run changed "
                               "in Neptune")

    def load_run(self, run: ArchivedRun, ctx: LoadContext) -> LoadResult:
        if self.entity is None:
            self.check()  # learns the key's default entity: run paths must be complete to verify and resume
        spec = self.spec(run)
        root = self.staging / "runs" / spec.run_id
        # A half-synced run is resumed, never duplicated: wandb-core appends history after the server's line
        # count, so the rows the server already holds are left out of the replay.
        held = self._server_history_lines(spec)
        try:
            written = write_run(run, ctx, root, spec, skip_history_rows=held)
        except ValueError as exc:  # the server holds more rows than the archive: not ours to overwrite
            raise TargetError(f"W&B run {spec.run_id} does not match archived run {run.ref.key}: {exc}") from None
        if held:
            written.result.warnings.append(f"resumed a partly synced run: {held} history rows were already there")
        ctx.save_checkpoint({"stage": "written", "run_id": spec.run_id})
        self.limiter.acquire()
        if self._uploads is None:
            output = self._sync(root, written)
        else:
            with self._uploads:
                output = self._sync(root, written)
        # `wandb sync` exits 0 even when the server refused the run: check the server holds it all.
        self._verify(written, output)
        ctx.save_checkpoint({"stage": "synced", "run_id": spec.run_id})
        if spec.supersedes:
            # Last, once the new generation is whole: a crash before this leaves the old run as it was.
            self._supersede(run, spec, written.result)
        if not self.keep_staging:
            shutil.rmtree(root, ignore_errors=True)
        return written.result

    def _sync(self, root: Path, written: WrittenRun) -> str:
        # --include-synced: a crash after wandb marked the folder synced but before our checkpoint must
        # still replay (idempotent), never skip.
        cmd = [sys.executable, "-m", "wandb", "sync", "--include-synced", str(written.folder.relative_to(root))]
        try:
            proc = subprocess.run(
                cmd,
                cwd=root,
                env=self._env(),
                capture_output=True,
                text=True,
                timeout=self.sync_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            limit = f"{self.sync_timeout:.0f}s"
            raise TargetError(f"wandb sync of {written.spec.run_id} did not finish in {limit}") from None
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            tail = " ".join(out.split())[-400:]
            raise TargetError(f"wandb sync of {written.spec.run_id} failed: {_safe(tail, self._api_key)}")
        return out

    def _server_history_lines(self, spec: RunSpec) -> int:
        run = self._server_run(spec)
        return 0 if run is None else int(run._attrs.get("historyLineCount") or 0)

    def _verify(self, written: WrittenRun, output: str) -> None:
        spec = written.spec
        path = f"{spec.entity or self.entity}/{spec.project}/{spec.run_id}"
        tail = _safe(" ".join(output.split())[-300:], self._api_key)
        try:
            run = with_backoff(lambda: self.api().run(path))
            with_backoff(lambda: run.load(force=True))  # wandb.Api caches runs: ask the server again
        except Exception as exc:
            raise TargetError(f"run {path} is not on the server after wandb sync ({_safe(exc, self._api_key)}); "
                              f"sync said: {tail}") from None
        lines = int(run._attrs.get("historyLineCount") or 0)
        deadline = time.monotonic() + self.verify_timeout
        # A server may count the last lines a moment after the file stream closed: poll briefly.
        while (lines < written.history_rows or run.state == "running") and time.monotonic() < deadline:
            time.sleep(1.0)
            with_backoff(lambda: run.load(force=True))
            lines = int(run._attrs.get("historyLineCount") or 0)
        if lines < written.history_rows or run.state == "running":
            raise TargetError(f"run {path} is incomplete after wandb sync: {lines}/{written.history_rows} history "
                              f"rows, state {run.state}; sync said: {tail}")

    def read_back(self, run: ArchivedRun) -> WandbRunData:
        spec = self.spec(run)
        data = read_online(self.api(), spec.entity, spec.project, spec.run_id)
        self._run_paths[spec.run_id] = (getattr(data, "entity", None) or spec.entity, spec.project)
        return data

    def close(self) -> None:
        pass


# Tags and config of an existing run, as wandb's own `Run.update` sets them (by name rather than storage id).
_SUPERSEDE = """
mutation NeptuneMigrationSupersede($entity: String, $project: String, $name: String!, $tags: [String!],
                                   $config: JSONString) {
    upsertBucket(input: {entityName: $entity, modelName: $project, name: $name, tags: $tags, config: $config}) {
        bucket { id }
    }
}
"""


def _safe(value: object, secret: str) -> str:
    text = " ".join(str(value).split())[:400]
    return text.replace(secret, "***") if secret else text
