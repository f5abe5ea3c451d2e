"""Where a W&B target puts a run, and every copy of a Neptune run it holds (the rerun rule, stages/converge.py).

A run's W&B id is derived from its Neptune run key alone (names.run_id), so the same id in another project of
the entity (online) or in a run folder of another project under the same --wandb-dir (offline) is a copy of the
same Neptune run: that is where copies are looked for.
`--relocate` is refused for W&B (the plug-in's `no_relocate` says why: docs/wandb.md).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.targets.base import Copy, Placement
from neptune_migration.targets.wandb.folder import spec_for
from neptune_migration.targets.wandb.names import run_id
from neptune_migration.targets.wandb.readback import is_sync_folder, run_folders
from neptune_migration.targets.wandb.records import read_records
from neptune_migration.targets.wandb.server import with_backoff
from neptune_migration.vocabulary import RunRef


def where(entity: str | None, project: str) -> str:
    return f"{entity}/{project}" if entity else project


def placement(run: ArchivedRun, entity: str | None, project: str | None, prefix: str,
              configured_entity: str | None) -> Placement:
    """`entity`: the one runs go to (learned from the API key online); `configured_entity`: --wandb-entity."""
    spec = spec_for(run, entity, project, prefix)
    options = (f"--wandb-project {shlex.quote(project)}" if project
               else f"--wandb-project-prefix {shlex.quote(prefix)}")
    if configured_entity:
        options += f" --wandb-entity {shlex.quote(configured_entity)}"
    return Placement(where(spec.entity, spec.project), options)


def migration_of(config: dict[str, Any]) -> str | None:
    """The ledger identity a run's config records (`neptune_migration.migration`), plain or W&B-wrapped."""
    ours = config.get("neptune_migration")
    if isinstance(ours, dict) and "run_key" not in ours and isinstance(ours.get("value"), dict):
        ours = ours["value"]
    value = ours.get("migration") if isinstance(ours, dict) else None
    return value if isinstance(value, str) else None


def _run_record(folder: Path) -> Any | None:
    files = sorted(folder.glob("run-*.wandb"))
    for rec in read_records(files[0]) if files else ():
        if rec.WhichOneof("record_type") == "run":
            return rec.run
    return None


def offline_copies(root: Path, ref: RunRef) -> list[Copy]:
    """The run folders of this Neptune run under an offline target root, one copy per (entity, project)."""
    found: dict[str, Copy] = {}
    wandb_id = run_id(ref.key)
    for folder in run_folders(root, wandb_id):
        record = None if is_sync_folder(folder) else _run_record(folder)
        if record is None:
            continue  # a sync folder continues the whole folder before it, at the same place
        config = {item.key: json.loads(item.value_json) for item in record.config.update if item.key}
        place = where(record.entity or None, record.project)
        found[place] = Copy(place, f"{place}/{wandb_id}", migration_of(config))
    return list(found.values())


# Projects looked into per request: one aliased query asks each for the run's id (W&B has no search of runs across
# projects), so a run costs one request per this many projects, not one per project.
PROJECTS_PER_QUERY = 50


def _copies_query(n: int) -> str:
    params = ", ".join(f"$p{j}: String!" for j in range(n))
    fields = " ".join(f"p{j}: project(name: $p{j}, entityName: $entity) {{ run(name: $name) {{ name config }} }}"
                      for j in range(n))
    return f"query NeptuneMigrationCopies($entity: String!, $name: String!, {params}) {{ {fields} }}"


def projects(api: Any, entity: str) -> list[str]:
    return with_backoff(lambda: sorted(p.name for p in api.projects(entity)))


def online_copies(api: Any, entity: str, ref: RunRef, names: list[str]) -> list[Copy]:
    """The runs under this Neptune run's W&B id in the projects `names` of `entity`."""
    wandb_id = run_id(ref.key)
    out = []
    for i in range(0, len(names), PROJECTS_PER_QUERY):
        chunk = names[i : i + PROJECTS_PER_QUERY]
        variables = {"entity": entity, "name": wandb_id, **{f"p{j}": p for j, p in enumerate(chunk)}}
        query = _copies_query(len(chunk))
        data = with_backoff(lambda q=query, v=variables: api._service_api.execute_graphql(q, v))
        for j, project in enumerate(chunk):
            run = ((data or {}).get(f"p{j}") or {}).get("run")
            if run:
                config = json.loads(run.get("config") or "{}")
                out.append(Copy(where(entity, project), f"{entity}/{project}/{wandb_id}", migration_of(config)))
    return out
