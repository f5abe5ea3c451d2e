"""Load archived Neptune runs into MLflow, exactly and resumably (the mapping is in docs/mlflow.md).

Identity: every MLflow run we create carries the tag `neptune.run_key_hash` (from `project_id/run_id`) from
the moment it exists, so a rerun finds it. A run that died half-way is completed in place: params repeat as
no-ops, metric batches already acknowledged are skipped through the ledger checkpoint, of the batches after it
only the points the run does not hold are sent (held.py: older servers fail on a repeated NaN point), artifacts are
overwritten, and only then is the run terminated and marked `neptune.migration.state=complete`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from neptune_migration._version import __version__
from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import decimal_micros, timestamps_ms, to_ms
from neptune_migration.errors import ArchiveError, TargetError, describe
from neptune_migration.naming import fit_length, resolve_collisions, short_hash
from neptune_migration.retry import (
    Patience,
    backoff,
    first_contact,
    hold_settings,
    retrying,
    scope_getter,
    scoped_settings,
    unreachable_reason,
)
from neptune_migration.secrets import redact
from neptune_migration.targets.base import Copy, LoadContext, LoadResult, Placement
from neptune_migration.targets.mlflow import server_version as versions
from neptune_migration.targets.mlflow.endpoint import naming_our_sessions
from neptune_migration.targets.mlflow.filesets import Unpacked, unpack
from neptune_migration.targets.mlflow.held import HeldPoints
from neptune_migration.targets.mlflow.lease import ExperimentLeases
from neptune_migration.targets.mlflow.mapping import (
    LOG_SUFFIX,
    MAPPING_TAG,
    MAX_EXPERIMENT_NAME,
    MAX_TAG_LENGTH,
    PICTURE_SUFFIX,
    SCALE_ARTIFACT,
    SCALE_IN_ARTIFACT,
    SCALE_TAG,
    STATE_TAG,
    attribute_dir,
    file_destination,
    file_series_widths,
    fold_key,
    metric_key,
    nul_tags,
    param_text,
    param_value,
    payload_files,
    repeated_sys_atoms,
    sanitize_key,
    scale_exact,
    scale_micros,
    series_file_name,
    series_line,
    step_decimals,
    text_value,
)
from neptune_migration.targets.mlflow.mapping_version import MAPPING_VERSION
from neptune_migration.targets.mlflow.scales import ExperimentScales, StepPlan, run_scales
from neptune_migration.targets.mlflow.store_schema import check_store_schema
from neptune_migration.targets.mlflow.views import render_histograms, write_log
from neptune_migration.vocabulary import FILE_LIKE_TYPES, RunRef, file_part

log = logging.getLogger("neptune_migration")

METRICS_PER_BATCH = 1000
# Rows per Arrow batch for float points: 16k keeps a batch's numpy and Python transients small (peak RSS
# 315 MB instead of 335 MB for a 1M-point run) at no measured cost in speed.
READ_BATCH = 16_384
PARAMS_PER_BATCH = 100
KEY_TAG = "neptune.run_key"
KEY_HASH_TAG = "neptune.run_key_hash"
# Set while a failed attempt left the run half-loaded (and the run FAILED); removed when a later attempt completes it.
LOAD_ERROR_TAG = "neptune.migration.load_error"
# The ledger that created the run (`LoadContext.migration`): tells this migration's copies from another's.
MIGRATION_TAG = "neptune.migration.ledger"
DEFAULT_STORE = Path("mlflow-store")
T = TypeVar("T")
_BUDGETED_ATTEMPTS = 1000  # the budget, not a count, ends the tries of a budgeted write


def run_key_hash(ref: RunRef) -> str:
    # Searching by a hash avoids quoting arbitrary run ids inside MLflow's filter language.
    return short_hash(ref.key, 32)


def writes_not_resent() -> contextlib.AbstractContextManager[None]:
    """MLflow's own retries off for one non-idempotent write: before 3.18 its client re-sent CreateRun and the like
    on a 5xx (a second run when the first try had been committed); from 3.18 it does not. `write_once` retries."""
    from mlflow import environment_variables as mlflow_env

    return scoped_settings({mlflow_env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.name: 0})


def write_once(send: Callable[[], T], applied: Callable[[], T | None], budget: float | None = None) -> T:
    """`send` a write that must not be applied twice (CreateRun, CreateExperiment, DeleteTag, ...), retrying
    transient failures; before each retry `applied()` looks for the effect of an earlier try (a server can commit a
    write and still answer 503 or time out) and, when it finds it (not None), that is the answer. With `budget`
    (the target's --retry-budget) tries go on for that long, as MLflow's own retries did: a server restarting
    mid-load is waited for."""
    sent = False

    def attempt() -> T:
        nonlocal sent
        if sent:
            found = applied()
            if found is not None:
                return found
        sent = True
        with writes_not_resent():
            return send()

    if budget is None:
        return retrying(attempt)
    return backoff(attempt, cap=30.0, budget=budget, attempts=_BUDGETED_ATTEMPTS)


def default_tracking_uri() -> str:
    return f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"


# MLflow 3's UI opens an experiment by this tag: without it a migrated experiment opens on the GenAI overview of
# traces ("No data available") instead of its runs. Older servers ignore it.
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"

# What `mlflow ui` serves a local store on: the port ui_command passes.
LOCAL_UI = "http://127.0.0.1:5000"


def ui_server(tracking_uri: str) -> str:
    """The base URL of the UI showing this tracking URI (no credentials): the server itself, or for a store read
    in-process (a SQLite or database URI) what `mlflow ui` serves it on."""
    if tracking_uri.startswith(("http://", "https://")):
        return public_uri(tracking_uri).rstrip("/")
    return LOCAL_UI


def experiment_url(server: str, experiment_id: str) -> str:
    # Older servers ignore the workflow type; MLflow 3 also reads the experiment's kind tag (EXPERIMENT_KIND).
    return f"{server}/#/experiments/{experiment_id}?workflowType=machine_learning"


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    # Without the workflow type the run page opens under the GenAI view's "Evaluations" breadcrumb and sidebar.
    return f"{server}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def store_uri_to_show(uri: str) -> tuple[str, bool]:
    """A database store URI that can be pasted into `mlflow ui`: the user kept, the password never printed (the
    database driver reads it from the environment, e.g. PGPASSWORD). Also whether a password was removed."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri, False
    host = (parts.username or "") + "@" + (parts.hostname or "")
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=host)), True


def ui_command(tracking_uri: str, experiment_ids: list[str] | tuple[str, ...] = ()) -> str:
    """How to look at the runs, for every kind of store: a server's experiment pages, or for a store read
    in-process (SQLite, PostgreSQL, MySQL) the `mlflow ui` command that serves it and the pages it will show."""
    server = ui_server(tracking_uri)
    pages = [experiment_url(server, x) for x in experiment_ids]
    if tracking_uri.startswith(("http://", "https://")):
        return "open " + (" ".join(pages) if pages else server) + " in a browser"
    # The mlflow beside this interpreter: in a venv it is not on the PATH until the venv is activated.
    beside = Path(sys.executable).parent / "mlflow"
    mlflow = shlex.quote(str(beside)) if beside.exists() else "mlflow"
    shown, secret = store_uri_to_show(tracking_uri)
    command = f"{mlflow} ui --backend-store-uri {shlex.quote(shown)} --port {urlsplit(LOCAL_UI).port}"
    if secret:
        command += "  (with the database password in the environment, e.g. PGPASSWORD or MYSQL_PWD)"
    return command + "\nthen open " + (" ".join(pages) if pages else LOCAL_UI)


def experiment_description(project_id: str, runs_selected: int | None = None) -> tuple[str, dict[str, str]]:
    """The note and tags a created experiment gets, so someone finding it in MLflow knows where it came from."""
    workspace = project_id.split("/", 1)[0] if "/" in project_id else ""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = f" {runs_selected} run(s) were selected." if runs_selected is not None else ""
    note = (f"Migrated from Neptune project {project_id}" + (f" (workspace {workspace})" if workspace else "")
            + f" by neptune-migration {__version__} on {when}.{runs} Each run's Neptune id is in its tag "
            f"{KEY_TAG}.")
    tags = {"mlflow.note.content": note, "neptune.project": project_id, EXPERIMENT_KIND: TRAINING_KIND,
            "neptune.migrated_by": f"neptune-migration {__version__}"}
    if workspace:
        tags["neptune.workspace"] = workspace
    return note, tags


def keeps_negative_zero(tracking_uri: str) -> bool:
    """PostgreSQL's float8 keeps -0.0; SQLite and MySQL store 0.0. Behind a REST server the store is unknown, so
    the load counts the approximation and validation measures what the server actually holds."""
    return tracking_uri.startswith("postgresql")


def public_uri(uri: str) -> str:
    """The tracking URI without credentials, safe to print and to key the ledger with."""
    if "@" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=host)
    return urlunsplit(parts)


class MlflowTarget:
    name = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_by: str = "project",
        experiment_prefix: str = "",
        upload_workers: int = 4,
        metric_requests_in_flight: int = 2,
        patience: Patience | None = None,
        writer: str | None = None,
    ) -> None:
        """`upload_workers`: artifact uploads in flight at once, across all runs this target loads (each file
        streams from disk in one PUT). `patience`: per-request timeout and retry budget for a tracking server.
        `writer`: the experiment claim's id shared by every worker of one cluster migration."""
        from mlflow import environment_variables as mlflow_env
        from mlflow.tracking import MlflowClient

        # One "View run at" line per run on stdout (and a get_run call each) is noise in a migration of thousands.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        # mlflow configures its own loggers on import; its INFO lines would drown our progress.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)

        if experiment_by not in ("project", "experiment"):
            raise TargetError(f"--experiment-by must be 'project' or 'experiment', not {experiment_by!r}")
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.patience = patience or Patience()
        self.max_retries = mlflow_retries(self.patience.budget)
        # MLflow's client reads these on every request; the stages call us from their own threads, so they are held
        # for the process while this target is open (close() releases them) rather than scoped to one thread.
        for setting in (mlflow_env.MLFLOW_HTTP_REQUEST_TIMEOUT, mlflow_env.MLFLOW_HTTP_REQUEST_MAX_RETRIES):
            scope_getter(setting)
        self._release_settings = hold_settings({
            mlflow_env.MLFLOW_HTTP_REQUEST_TIMEOUT.name: max(1, math.ceil(self.patience.timeout)),
            mlflow_env.MLFLOW_HTTP_REQUEST_MAX_RETRIES.name: self.max_retries,
        })
        self.local_store: Path | None = None
        # The tracking server's version, read by check() (None for a store in this process, or a server that did
        # not say).
        self.server_version: str | None = None
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri[len("sqlite:///") :])
            db.parent.mkdir(parents=True, exist_ok=True)
            self.local_store = db.parent
        self.experiment_by = experiment_by
        self.experiment_prefix = experiment_prefix
        # MLflow's client upgrades an older database store as it opens it: refuse such a store first.
        check_store_schema(naming_our_sessions(self.tracking_uri), public_uri(self.tracking_uri))
        self.client = MlflowClient(tracking_uri=naming_our_sessions(self.tracking_uri))
        store = self.client._tracking_client.store
        # Only the REST store gets the direct JSON path; database URIs go through MLflow's own store.
        self._rest_creds = getattr(store, "get_host_creds", None) if type(store).__name__ == "RestStore" else None
        self._experiments: dict[str, str] = {}
        self._leases = ExperimentLeases(self.client, retrying, writer)
        self._scales = ExperimentScales(self.client, retrying)
        self._planned: dict[str, dict[str, int]] = {}  # run key -> the plan `prepare` made for it
        self._exp_lock = threading.Lock()
        self.upload_workers = max(1, upload_workers)
        self._artifact_pool = ThreadPoolExecutor(self.upload_workers, thread_name_prefix="mlflow-artifacts")
        self._metric_pool = ThreadPoolExecutor(
            max(1, metric_requests_in_flight * 4), thread_name_prefix="mlflow-metrics"
        )
        self.in_flight = max(1, metric_requests_in_flight)

    @property
    def canonical(self) -> str:
        return "mlflow:" + public_uri(self.tracking_uri)

    @property
    def about(self) -> str | None:
        """`MLflow server 3.10.1` once check() read the server's version; shown in summaries and reports."""
        return f"MLflow server {self.server_version}" if self.server_version else None

    # -- setup ------------------------------------------------------------------------------------------
    def check(self) -> None:
        if self.tracking_uri.startswith(("http://", "https://")):
            import requests

            first_contact(public_uri(self.tracking_uri), self.patience, "MLflow tracking server", TargetError)
            url = self.tracking_uri.rstrip("/") + "/health"
            started = time.monotonic()
            tries = 0

            def health() -> Any:
                nonlocal tries
                tries += 1
                return requests.get(url, timeout=self.patience.timeout)

            try:
                response = backoff(health, budget=self.patience.budget, cap=10.0)
            except requests.RequestException as exc:
                raise TargetError(
                    f"cannot reach the MLflow tracking server at {public_uri(self.tracking_uri)}: "
                    f"{unreachable_reason(exc) or _reason(exc)} ({tries} tries of GET /health in "
                    f"{time.monotonic() - started:.0f}s; {self.patience.describe()})"
                ) from None
            if response.status_code >= 400:
                raise TargetError(
                    f"the MLflow tracking server at {public_uri(self.tracking_uri)} answered "
                    f"{response.status_code} on /health"
                )
            self._know_server()
        try:
            self.client.search_experiments(max_results=1)
        except Exception as exc:
            raise TargetError(
                f"the MLflow tracking store {public_uri(self.tracking_uri)} refused a query: {_reason(exc)}"
            ) from None

    def _know_server(self) -> None:
        """Read the server's version (refused below the tested minimum, a warning outside the range); it decides
        the rules that differ between servers (server_version.py)."""
        self.server_version = versions.read(self.tracking_uri, self.patience.timeout)
        warning = versions.judge(self.server_version, public_uri(self.tracking_uri))
        if warning:
            log.warning(warning)
        self._leases.deletes_tags = versions.at_least(self.server_version, versions.DELETES_EXPERIMENT_TAGS)

    def experiment_name(self, run: ArchivedRun) -> str:
        base = run.ref.project_id
        if self.experiment_by == "experiment":
            base = str(run.atom_value("sys/name") or run.ref.project_id)
        return fit_length(self.experiment_prefix + base, MAX_EXPERIMENT_NAME)

    def experiment_id(self, name: str, project_id: str | None = None) -> str:
        """The experiment's id, created (described and tagged with `project_id`'s origin) when it does not exist.
        An experiment that exists is left as it is: its description may be someone's own."""
        with self._exp_lock:
            if name in self._experiments:
                return self._experiments[name]
            exp = self.client.get_experiment_by_name(name)
            if exp is not None and exp.lifecycle_stage == "deleted":
                raise TargetError(
                    f"MLflow experiment {name!r} exists but is deleted; restore it in MLflow or use "
                    "--experiment-prefix to load into a new one"
                )
            if exp is None:
                location = None
                if self.local_store is not None:
                    location = (self.local_store / "artifacts" / short_hash(name, 16)).resolve().as_uri()
                tags = experiment_description(project_id)[1] if project_id else None
                exp_id = self._create_experiment(name, location, tags)
            else:
                exp_id = exp.experiment_id
                if "neptune.migrated_by" in exp.tags and EXPERIMENT_KIND not in exp.tags:
                    # Made by an earlier version of this tool: opened on the GenAI view until it has the kind.
                    self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND, TRAINING_KIND)
            self._leases.claim(exp_id, name)
            self._experiments[name] = exp_id
            return exp_id

    def _create_experiment(self, name: str, location: str | None, tags: dict[str, str] | None) -> str:
        def existing() -> str | None:
            exp = self.client.get_experiment_by_name(name)
            return exp.experiment_id if exp is not None else None

        def create() -> str:
            try:
                return self.client.create_experiment(name, artifact_location=location, tags=tags)
            except Exception:
                # Another process created it between our lookup and create.
                found = existing()
                if found is None:
                    raise
                return found

        return write_once(create, existing, self.patience.budget)

    def close(self) -> None:
        self._artifact_pool.shutdown(wait=True)
        self._metric_pool.shutdown(wait=True)
        self._leases.release()
        self._release_settings()

    # -- identity ---------------------------------------------------------------------------------------
    def find_runs(self, experiment_id: str, ref: RunRef) -> list[Any]:
        return self.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{KEY_HASH_TAG}` = '{run_key_hash(ref)}'",
            max_results=50,
            order_by=["attributes.start_time ASC"],
        )

    def placement(self, run: ArchivedRun) -> Placement:
        options = f"--experiment-by {self.experiment_by}"
        if self.experiment_prefix:
            options += f" --experiment-prefix {shlex.quote(self.experiment_prefix)}"
        return Placement(experiment_place(self.experiment_name(run)), options)

    def experiments(self) -> dict[str, str]:
        """{experiment id: name} of every active experiment."""
        out: dict[str, str] = {}
        token = None
        while True:
            page = retrying(lambda t=token: self.client.search_experiments(max_results=1000, page_token=t))
            out.update({e.experiment_id: e.name for e in page})
            token = page.token
            if not token:
                return out

    def copies(self, ref: RunRef, experiments: dict[str, str] | None = None) -> list[Copy]:
        """Every active MLflow run carrying this Neptune run's key, in any experiment (`experiments`: the list,
        when the caller keeps it)."""
        names = experiments if experiments is not None else self.experiments()
        ids = sorted(names)
        found: list[Copy] = []
        for i in range(0, len(ids), 100):  # MLflow's REST search takes a bounded list of experiments
            chunk = ids[i : i + 100]
            runs = retrying(lambda c=chunk: self.client.search_runs(
                c, filter_string=f"tags.`{KEY_HASH_TAG}` = '{run_key_hash(ref)}'", max_results=1000))
            found += [Copy(experiment_place(names[r.info.experiment_id]), r.info.run_id,
                           r.data.tags.get(MIGRATION_TAG)) for r in runs]
        return found

    def delete_copy(self, copy: Copy) -> None:
        retrying(lambda: self.client.delete_run(copy.target_id))

    # -- the load ---------------------------------------------------------------------------------------
    def load_run(self, run: ArchivedRun, ctx: LoadContext) -> LoadResult:
        atoms = run.atoms()
        exp_id = self.experiment_id(self.experiment_name(run), run.ref.project_id)
        steps = self._step_plan(exp_id, run, ctx)
        existing = retrying(lambda: self.find_runs(exp_id, run.ref))
        checkpoint = ctx.checkpoint or {}
        replace = ctx.replace or any(not _scales_fit(run_scales(r, self.client), steps.run_tag) for r in existing)
        if existing and replace:
            # A refreshed run replaces its earlier copy, as does one logged at a step scale the experiment has
            # since raised (its points cannot be re-stepped in place); deleted runs drop out of the key search.
            for old in existing:
                retrying(lambda r=old.info.run_id: self.client.delete_run(r))
            existing = []
        if existing:
            mlflow_run, *extras = sorted(existing, key=_creation_order)
            for extra in extras:
                # Two runs for one key come from a race with another writer (or an earlier version): one survives.
                self.client.delete_run(extra.info.run_id)
            run_id = mlflow_run.info.run_id
            if checkpoint.get("mlflow_run_id") != run_id:
                checkpoint = {}  # the checkpoint belongs to a run that no longer exists
            held_scales = run_scales(mlflow_run, self.client)
            if held_scales | steps.run_tag != held_scales:
                # A wider load adds series the run did not have: their scales join the run's tag before any point.
                self._retag_scales(run_id, held_scales | steps.run_tag)
        else:
            run_id = self._create_run(exp_id, run, steps.run_tag, ctx.migration)
            self._one_run_per_key(exp_id, run, run_id)
            checkpoint = {}
            ctx = dataclasses.replace(ctx, held=lambda _part: False)  # a new run holds nothing yet
        checkpoint["mlflow_run_id"] = run_id
        ctx.save_checkpoint(dict(checkpoint))
        result = LoadResult(target_id=run_id)
        steps.record(result)
        if steps.raised:
            result.stale = retrying(lambda: self._scales.stale_runs(
                exp_id, steps.raised, lambda r: run_scales(r, self.client), skip=[run_id]))
        failed_before = bool(existing) and LOAD_ERROR_TAG in existing[0].data.tags
        # A run found again (a resumed load, or one from another ledger) may hold any of the batches to come.
        held = HeldPoints.of(self.client, run_id, retrying) if existing else None

        try:
            self._log_params(run_id, run, atoms, ctx, result)
            with tempfile.TemporaryDirectory(prefix="neptune-migrate-") as tmp:
                staging = Path(tmp)
                uploads: list[Future[None]] = []
                self._log_metrics(run_id, run, ctx, checkpoint, result, staging, uploads, steps, held)
                self._log_text_series(run_id, run, ctx, result, staging, uploads)
                self._log_files(run_id, run, ctx, result, staging, uploads)
                for fut in uploads:
                    fut.result()
        except Exception as exc:
            self._mark_failed(run_id, exc)
            raise
        self._terminate(run_id, run)
        if failed_before:
            self.delete_run_tag(run_id, LOAD_ERROR_TAG)
        retrying(lambda: self.client.set_tag(run_id, STATE_TAG, "complete"))
        return result

    def sync_run(self, run: ArchivedRun, delta: ArchivedRun, ctx: LoadContext) -> LoadResult:
        """`migrate --sync`: append `delta` (the run's new archive parts) to the same MLflow run (sync.py)."""
        from neptune_migration.targets.mlflow.sync import sync_run

        return sync_run(self, run, delta, ctx, load_error_tag=LOAD_ERROR_TAG, creation_order=_creation_order)

    def _retag_scales(self, run_id: str, scales: dict[str, int]) -> None:
        text = json.dumps(scales, sort_keys=True)
        retrying(lambda: self.client.set_tag(run_id, SCALE_TAG, text if len(text) <= MAX_TAG_LENGTH
                                             else SCALE_IN_ARTIFACT))

    def _mark_failed(self, run_id: str, exc: BaseException) -> None:
        """A run left half-loaded must not look like a live RUNNING run in the UI: FAILED, with the reason in a tag,
        until the next attempt completes it (and removes the tag)."""
        reason = _tag_value(redact(describe(exc)))
        with contextlib.suppress(Exception):  # the target may be what failed; the ledger has the reason anyway
            self.client.set_tag(run_id, LOAD_ERROR_TAG, reason)
            self.client.set_terminated(run_id, status="FAILED")

    def _one_run_per_key(self, exp_id: str, run: ArchivedRun, run_id: str) -> None:
        """Another writer that slipped past the experiment claim may have created the same key at the same moment:
        both pick the same survivor (the order is the runs' own), the other deletes its run and fails this one."""
        same = retrying(lambda: self.find_runs(exp_id, run.ref))
        if len(same) < 2:
            return
        survivor = min(same, key=_creation_order).info.run_id
        if survivor != run_id:
            retrying(lambda: self.client.delete_run(run_id))
            raise TargetError(f"another writer created MLflow run {survivor} for {run.ref.key} at the same moment; "
                              "this copy was removed (rerun to check that run)")

    def _create_run(self, exp_id: str, run: ArchivedRun, scales: dict[str, int], migration: str | None = None) -> str:
        tags = self.run_tags(run)
        tags[STATE_TAG] = "loading"
        if migration:
            tags[MIGRATION_TAG] = migration
        if scales:
            # At creation, so a run never exists with points at a scale it does not name.
            text = json.dumps(scales, sort_keys=True)
            tags[SCALE_TAG] = text if len(text) <= MAX_TAG_LENGTH else SCALE_IN_ARTIFACT
        start = run.start_time_ms()

        def created() -> str | None:
            found = self.find_runs(exp_id, run.ref)
            return min(found, key=_creation_order).info.run_id if found else None

        return write_once(
            lambda: self.client.create_run(
                exp_id,
                # start_time=0 would become "now" in MLflow; 1 ms after the epoch is the honest nearest.
                start_time=max(start, 1) if start is not None else None,
                run_name=run.ref.run_id,
                tags=tags,
            ).info.run_id,
            created,
            self.patience.budget,
        )

    def delete_run_tag(self, run_id: str, key: str) -> None:
        """DeleteTag, which MLflow answers with an error when the tag is gone: a retry first looks."""
        def send() -> bool:
            self.client.delete_tag(run_id, key)
            return True

        write_once(send, lambda: None if key in self.client.get_run(run_id).data.tags else True, self.patience.budget)

    def run_tags(self, run: ArchivedRun) -> dict[str, str]:
        """Every tag the run gets at creation, identity tags first (they exist from the first moment)."""
        return self._tags(run, link_parent=True)

    def _tags(self, run: ArchivedRun, link_parent: bool) -> dict[str, str]:
        ref = run.ref
        tags: dict[str, str] = {
            KEY_HASH_TAG: run_key_hash(ref),
            KEY_TAG: _tag_value(ref.key),
            "neptune.project": _tag_value(ref.project_id),
            "neptune.run_id": _tag_value(ref.run_id),
            MAPPING_TAG: str(MAPPING_VERSION),
        }
        atoms = run.atoms()
        experiment = run.atom_value("sys/name")
        if experiment:
            tags["neptune.experiment"] = _tag_value(str(experiment))
        owner = run.atom_value("sys/owner")
        if owner:
            tags["mlflow.user"] = _tag_value(str(owner))
        description = run.atom_value("sys/description")
        if description:
            tags["mlflow.note.content"] = _tag_value(str(description))
        for attr, prefix in (("sys/tags", "neptune.tag."), ("sys/group_tags", "neptune.group_tag.")):
            values = sorted(run.atom_value(attr) or [])
            if values:
                tags[prefix.rstrip(".") + "s"] = _tag_value(",".join(values))
                # Prefixed before resolving: a suffix added to a collision must not get the prefix twice.
                names = resolve_collisions([prefix + v for v in values], sanitize_key, fold_key)
                for name in names.values():
                    tags[name] = "true"
        parent = run.atom_value("sys/forking/parent")
        if parent:
            tags["neptune.fork_parent"] = _tag_value(str(parent))
            fork_step = run.atom_value("sys/forking/step")
            if fork_step is not None:
                tags["neptune.fork_step"] = param_text("float", fork_step)
        if parent and link_parent:
            parent_runs = self.find_runs(
                self.experiment_id(self.experiment_name(run)), RunRef(ref.project_id, str(parent))
            )
            if parent_runs:
                tags["mlflow.parentRunId"] = parent_runs[0].info.run_id
        repeated = repeated_sys_atoms(atoms, ref.run_id)
        for path, atom in atoms.items():
            if path.startswith("sys/") and atom.value is not None and path not in repeated:
                key = sanitize_key("neptune." + path)
                tags.setdefault(key, _tag_value(param_text(atom.type, atom.value)))
        return tags

    def _log_params(
        self, run_id: str, run: ArchivedRun, atoms: dict[str, Any], ctx: LoadContext, result: LoadResult
    ) -> None:
        from mlflow.entities import Param

        wanted = {p: a for p, a in atoms.items() if not p.startswith("sys/") and ctx.wants_attribute(p, a.type)}
        names = resolve_collisions(wanted, sanitize_key, fold_key)
        params: list[Param] = []
        long_values: dict[str, str] = {}
        for path, atom in sorted(wanted.items()):
            key = names[path]
            if key != path:
                result.renamed[path] = key
            if ctx.held(path):  # logged by an earlier load of this run
                continue
            text = param_text(atom.type, atom.value)
            stored, where, kinds = param_value(key, text)
            if where is not None:
                long_values[where] = text
            for kind in kinds:
                result.approx(kind)
            params.append(Param(key, stored))
        nul = nul_tags(self._tags(run, link_parent=False))
        if nul:
            result.approx("nul_replaced_in_tags", nul)
        for i in range(0, len(params), PARAMS_PER_BATCH):
            chunk = params[i : i + PARAMS_PER_BATCH]
            retrying(lambda c=chunk: self.client.log_batch(run_id, params=c))
        for where, text in long_values.items():
            retrying(lambda w=where, t=text: self.client.log_text(run_id, t, w))

    # -- metrics ----------------------------------------------------------------------------------------
    def _series_plan(self, run: ArchivedRun, ctx: LoadContext) -> dict[str, int]:
        """First pass: the decimal places each float series needs so every step becomes an exact integer."""
        plan: dict[str, int] = {}
        for batch in run.batches(["float_series"], ["attribute_path", "step", "step_exact"], READ_BATCH):
            exact = batch.column("step_exact")
            needed = step_decimals(decimal_micros(batch.column("step")),
                                   exact.to_pylist() if exact.null_count < len(exact) else None)
            # Per-series maximum through dictionary codes: Acero's group_by costs tens of MB of pool memory.
            encoded = pc.dictionary_encode(batch.column("attribute_path"))
            codes = encoded.indices.to_numpy(zero_copy_only=False)
            most = np.zeros(len(encoded.dictionary), dtype=np.int8)
            np.maximum.at(most, codes, needed)
            for path, d in zip(encoded.dictionary.to_pylist(), most.tolist(), strict=True):
                plan[path] = max(plan.get(path, 0), d)
        return {p: d for p, d in plan.items() if ctx.wants_attribute(p, "float_series")}

    def prepare(self, runs: list[ArchivedRun], wants: Callable[[str, str], bool]) -> list[RunRef]:
        """Raise each experiment's step scales to what all of `runs` need (one cheap pass over their steps), so
        that the runs of this load agree from the first one on and none is loaded twice. Returns the runs loaded
        earlier that now need loading again."""
        needed: dict[str, dict[str, int]] = {}
        for run in runs:
            plan = self._series_plan(run, LoadContext(wants_attribute=wants))
            with self._exp_lock:
                self._planned[run.ref.key] = plan
            if not any(plan.values()):
                continue
            names = resolve_collisions(plan, metric_key, fold_key)
            exp = needed.setdefault(self.experiment_name(run), {})
            for path, d in plan.items():
                exp[names[path]] = max(exp.get(names[path], 0), d)
        stale: list[RunRef] = []
        for name, by_key in sorted(needed.items()):
            exp_id = self.experiment_id(name, name_project(runs, name, self.experiment_name))
            raised = self._scales.raise_to(exp_id, by_key)
            if raised:
                stale += retrying(lambda e=exp_id, r=raised: self._scales.stale_runs(
                    e, r, lambda m: run_scales(m, self.client)))
        return stale

    def _step_plan(self, exp_id: str, run: ArchivedRun, ctx: LoadContext) -> StepPlan:
        """Metric names and the step scale of each series: the experiment's scale for its key, raised first when
        this run needs more (docs/mlflow.md, "Steps")."""
        with self._exp_lock:
            planned = self._planned.pop(run.ref.key, None)
        # The plan `prepare` made is for the same selection; a resumed or reloaded run computes its own.
        needed = planned if planned is not None else self._series_plan(run, ctx)
        names = resolve_collisions(needed, metric_key, fold_key)
        by_key = {names[p]: d for p, d in needed.items()}
        known = self._scales.read(exp_id)
        raised: dict[str, int] = {}
        if any(d > known.get(k, 0) for k, d in by_key.items()):
            raised = self._scales.raise_to(exp_id, by_key)
            known = self._scales.read(exp_id)
        decimals = {p: max(d, known.get(names[p], 0)) for p, d in needed.items()}
        return StepPlan(decimals, names, raised)

    def _prepare_metrics(
        self, run_id: str, run: ArchivedRun, ctx: LoadContext, result: LoadResult, steps: StepPlan
    ) -> tuple[dict[str, int], dict[str, str]]:
        """The series plan and metric names, shared by every metric writer; records renames and a scale too long
        for the run tag."""
        if not steps.decimals:
            return {}, {}
        for path, key in steps.names.items():
            if key != path:
                result.renamed[path] = key
        text = json.dumps(steps.run_tag, sort_keys=True)
        if steps.run_tag and len(text) > MAX_TAG_LENGTH:
            retrying(lambda: self.client.log_text(run_id, text, SCALE_ARTIFACT))
        return steps.decimals, steps.names

    def _log_metrics(
        self,
        run_id: str,
        run: ArchivedRun,
        ctx: LoadContext,
        checkpoint: dict[str, Any],
        result: LoadResult,
        staging: Path,
        uploads: list[Future[None]],
        steps: StepPlan,
        held: HeldPoints | None,
    ) -> None:
        plan, names = self._prepare_metrics(run_id, run, ctx, result, steps)
        plan = {p: d for p, d in plan.items() if not ctx.held(p)}  # series an earlier load sent are there
        if not plan:
            return
        # Batch numbers count batches of this plan: a checkpoint made for another plan cannot skip any of them.
        signature = short_hash("\n".join(sorted(plan)), 16)
        if checkpoint.get("metric_plan", signature) != signature:
            checkpoint.pop("metric_batches_done", None)
        checkpoint["metric_plan"] = signature
        fallback_ts = to_ms(run.atom_value("sys/creation_time")) or 0
        self._stream_metrics(run_id, run, plan, names, fallback_ts, ctx, checkpoint, result, count_skipped=True,
                             held=held)

    def _stream_metrics(self, run_id: str, run: ArchivedRun, plan: dict[str, int], names: dict[str, str],
                        fallback_ts: int, ctx: LoadContext, checkpoint: dict[str, Any], result: LoadResult,
                        count_skipped: bool, held: HeldPoints | None = None) -> None:
        """Send `run`'s metric batches, `in_flight` at a time, skipping those an interrupted attempt had sent
        (`count_skipped`: they still count as the run's points) and checkpointing the acknowledged prefix.
        `held`: what the run holds already (a run found again); of the batches not skipped, only the points it
        lacks are sent (held.py)."""
        done = int(checkpoint.get("metric_batches_done", 0))
        window: list[tuple[int, Future[None], int]] = []
        last_save = time.monotonic()
        for index, metrics in enumerate(self._metric_batches(run, plan, names, fallback_ts, result)):
            if index < done:  # acknowledged by the server before an interruption: never sent twice
                if count_skipped:
                    result.points += len(metrics)
                continue
            sending = held.missing(metrics) if held is not None else metrics
            if sending:
                fut = self._metric_pool.submit(retrying, lambda m=sending: self._send_metrics(run_id, m))
            else:
                fut = Future()
                fut.set_result(None)
            window.append((index, fut, len(metrics)))
            while len(window) >= self.in_flight:
                done, last_save = self._settle(window.pop(0), done, checkpoint, ctx, result, last_save)
        while window:
            done, last_save = self._settle(window.pop(0), done, checkpoint, ctx, result, last_save)
        checkpoint["metric_batches_done"] = done
        ctx.save_checkpoint(dict(checkpoint))

    def _settle(
        self,
        item: tuple[int, Future[None], int],
        done: int,
        checkpoint: dict[str, Any],
        ctx: LoadContext,
        result: LoadResult,
        last_save: float,
    ) -> tuple[int, float]:
        index, fut, n = item
        fut.result()
        result.points += n
        ctx.on_points(n)
        # Batches settle in order, so everything before index+1 is acknowledged by the server.
        done = index + 1
        now = time.monotonic()
        if now - last_save > 1.0:
            checkpoint["metric_batches_done"] = done
            ctx.save_checkpoint(dict(checkpoint))
            last_save = now
        return done, last_save

    def _send_metrics(self, run_id: str, metrics: list[dict[str, Any]]) -> None:
        """One log-batch request. Over REST the JSON is built directly: MLflow's entity objects and protobuf
        conversion cost more client CPU than the request itself, and the client shares the cores with the server.
        """
        if self._rest_creds is not None:
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            body = {"run_id": run_id, "metrics": [_json_metric(m) for m in metrics]}
            response = http_request(self._rest_creds(), "/api/2.0/mlflow/runs/log-batch", "POST", json=body,
                                    timeout=max(1, math.ceil(self.patience.timeout)), max_retries=self.max_retries)
            verify_rest_response(response, "/api/2.0/mlflow/runs/log-batch")
            return
        from mlflow.entities import Metric

        self.client.log_batch(
            run_id, metrics=[Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in metrics]
        )

    def _metric_batches(
        self, run: ArchivedRun, plan: dict[str, int], names: dict[str, str], fallback_ts: int, result: LoadResult
    ) -> Iterator[list[dict[str, Any]]]:
        """Second pass: metric batches of at most 1000, in the archive's own (deterministic) order."""
        pending: list[dict[str, Any]] = []
        for cols in self._metric_columns(run, plan, names, fallback_ts, result):
            keys = cols.keys()
            start = 0
            while start < cols.size:
                # Slice the numpy columns first, so only the rows of one request become Python objects.
                stop = min(cols.size, start + METRICS_PER_BATCH - len(pending))
                pending.extend(
                    {"key": k, "value": v, "timestamp": t, "step": s}
                    for k, v, t, s in zip(
                        keys[start:stop],
                        cols.values[start:stop].tolist(),
                        cols.timestamps[start:stop].tolist(),
                        cols.steps[start:stop].tolist(),
                        strict=True,
                    )
                )
                start = stop
                if len(pending) == METRICS_PER_BATCH:
                    yield pending
                    pending = []
        if pending:
            yield pending

    def _metric_columns(
        self, run: ArchivedRun, plan: dict[str, int], names: dict[str, str], fallback_ts: int, result: LoadResult
    ) -> Iterator[MetricColumns]:
        """The run's wanted float points as numpy columns, one archive batch at a time, in archive order."""
        cols = ["attribute_path", "step", "step_exact", "timestamp", "float_value"]
        wanted = pa.array(list(plan), pa.string())
        for batch in run.batches(["float_series"], cols, READ_BATCH):
            keep = pc.is_in(batch.column("attribute_path"), value_set=wanted)
            batch = batch.filter(keep)
            if batch.num_rows == 0:
                continue
            micros = decimal_micros(batch.column("step"))
            ts = timestamps_ms(batch.column("timestamp"), fallback_ts)
            if (ts < 0).any():
                result.approx("negative_timestamp_clamped", int((ts < 0).sum()))
                ts = np.maximum(ts, 0)
            values = batch.column("float_value").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            infinite = np.isinf(values)
            if infinite.any():
                result.approx("inf_clamped_by_mlflow", int(infinite.sum()))
            negative_zero = (values == 0) & np.signbit(values)
            if negative_zero.any() and not keeps_negative_zero(self.tracking_uri):
                result.approx("negative_zero_stored_as_zero", int(negative_zero.sum()))
            # Dictionary codes group rows by series with integer compares, not string compares per series.
            encoded = pc.dictionary_encode(batch.column("attribute_path"))
            codes = encoded.indices.to_numpy(zero_copy_only=False)
            series = encoded.dictionary.to_pylist()
            steps = np.empty(len(micros), dtype=np.int64)
            for code, path in enumerate(series):
                mask = codes == code
                try:
                    steps[mask] = scale_micros(micros[mask], plan[path])
                except OverflowError:
                    raise ArchiveError(
                        f"run {run.ref.key}: series {path!r} has steps beyond int64 after scaling by "
                        f"10^{plan[path]}"
                    ) from None
            exact_col = batch.column("step_exact")
            if exact_col.null_count < batch.num_rows:
                for i, value in enumerate(exact_col.to_pylist()):
                    if value is not None:
                        path = series[codes[i]]
                        try:
                            steps[i] = scale_exact(value, plan[path])
                        except (OverflowError, ArithmeticError) as exc:
                            raise ArchiveError(f"run {run.ref.key}: series {path!r}: {exc}") from None
            yield MetricColumns([names[p] for p in series], codes, values, ts, steps)

    # -- series kept as files ---------------------------------------------------------------------------
    def _log_text_series(
        self, run_id: str, run: ArchivedRun, ctx: LoadContext, result: LoadResult, staging: Path, uploads: list
    ) -> None:
        """String and histogram series become one JSON-lines artifact each: step, timestamp, value per line.

        Rows stream from the archive straight into one file per series, in step order: a series whose rows
        arrive out of step order (any order is allowed in an archive) is sorted afterwards on its own, so memory
        never holds more than one such series, and never the whole run.
        """
        cols = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp"]
        cols += ["string_value", "histogram_value"]
        handles: dict[str, tuple[Any, Path, Any]] = {}
        types: dict[str, str] = {}
        last_step: dict[str, int] = {}
        unordered: set[str] = set()
        try:
            for batch in run.batches(["string_series", "histogram_series"], cols, READ_BATCH):
                micros = decimal_micros(batch.column("step")).tolist()
                for row, step_key in zip(batch.to_pylist(), micros, strict=True):
                    path, type_ = row["attribute_path"], row["attribute_type"]
                    if not ctx.wants_attribute(path, type_) or ctx.held(path):
                        continue
                    if path not in handles:
                        types[path] = type_
                        local = staging / "series" / short_hash(path, 16) / series_file_name(path)
                        local.parent.mkdir(parents=True, exist_ok=True)
                        # Sort keys go to a side file so a disordered series can be re-sorted exactly later.
                        handles[path] = (
                            open(local, "w", encoding="utf-8"),  # noqa: SIM115
                            local,
                            open(local.with_suffix(".keys"), "wb"),  # noqa: SIM115
                        )
                    if step_key < last_step.get(path, step_key):
                        unordered.add(path)
                    last_step[path] = step_key
                    step = row["step_exact"] if row["step_exact"] is not None else row["step"]
                    value = row["string_value"] if type_ == "string_series" else row["histogram_value"]
                    line = series_line(step, row["timestamp"], value)
                    fh, _local, keys = handles[path]
                    fh.write(json.dumps(line, ensure_ascii=False, allow_nan=True) + "\n")
                    keys.write(step_key.to_bytes(8, "little", signed=True))
                    result.approx("series_points_in_artifacts")
        finally:
            for fh, _local, keys in handles.values():
                fh.close()
                keys.close()
        for path in sorted(handles):
            local = handles[path][1]
            if path in unordered:
                _sort_lines(local, local.with_suffix(".keys"))
            local.with_suffix(".keys").unlink()
            folder = attribute_dir(path, parent_only=True)
            # A series is an artifact, not one of the run's files: "files" in the summary counts Neptune files.
            uploads.append(self._upload(run_id, local, folder, ctx, result, is_file=False))
            # Beside the exact copy, what a person reads: a log, or the histograms drawn over steps.
            if types[path] == "string_series":
                view = local.with_name(series_file_name(path, LOG_SUFFIX))
                write_log(local, view)
            else:
                view = local.with_name(series_file_name(path, PICTURE_SUFFIX))
                render_histograms(local, view, path)
            uploads.append(self._upload(run_id, view, folder, ctx, result, is_file=False, stands_for=0))

    # -- files --------------------------------------------------------------------------------------------
    def _log_files(
        self, run_id: str, run: ArchivedRun, ctx: LoadContext, result: LoadResult, staging: Path, uploads: list
    ) -> None:
        cols = ["attribute_path", "attribute_type", "step", "step_exact", "file_value", "file_name", "file_size"]
        widths = file_series_widths(run)
        for batch in run.batches(FILE_LIKE_TYPES, cols):
            for row in batch.to_pylist():
                path, type_ = row["attribute_path"], row["attribute_type"]
                if not ctx.wants_attribute(path, type_) or row["file_value"] is None:
                    continue
                step = row["step_exact"] if row["step_exact"] is not None else row["step"]
                if ctx.held(file_part(path, step, row["file_name"])):
                    continue  # uploaded by an earlier load of this run
                source = run.file_path(row["file_value"]["path"])
                if not source.exists():
                    raise ArchiveError(f"run {run.ref.key}: file for {path!r} is missing from the archive: {source}")
                for local, relative in payload_files(source):
                    name = row["file_name"] if (row["file_name"] and local == source) else local.name
                    size = local.stat().st_size
                    if not ctx.wants_file(path, name, size):
                        continue
                    where, target_name = file_destination(path, type_, step, widths.get(path, 1), relative, name)
                    staged = staging / "files" / short_hash(f"{where}/{relative}/{target_name}", 16)
                    if type_ == "file_set":
                        unpacked = unpack(local, path, relative, name, staged / "members")
                        if unpacked is not None:
                            self._upload_unpacked(run_id, unpacked, staged, ctx, result, uploads, size)
                            continue
                    staged.mkdir(parents=True, exist_ok=True)
                    link = staged / target_name
                    _link_or_copy(local, link)
                    uploads.append(self._upload(run_id, link, where, ctx, result))

    def _upload_unpacked(self, run_id: str, unpacked: Unpacked, staged: Path, ctx: LoadContext, result: LoadResult,
                         uploads: list, zip_size: int) -> None:
        """A file set's members, each into its folder, and the manifest tying them to the zip's bytes. The summary
        and the progress count the zip as the one Neptune file it was, with the zip's bytes."""
        manifest = staged / "manifest" / unpacked.manifest_path.rsplit("/", 1)[-1]
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_bytes(unpacked.manifest)
        for member in unpacked.members:
            assert member.staged is not None
            uploads.append(self._upload(run_id, member.staged, member.folder, ctx, result, is_file=False,
                                        stands_for=0))
        uploads.append(self._upload(run_id, manifest, unpacked.manifest_path.rsplit("/", 1)[0], ctx, result,
                                    stands_for=zip_size))

    def _upload(self, run_id: str, local: Path, artifact_dir: str, ctx: LoadContext, result: LoadResult,
                is_file: bool = True, stands_for: int | None = None) -> Future:
        """`stands_for`: the archive bytes this upload counts for (its own size unless said)."""
        size = local.stat().st_size if stands_for is None else stands_for

        def work() -> None:
            retrying(lambda: self.client.log_artifact(run_id, str(local), artifact_dir or None))
            ctx.on_bytes(size)

        result.files += int(is_file)
        result.bytes += size
        return self._artifact_pool.submit(work)

    def _terminate(self, run_id: str, run: ArchivedRun) -> None:
        atoms = run.atoms()
        failed = bool(atoms["sys/failed"].value) if "sys/failed" in atoms else False
        # end_time=None would make MLflow stamp the load time (a 2.x run of minutes then "lasted" years).
        end = run.end_time_ms()
        if end is None:
            # The run holds no time at all: zero duration from wherever MLflow started it, never "now".
            end = retrying(lambda: self.client.get_run(run_id)).info.start_time
        retrying(
            lambda: self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED", end_time=end)
        )


@dataclass
class MetricColumns:
    """Float points of one archive batch, ready for a target: `codes` index `series_keys` per row."""

    series_keys: list[str]
    codes: np.ndarray
    values: np.ndarray
    timestamps: np.ndarray
    steps: np.ndarray

    @property
    def size(self) -> int:
        return len(self.values)

    def keys(self) -> list[str]:
        return np.array(self.series_keys, dtype=object)[self.codes].tolist()


def experiment_place(name: str) -> str:
    """How a run's place reads in the ledger and in messages."""
    return f"experiment {name!r}"


def _scales_fit(have: dict[str, int], want: dict[str, int]) -> bool:
    """A run's points fit the experiment's scales when every key it holds and this load logs has the scale wanted
    (scales only grow, so a held key missing from `want` is one this load leaves out); keys it lacks are series a
    wider load adds. An unreadable tag (scale 0) never fits."""
    return all(scale > 0 and want.get(key, scale) == scale for key, scale in have.items())


def name_project(runs: list[ArchivedRun], experiment: str, name_of: Callable[[ArchivedRun], str]) -> str:
    """The Neptune project of the first run going into `experiment` (what a new experiment is described by)."""
    return next(run.ref.project_id for run in runs if name_of(run) == experiment)


def _creation_order(mlflow_run: Any) -> tuple[int, str]:
    return (mlflow_run.info.start_time or 0, mlflow_run.info.run_id)


def _json_metric(metric: dict[str, Any]) -> dict[str, Any]:
    value = metric["value"]
    if not math.isfinite(value):
        # MLflow's REST API spells non-finite doubles the protobuf-JSON way.
        metric = dict(metric, value="NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity"))
    return metric


def _sort_lines(local: Path, keys_file: Path) -> None:
    """Rewrite a JSON-lines file in step order; equal steps keep their archive order (a stable sort)."""
    keys = np.fromfile(keys_file, dtype="<i8")
    # Split on b"\n" only: values may hold U+2028 or NEL, which str.splitlines would also split on.
    lines = local.read_bytes().split(b"\n")[:-1]
    order = np.argsort(keys, kind="stable")
    with open(local, "wb") as fh:
        fh.writelines(lines[i] + b"\n" for i in order.tolist())


def _tag_value(text: str) -> str:
    return text_value(text)


def _link_or_copy(source: Path, dest: Path) -> None:
    if dest.exists():
        return
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def mlflow_retries(budget: float, backoff_factor: float = 2.0) -> int:
    """MLflow's retry count whose waits (backoff_factor x 1, 2, 4, ... seconds) fit in `budget` seconds; within
    MLflow's own limit of 10."""
    retries = 0
    while retries < 10 and backoff_factor * (2 ** (retries + 1) - 1) <= budget:
        retries += 1
    return retries


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    for marker in ("Connection refused", "Name or service not known", "timed out", "Max retries exceeded"):
        if marker in text:
            return marker.lower()
    return redact(text)[:300]


def is_nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)
