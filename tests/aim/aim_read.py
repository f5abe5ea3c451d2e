"""Reading an Aim repository in the tests, with Aim's SDK only (never the target's code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def runs_by_key(repo_path: Path) -> dict[str, list[Any]]:
    """Every indexed Aim run of a repository by its Neptune run key (`neptune_migration.run_key`)."""
    from aim import Repo

    repo = Repo(str(repo_path))
    out: dict[str, list[Any]] = {}
    for run in repo.iter_runs():
        key = (run.get("neptune_migration") or {}).get("run_key")
        out.setdefault(key, []).append(run)
    return out


def chunk_states(repo_path: Path) -> dict[str, str | None]:
    """{run hash: load state} read from every run's own chunk, indexed or not (a run cut short is not indexed)."""
    from aim import Repo

    repo = Repo(str(repo_path))
    out = {}
    for run_hash in repo.list_all_runs():
        tree = repo.request_tree("meta", run_hash, read_only=True)
        try:
            out[run_hash] = tree[("meta", "chunks", run_hash, "attrs", "neptune_migration", "state")]
        except KeyError:
            out[run_hash] = None
    return out


def points(run: Any, name: str) -> dict[int, tuple]:
    """{step: (value, epoch, time in s)} of one metric of a run."""
    from aim.storage.context import Context

    metric = run.get_metric(name, Context({}))
    return {} if metric is None else {int(s): tuple(f) for s, f in metric.data.items()}
