"""The Neptune 2.x source (the neptune 1.x client): options and factory; the client is imported by `build`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neptune_migration.errors import require
from neptune_migration.options import option
from neptune_migration.retry import Patience, connect_timeout_option, first_contact, retry_budget_option, timeout_option
from neptune_migration.selection import Selection
from neptune_migration.sources.base import SourceError, SourcePlugin, api_token_file_option, api_url, read_api_token


@dataclass
class Neptune2Options:
    api_token_file: Path | None = api_token_file_option()
    query: str | None = option(help="neptune2: extra NQL for the runs table, ANDed with the selection (e.g. "
                               "'`sys/creation_time`:datetime > \"2024-01-01\"').")
    workspace: str | None = option(help="neptune2: every project of this workspace (see "
                                   "--include-projects/--exclude-projects).")
    include_projects: str | None = option(help="neptune2 with --workspace: regex on project names to include.")
    exclude_projects: str | None = option(help="neptune2 with --workspace: regex on project names to leave out.")
    file_sets: str = option("zip", choices=("zip", "extract"), help="neptune2 file sets: keep as 'zip' (default) or "
                            "'extract' their files (entries escaping the set are refused).")
    timeout: float = timeout_option()
    retry_budget: float = retry_budget_option()
    connect_timeout: float = connect_timeout_option()


def _build(opts: Neptune2Options, projects: Sequence[str], selection: Selection) -> Any:
    patience = Patience(opts.timeout, opts.retry_budget, opts.connect_timeout)
    token = read_api_token(token_file=opts.api_token_file)
    # Before the client library is imported (seconds): a server that never answers fails at once.
    first_contact(api_url(token), patience, "Neptune server", SourceError)
    require("neptune", "neptune2", "--from neptune2")
    from neptune_migration.sources.neptune2.source import Neptune2Source

    return Neptune2Source(list(projects), selection, token, query=opts.query, workspace=opts.workspace,
                          include_projects=opts.include_projects, exclude_projects=opts.exclude_projects,
                          include_trashed=selection.include_archived, file_sets=opts.file_sets,
                          patience=patience)


plugin = SourcePlugin(name="neptune2", summary="a Neptune 2.x server (neptune 1.x client)", options=Neptune2Options,
                      build=_build, model_registry=True)
