"""The MLflow target: runs into an MLflow tracking server or store (REST, in-process, or bulk into SQLite).

This module is what the registry loads for `--to mlflow`: the options and the factory. It imports nothing
of MLflow; `build` does, when a migration actually starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neptune_migration.errors import require
from neptune_migration.options import option
from neptune_migration.targets.base import TargetPlugin, TargetSettings


@dataclass
class MlflowOptions:
    mlflow_tracking_uri: str | None = option(
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking URI (http://..., sqlite:///..., postgresql://..., mysql+pymysql://...). "
        "Default: a local store in ./mlflow-store. "
        "Credentials: MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN in the environment.")
    experiment_by: str = option("project", choices=("project", "experiment"),
                                help="MLflow experiment per Neptune 'project' or per Neptune 'experiment' "
                                "(sys/name).")
    experiment_prefix: str = option("", help="Prefix for MLflow experiment names.")
    mlflow_bulk: bool = option(False, help="For sqlite:/// stores you own: insert metric points straight into "
                               "MLflow's tables (about 10x faster; pinned to MLflow 3.17.2's schema, refuses any "
                               "other; checked after each run).")


def _build(opts: MlflowOptions, settings: TargetSettings) -> Any:
    require("mlflow", "mlflow", "--to mlflow")
    from neptune_migration.targets.mlflow.bulk import MlflowBulkTarget
    from neptune_migration.targets.mlflow.loader import MlflowTarget

    kind = MlflowBulkTarget if opts.mlflow_bulk else MlflowTarget
    return kind(opts.mlflow_tracking_uri, experiment_by=opts.experiment_by, experiment_prefix=opts.experiment_prefix,
                upload_workers=settings.upload_workers or max(2, settings.workers))


def _verifier(target: Any) -> Any:
    from neptune_migration.targets.mlflow.verify import MlflowVerifier

    return MlflowVerifier(target)


def _hint(target: Any) -> str:
    from neptune_migration.targets.mlflow.loader import ui_command

    return f"Open the MLflow UI: {ui_command(target.tracking_uri)}"


plugin = TargetPlugin(
    name="mlflow",
    summary="an MLflow tracking server or store",
    options=MlflowOptions,
    build=_build,
    verifier=_verifier,
    hint=_hint,
    model_registry=True,
)
