"""Seed the sandbox from what the Neptune clients wrote in offline mode.

The readers and the replay live in ``neptune_migration.sources.offline.replay``, shared with the offline source
(``--from neptune-offline``); this module keeps the names the sandbox has always used.
"""

from __future__ import annotations

from neptune_migration.sources.offline.replay import (
    Neptune1OfflineRun,
    Replay,
    ScaleOfflineRun,
    read_neptune1_offline,
    read_scale_offline,
    replay_neptune1_run,
    replay_offline_tree,
    replay_scale_run,
)

__all__ = [
    "Neptune1OfflineRun",
    "Replay",
    "ScaleOfflineRun",
    "read_neptune1_offline",
    "read_scale_offline",
    "replay_neptune1_run",
    "replay_offline_tree",
    "replay_scale_run",
]
