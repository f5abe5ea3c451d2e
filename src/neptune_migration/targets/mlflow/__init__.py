"""The MLflow target: runs into an MLflow tracking server or store (REST, in-process, or bulk into a database).

This module is what the registry loads for `--to mlflow`: the options and the factory. It imports nothing
of MLflow; `build` does, when a migration actually starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neptune_migration.errors import TargetError, UsageError, require
from neptune_migration.options import option
from neptune_migration.retry import Patience, connect_timeout_option, first_contact, retry_budget_option, timeout_option
from neptune_migration.targets.base import TargetPlugin, TargetSettings
from neptune_migration.targets.mlflow.endpoint import check_tracking_uri
from neptune_migration.targets.mlflow.mapping_version import MAPPING_VERSION


@dataclass
class MlflowOptions:
    mlflow_tracking_uri: str | None = option(
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI: http(s)://..., sqlite:///..., postgresql://..., mysql+pymysql://..., "
        "file:///... (or an existing folder), databricks. Default: a local store in ./mlflow-store. "
        "Credentials: MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN in the environment.")
    experiment_by: str = option("project", choices=("project", "experiment"),
                                help="MLflow experiment per Neptune 'project' or per Neptune 'experiment' "
                                "(sys/name).")
    experiment_prefix: str = option("", help="Prefix for MLflow experiment names.")
    mlflow_bulk: bool = option(False, help="For sqlite:/// and postgresql:// stores you own: write metric points "
                               "straight into MLflow's tables (about 10x faster; only at the schemas of MLflow 3.17.2 "
                               "and 3.18.0, refuses any other; checked after each run).")
    mlflow_bulk_allow_writers: bool = option(
        False, help="With --mlflow-bulk into PostgreSQL: go on although other sessions (an MLflow server) are "
        "connected to the database; only when they never write the runs being loaded.")
    timeout: float = timeout_option()
    retry_budget: float = retry_budget_option()
    connect_timeout: float = connect_timeout_option()


def _build(opts: MlflowOptions, settings: TargetSettings) -> Any:
    # Before MLflow is imported or any store opened: a mistyped URI must not create a folder or a database.
    uri = check_tracking_uri(opts.mlflow_tracking_uri) if opts.mlflow_tracking_uri else None
    patience = Patience(opts.timeout, opts.retry_budget, opts.connect_timeout)
    if uri is not None and uri.startswith(("http://", "https://")):
        # Before MLflow is imported (seconds): a server that never answers fails at once.
        first_contact(uri, patience, "MLflow tracking server", TargetError)
    require("mlflow", "mlflow", "--to mlflow")
    from neptune_migration.targets.mlflow.bulk import MlflowBulkTarget
    from neptune_migration.targets.mlflow.loader import MlflowTarget

    common: dict[str, Any] = dict(experiment_by=opts.experiment_by, experiment_prefix=opts.experiment_prefix,
                                  upload_workers=settings.upload_workers or max(2, settings.workers),
                                  patience=patience, writer=settings.writer)
    if opts.mlflow_bulk:
        return MlflowBulkTarget(uri, allow_other_writers=opts.mlflow_bulk_allow_writers, **common)
    if opts.mlflow_bulk_allow_writers:
        raise UsageError("--mlflow-bulk-allow-writers only applies with --mlflow-bulk")
    return MlflowTarget(uri, **common)


def _verifier(target: Any) -> Any:
    from neptune_migration.targets.mlflow.verify import MlflowVerifier

    return MlflowVerifier(target)


def _hint(target: Any) -> str:
    from neptune_migration.targets.mlflow.loader import ui_command

    # The experiments this target created or found while loading: the pages worth opening.
    ids = sorted(set(getattr(target, "_experiments", {}).values()), key=lambda x: (len(x), x))
    about = getattr(target, "about", None)
    return (f"Target: {about}\n" if about else "") + f"Open the MLflow UI: {ui_command(target.tracking_uri, ids)}"


def _run_url(target: Any, run_id: str) -> str | None:
    """The run's page on an MLflow server; None for local stores (nothing serves them until `mlflow ui` runs)."""
    from neptune_migration.targets.mlflow.loader import run_url, ui_server

    if not target.tracking_uri.startswith(("http://", "https://")):
        return None
    server = ui_server(target.tracking_uri)
    try:
        # The page's route needs the experiment: one lookup per run, at report time only.
        experiment_id = target.client.get_run(run_id).info.experiment_id
    except Exception:  # a deleted or unreadable run still gets its row in the report, only without a link
        return None
    return run_url(server, experiment_id, run_id) if server else None


plugin = TargetPlugin(
    name="mlflow",
    summary="an MLflow tracking server or store",
    options=MlflowOptions,
    build=_build,
    verifier=_verifier,
    hint=_hint,
    run_url=_run_url,
    model_registry=True,
    prepare=lambda target, runs, wants: target.prepare(runs, wants),
    mapping_version=MAPPING_VERSION,
    sync_run=lambda target, run, delta, ctx: target.sync_run(run, delta, ctx),
    placement=lambda target, run: target.placement(run),
    copies=lambda target, ref: target.copies(ref),
    delete_copy=lambda target, copy: target.delete_copy(copy),
)
