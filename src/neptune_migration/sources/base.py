"""What every source offers the stages, and the pieces the Neptune sources share.

A source lists the runs its selection matches and writes one run at a time into an archive; `discover`,
`export` and `migrate` need nothing more. A source package (`sources/<name>/`) declares itself with a
`SourcePlugin` (its names, its options, how to build it) registered in the `neptune_migration.sources`
entry point group.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from neptune_migration.archive import ArchiveWriter
from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.options import option
from neptune_migration.secrets import register
from neptune_migration.selection import Selection
from neptune_migration.vocabulary import RunRef


class Listed(Protocol):
    ref: RunRef


class Source(Protocol):
    """What `export` and `migrate` need from a source (Neptune 3.x, 2.x, offline folders)."""

    name: str
    projects: list[str]

    def check(self) -> None: ...

    def list_runs(self, project: str) -> list[Any]: ...

    def export_run(self, run: Any, archive: ArchiveWriter) -> Any: ...

    def describe_run(self, run: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SourcePlugin:
    """A source as the registry sees it; `build` imports the source's client library lazily."""

    name: str
    summary: str
    options: type
    # (options, projects from -p or $NEPTUNE_PROJECT, selection) -> Source
    build: Callable[[Any, Sequence[str], Selection], Source]
    # The source can list Neptune 2.x's model registry (`list_registry(project)`): export sends it along.
    model_registry: bool = False


# Options more than one source has: declared here once, used by each source's options dataclass.
def api_token_file_option() -> Any:
    return option(help="Read the Neptune API token from this file instead of $NEPTUNE_API_TOKEN.")


def previews_option() -> Any:
    return option(False, help="Also export metric preview points (flagged).")


class SourceError(MigrationError):
    """The Neptune server refused, could not be reached, or the selection names something it does not have."""


def read_api_token(token: str | None = None, token_file: Path | None = None) -> str:
    """The API token from an option file or NEPTUNE_API_TOKEN; validated, registered for redaction."""
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the API token file {token_file}: {exc.strerror}") from None
    token = token or os.environ.get("NEPTUNE_API_TOKEN")
    if not token:
        raise UsageError("no Neptune API token: set NEPTUNE_API_TOKEN or pass --api-token-file FILE")
    register(token)
    try:
        decoded = json.loads(base64.b64decode(token.strip() + "=" * (-len(token.strip()) % 4)))
        if not isinstance(decoded, dict) or not (decoded.get("api_url") or decoded.get("api_address")):
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise UsageError("the Neptune API token is not valid (expected base64-encoded JSON with api_url)") from None
    return token


def api_url(token: str) -> str:
    decoded = json.loads(base64.b64decode(token + "=" * (-len(token) % 4)))
    return str(decoded.get("api_url") or decoded.get("api_address"))


@dataclass
class ExportStats:
    attributes: int = 0
    points: int = 0
    files: int = 0
    bytes: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    missing_files: list[str] = field(default_factory=list)
    modification_time: str | None = None


def scratch_dir(archive: Any, prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for downloads, inside a local archive's root when it can be: the finished file is then
    renamed into the archive instead of copied, and a big download never lands in a RAM-backed /tmp."""
    root = getattr(archive, "root", None)
    if isinstance(root, Path):
        try:
            root.mkdir(parents=True, exist_ok=True)
            return tempfile.TemporaryDirectory(prefix=f".{prefix}", dir=root)
        except OSError:
            pass
    return tempfile.TemporaryDirectory(prefix=prefix)


