"""The registry of sources and targets: whatever the `neptune_migration.sources` and `neptune_migration.targets`
entry point groups list, ours included. `--from`, `--to`, their options and validation are driven from here.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from neptune_migration.errors import UsageError
from neptune_migration.sources.base import SourcePlugin
from neptune_migration.targets.base import TargetPlugin

TARGETS = "neptune_migration.targets"
SOURCES = "neptune_migration.sources"


@cache
def _group(group: str) -> dict[str, Any]:
    # Loading an entry point imports only the plug-in's light factory module, never its client library.
    found: dict[str, Any] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plug-in must not take the whole tool down
            raise UsageError(f"the plug-in {ep.name!r} ({ep.value}) of {group} cannot be loaded: {exc}") from None
        found[ep.name] = plugin
    return found


def targets() -> dict[str, TargetPlugin]:
    """Every installed target by its `--to` name."""
    return _group(TARGETS)


def sources() -> dict[str, SourcePlugin]:
    """Every installed source by its `--from` name."""
    return _group(SOURCES)


def _pick(kind: str, name: str, known: dict[str, Any]) -> Any:
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UsageError(f"--{kind}: unknown {'target' if kind == 'to' else 'source'} {name!r}{hint}; "
                     f"choose {', '.join(known) or 'none installed'}")


def target(name: str) -> TargetPlugin:
    return _pick("to", name, targets())


def source(name: str) -> SourcePlugin:
    return _pick("from", name, sources())


def reset() -> None:
    """Forget what was found (a test that installs a plug-in package calls this)."""
    _group.cache_clear()
