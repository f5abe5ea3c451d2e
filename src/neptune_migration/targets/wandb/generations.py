"""Generations of a W&B run: what happens when `--refresh` re-exports a run that changed in Neptune.

W&B blocks a deleted run id for about a week, so a changed run is not deleted and reloaded under its id (as in
MLflow). Instead (DESIGN, "Identity in targets"):

- The *first* load of a run uses the base id `run_id(key)`. Its config holds the Neptune modification time it was
  loaded from (`sys.modification_time`).
- An archived run whose modification time differs from the base run's is a new *generation*: it loads under
  `run_id(key, modification_time)`, its config says `neptune_migration.supersedes = <previous id>`.
- Once the new generation is loaded completely, the previous one gets the tag `superseded` and
  `neptune_migration.superseded_by = <new id>` in its config, and the base run records
  `neptune_migration.current = <new id>` (so a third generation knows which run it replaces).

The id to load or read is decided from the archive and the target alone (no ledger): an interrupted refresh is
resumed under the new id, a rerun without changes keeps the id it has, and validation reads the generation the
archive holds. Loading the new generation first and marking the old one last means a crash in between leaves
the old run untouched and the new one resumable.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.targets.wandb.names import run_id
from neptune_migration.targets.wandb.readback import find_run_folder
from neptune_migration.targets.wandb.records import RecordWriter, read_records

SUPERSEDED_TAG = "superseded"


@dataclass
class Existing:
    """What the target holds under a run's base id."""

    generation: str | None  # the Neptune modification time it was loaded from
    current: str | None = None  # the newest generation's id, once a refresh superseded the base run


def generation_of(run: ArchivedRun) -> str | None:
    """The archived run's Neptune modification time, as the config holds it (ISO-8601 UTC, `Z`)."""
    value = run.atom_value("sys/modification_time")
    if not isinstance(value, datetime):
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def existing_from_config(config: dict[str, Any]) -> Existing:
    """`Existing` from a run's config in plain (not W&B-wrapped) form."""
    sys_ = config.get("sys") if isinstance(config.get("sys"), dict) else {}
    mod = sys_.get("modification_time") if isinstance(sys_, dict) else None
    if isinstance(mod, dict):
        mod = mod.get("_value")  # `sys/modification_time` was also a branch (never, but names are data)
    ours = config.get("neptune_migration") if isinstance(config.get("neptune_migration"), dict) else {}
    current = ours.get("current") if isinstance(ours, dict) else None
    return Existing(mod if isinstance(mod, str) else None, current if isinstance(current, str) else None)


def resolve(run: ArchivedRun, base: Existing | None) -> tuple[str, str | None]:
    """(the W&B run id for this archived run, the id of the run it supersedes or None)."""
    base_id = run_id(run.ref.key)
    generation = generation_of(run)
    # A base run without a recorded modification time (a sync killed before the config reached the server, or
    # an archive without `sys/modification_time`) is this generation: resumed, never forked.
    if base is None or generation is None or base.generation is None or base.generation == generation:
        return base_id, None
    new_id = run_id(run.ref.key, generation)
    previous = base.current or base_id
    return new_id, (previous if previous != new_id else None)


# -- offline folders --------------------------------------------------------------------------------------


def offline_existing(root: Path, wandb_run_id: str) -> Existing | None:
    """`Existing` from the run record of an offline run folder, or None when there is no folder."""
    folder = find_run_folder(root, wandb_run_id)
    if folder is None:
        return None
    files = sorted(folder.glob("run-*.wandb"))
    if not files:
        return None
    for rec in read_records(files[0]):
        if rec.WhichOneof("record_type") == "run":
            config = {item.key: json.loads(item.value_json) for item in rec.run.config.update if item.key}
            return existing_from_config(config)
    return None


def offline_mark(root: Path, wandb_run_id: str, *, superseded_by: str | None = None,
                 current: str | None = None) -> bool:
    """Record a supersession in an offline run folder: tag `superseded` + `superseded_by`, and/or `current`.

    The `.wandb` file is rewritten (a temporary file renamed over it). A folder that `wandb sync` has touched is
    left alone (its upload state belongs to wandb): returns False, and the caller says so.
    """
    folder = find_run_folder(root, wandb_run_id)
    if folder is None:
        return False
    if any(folder.glob("*.wandb.synced")) or any(folder.glob("*.wandb.syncstate")):
        return False
    path = sorted(folder.glob("run-*.wandb"))[0]
    records = list(read_records(path))
    for rec in records:
        if rec.WhichOneof("record_type") != "run":
            continue
        r = rec.run
        if superseded_by and SUPERSEDED_TAG not in r.tags:
            r.tags.append(SUPERSEDED_TAG)
        for item in r.config.update:
            if item.key == "neptune_migration":
                value = json.loads(item.value_json)
                if superseded_by:
                    value["superseded_by"] = superseded_by
                if current:
                    value["current"] = current
                item.value_json = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    tmp = path.with_name(".tmp-" + path.name)
    writer = RecordWriter(tmp)
    try:
        for rec in records:
            writer.write(rec)
    finally:
        writer.close()
    os.replace(tmp, path)
    return True
