"""The Weights & Biases targets: `wandb` (a W&B server, through `wandb sync`) and `wandb-offline` (sync-ready
run folders). This module is what the registry loads: options and factories; wandb itself is imported by
`build`, when a migration starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neptune_migration.errors import require
from neptune_migration.options import option
from neptune_migration.retry import Patience, connect_timeout_option, retry_budget_option, timeout_option
from neptune_migration.targets.base import TargetPlugin, TargetSettings
from neptune_migration.targets.wandb.mapping_version import MAPPING_VERSION


@dataclass
class WandbOptions:
    wandb_entity: str | None = option(envvar="WANDB_ENTITY", help="W&B entity (team or user). Default: the API "
                                      "key's default entity.")
    wandb_project: str | None = option(help="W&B project for every run. Default: derived from each Neptune "
                                       "project (sanitised).")
    wandb_project_prefix: str = option("", help="Prefix for derived W&B project names.")
    wandb_dir: Path = option(Path("wandb-offline"), help="--to wandb-offline: folder for the sync-ready run folders. "
                             "The API key (online) comes from WANDB_API_KEY; WANDB_BASE_URL selects a dedicated or "
                             "self-managed server.")
    timeout: float = timeout_option()
    retry_budget: float = retry_budget_option()
    connect_timeout: float = connect_timeout_option()


def _loaders() -> Any:
    require("wandb", "wandb", "the W&B targets")
    from neptune_migration.targets.wandb import loader

    return loader


def _build_offline(opts: WandbOptions, settings: TargetSettings) -> Any:
    return _loaders().WandbOfflineTarget(opts.wandb_dir, entity=opts.wandb_entity, project=opts.wandb_project,
                                         project_prefix=opts.wandb_project_prefix)


def _build_online(opts: WandbOptions, settings: TargetSettings) -> Any:
    return _loaders().WandbOnlineTarget(entity=opts.wandb_entity, project=opts.wandb_project,
                                        project_prefix=opts.wandb_project_prefix,
                                        upload_workers=settings.upload_workers,
                                        patience=Patience(opts.timeout, opts.retry_budget,
                                                          opts.connect_timeout))


def _verifier(target: Any) -> Any:
    from neptune_migration.targets.wandb.verify import WandbVerifier

    return WandbVerifier(target)


def _offline_hint(target: Any) -> str:
    return f"On a connected machine, upload with: {target.sync_command()}"


def _run_url(target: Any, run_id: str) -> str | None:
    return target.run_url(run_id)


# Placement and copies (the rerun rule): `--relocate` has no `delete_copy` here, and is refused (placement.py).
_PLACES: dict[str, Any] = dict(
    placement=lambda target, run: target.placement(run),
    copies=lambda target, ref: target.copies(ref),
    no_relocate=("a W&B run keeps its id at every place and a deleted id stays blocked in its project for about a "
                 "week, so a move cannot be undone; W&B's runs table moves runs between projects itself ('Move to "
                 "project'; artifacts stay), see docs/wandb.md"),
)

online_plugin = TargetPlugin(
    name="wandb",
    summary="a W&B server (online; WANDB_API_KEY, WANDB_BASE_URL)",
    options=WandbOptions,
    build=_build_online,
    verifier=_verifier,
    mapping_version=MAPPING_VERSION,
    run_url=_run_url,
    **_PLACES,
)
offline_plugin = TargetPlugin(
    name="wandb-offline",
    summary="sync-ready W&B run folders in --wandb-dir",
    options=WandbOptions,
    build=_build_offline,
    verifier=_verifier,
    hint=_offline_hint,
    mapping_version=MAPPING_VERSION,
    sync_run=lambda target, run, delta, ctx: target.sync_run(run, delta, ctx),
    **_PLACES,
)
