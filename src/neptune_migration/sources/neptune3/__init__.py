"""The Neptune 3.x source (neptune-query): options and factory. neptune-query is imported by `build`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neptune_migration.errors import require
from neptune_migration.options import option
from neptune_migration.retry import Patience, connect_timeout_option, first_contact, retry_budget_option, timeout_option
from neptune_migration.selection import Selection
from neptune_migration.sources.base import (
    SourceError,
    SourcePlugin,
    api_token_file_option,
    api_url,
    previews_option,
    read_api_token,
)


@dataclass
class Neptune3Options:
    api_token_file: Path | None = api_token_file_option()
    lineage: str = option("own", choices=("own", "full"), help="Forked runs: 'own' points only (default) or 'full' "
                          "(also the inherited history).")
    previews: bool = previews_option()
    download_workers: int = option(4, minimum=1, maximum=64, help="Concurrent file downloads per run.")
    timeout: float = timeout_option()
    retry_budget: float = retry_budget_option()
    connect_timeout: float = connect_timeout_option()


def _build(opts: Neptune3Options, projects: Sequence[str], selection: Selection) -> Any:
    patience = Patience(opts.timeout, opts.retry_budget, opts.connect_timeout)
    token = read_api_token(token_file=opts.api_token_file)
    # Before the client library is imported (seconds): a server that never answers fails at once.
    first_contact(api_url(token), patience, "Neptune server", SourceError)
    require("neptune_query", "neptune3", "--from neptune3")
    from neptune_migration.sources.neptune3.source import Neptune3Source

    return Neptune3Source(list(projects), selection, token, lineage=opts.lineage, previews=opts.previews,
                          download_workers=opts.download_workers, patience=patience)


plugin = SourcePlugin(name="neptune3", summary="a Neptune 3.x server (neptune-query)", options=Neptune3Options,
                      build=_build)
