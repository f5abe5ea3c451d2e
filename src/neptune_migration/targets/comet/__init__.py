"""The Comet offline target: one comet_ml offline experiment archive (a zip) per Neptune run, uploaded later with
`comet upload` and opened with `comet offline`.

This module is what the registry loads for `--to comet-offline`: the options and the factory. It imports nothing of
comet_ml; `build` does, when a migration actually starts.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neptune_migration.errors import require
from neptune_migration.options import option
from neptune_migration.targets.base import TargetPlugin, TargetSettings
from neptune_migration.targets.comet.mapping_version import MAPPING_VERSION


@dataclass
class CometOptions:
    comet_dir: Path = option(Path("comet-offline"), metavar="DIR", help="--to comet-offline: folder for the offline "
                             "experiment archives (one zip per run); upload them with `comet upload DIR/*.zip` "
                             "(COMET_API_KEY, and COMET_URL_OVERRIDE for a self-hosted Comet).")
    comet_workspace: str | None = option(help="--to comet-offline: the Comet workspace written into every archive. "
                                         "Default: none (`comet upload` uses the API key's default workspace).")
    comet_project: str | None = option(help="--to comet-offline: the Comet project for every run. Default: derived "
                                       "from each Neptune project (lower case, other characters as `-`).")


def _build(opts: CometOptions, settings: TargetSettings) -> Any:
    require("comet_ml", "comet", "--to comet-offline")
    from neptune_migration.targets.comet.loader import CometOfflineTarget

    return CometOfflineTarget(opts.comet_dir, workspace=opts.comet_workspace, project=opts.comet_project)


def _verifier(target: Any) -> Any:
    from neptune_migration.targets.comet.verify import CometOfflineVerifier

    return CometOfflineVerifier(target)


def _hint(target: Any) -> str:
    return f"On a connected machine, upload with: comet upload {shlex.quote(str(target.path))}/*.zip"


offline_plugin = TargetPlugin(
    name="comet-offline",
    summary="comet_ml offline experiment archives, uploaded later by comet upload",
    options=CometOptions,
    build=_build,
    verifier=_verifier,
    hint=_hint,
    mapping_version=MAPPING_VERSION,
)
