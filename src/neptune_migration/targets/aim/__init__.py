"""The Aim target: runs into a local Aim repository (`aim up --repo PATH` serves it).

This module is what the registry loads for `--to aim`: the options and the factory. It imports nothing of aim;
`build` does, when a migration actually starts.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from neptune_migration.errors import require
from neptune_migration.options import option
from neptune_migration.targets.aim.mapping_version import MAPPING_VERSION
from neptune_migration.targets.base import TargetPlugin, TargetSettings


@dataclass
class AimOptions:
    aim_repo: str = option("aim-repo", metavar="PATH", help="--to aim: the Aim repository folder (created if absent); "
                           "serve it with `aim up --repo PATH`. A remote tracking server (aim://HOST:PORT) is not "
                           "supported yet.")


def _build(opts: AimOptions, settings: TargetSettings) -> Any:
    from neptune_migration.targets.aim.loader import check_repo_spec

    check_repo_spec(opts.aim_repo)  # before aim is imported or any folder created
    require("aim", "aim", "--to aim")
    from neptune_migration.targets.aim.loader import AimTarget

    return AimTarget(opts.aim_repo)


def _verifier(target: Any) -> Any:
    from neptune_migration.targets.aim.verify import AimVerifier

    return AimVerifier(target)


def _hint(target: Any) -> str:
    return f"Open the Aim UI: aim up --repo {shlex.quote(str(target.path))}"


plugin = TargetPlugin(
    name="aim",
    summary="a local Aim repository, served by aim up",
    options=AimOptions,
    build=_build,
    verifier=_verifier,
    hint=_hint,
    mapping_version=MAPPING_VERSION,
)
