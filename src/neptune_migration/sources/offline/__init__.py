"""Offline `.neptune/` folders from either Neptune client: options and factory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neptune_migration.errors import UsageError, require
from neptune_migration.options import option
from neptune_migration.selection import Selection
from neptune_migration.sources.base import SourcePlugin, previews_option


@dataclass
class OfflineOptions:
    path: Path | None = option(argument=True, help="With --from neptune-offline: the folder holding the offline runs "
                               "(.neptune/ or anything above it).")
    assign_project: str | None = option(help="neptune-offline: the project WS/PROJ the runs belong to (default: "
                                        "offline/<folder name>).")
    run_id_template: str | None = option(help="neptune-offline (1.x runs): run id template, fields {container_id} "
                                         "{short_id} {folder} {created:%Y%m%d} {index}.")
    previews: bool = previews_option()


def _build(opts: OfflineOptions, projects: Sequence[str], selection: Selection) -> Any:
    if opts.path is None:
        raise UsageError("--from neptune-offline needs the folder to read: neptune-migrate ... --from "
                         "neptune-offline PATH")
    require("neptune_scale", "offline", "--from neptune-offline")
    from neptune_migration.sources.offline.source import OfflineSource

    return OfflineSource(opts.path, selection, assign_project=opts.assign_project,
                         run_id_template=opts.run_id_template, previews=opts.previews)


plugin = SourcePlugin(name="neptune-offline", summary="offline .neptune/ folders (PATH)", options=OfflineOptions,
                      build=_build)
