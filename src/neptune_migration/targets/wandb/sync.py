"""`migrate --sync` into W&B offline folders: the same run id, resumed, with only the new history rows.

A sync writes one more folder for the run, `offline-run-<start>_sync<n>-<run id>` (n: the archive parts the run
then has, so a rerun after a crash rewrites the same folder instead of adding one). It holds the run record (same
id, `resumed`, the run's current config, tags and notes), the history rows after the ones the earlier folders
hold, the string series and files that changed (whole), the summary and the exit record. `wandb sync` uploads the
folders in name order; the read-back (`read_offline_run`) joins them the same way.

W&B steps only grow: new points whose steps do not all come after every archived point of the run (one series
grew while another already had later steps, or a fractional step changed the step mode) cannot be appended, so
the run is replaced (a new generation, as `--refresh` does).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow.compute as pc

from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import decimal_micros
from neptune_migration.targets.base import LoadContext, LoadResult, ReplaceNeeded
from neptune_migration.targets.wandb.folder import RunSpec, _start_time, spec_for, write_run
from neptune_migration.targets.wandb.generations import offline_existing
from neptune_migration.targets.wandb.history import build
from neptune_migration.targets.wandb.readback import run_folders

_HISTORY = ["float_series", "histogram_series"]
_WHOLE = ["string_series", "file", "file_series", "file_set", "artifact"]


def sync_offline(target: Any, run: ArchivedRun, delta: ArchivedRun, ctx: LoadContext) -> LoadResult:
    base = spec_for(run, target.entity, target.project, target.project_prefix)
    existing = offline_existing(target.root, base.run_id)
    run_id = (existing.current if existing is not None and existing.current else None) or base.run_id
    if not run_folders(target.root, run_id):
        raise ReplaceNeeded("the W&B offline run folder is gone")
    old = dataclasses.replace(run, parts=run.parts[: len(run.parts) - len(delta.parts)], _atoms=None,
                              _ts_range=None, _fetched=set())
    start_ms = round(_start_time(run, run.atoms()).timestamp() * 1000)
    before = build(old, ctx.wants_attribute, start_ms)
    after = build(run, ctx.wants_attribute, start_ms)
    if before.step_mode != after.step_mode:
        raise ReplaceNeeded("the new steps change how the run's steps map to W&B steps")
    old_last, new_first, sent = _edge(old, delta, ctx)
    if old_last is not None and new_first is not None and new_first <= old_last:
        raise ReplaceNeeded("new points come at steps the run already has (W&B steps only grow)")
    only = {p for b in delta.batches(_WHOLE, ["attribute_path"]) for p in b.column("attribute_path").to_pylist()}
    spec = RunSpec(base.entity, base.project, run_id)
    written = write_run(run, ctx, target.root, spec, skip_history_rows=before.rows, only=only,
                        suffix=f"_sync{len(run.parts):03d}")
    ctx.save_checkpoint({**(ctx.checkpoint or {}), "stage": "written", "folder": written.folder.name})
    with target._lock:
        target._written.append(written.folder)
    written.result.points = sent
    return written.result


def _edge(old: ArchivedRun, delta: ArchivedRun, ctx: LoadContext) -> tuple[int | None, int | None, int]:
    """(the last archived step in micro-steps, the delta's first, the delta's wanted history points)."""
    last = None
    for b in old.batches(_HISTORY, ["attribute_path", "step"]):
        m = pc.max(decimal_micros_array(b)).as_py()
        last = m if last is None else max(last, m)
    first, sent = None, 0
    for b in delta.batches(_HISTORY, ["attribute_path", "attribute_type", "step"]):
        keep = [ctx.wants_attribute(p, t) for p, t in zip(b.column("attribute_path").to_pylist(),
                                                          b.column("attribute_type").to_pylist(), strict=True)]
        b = b.filter(keep)
        if b.num_rows == 0:
            continue
        sent += b.num_rows
        m = pc.min(decimal_micros_array(b)).as_py()
        first = m if first is None else min(first, m)
    return last, first, sent


def decimal_micros_array(batch: Any) -> Any:
    import pyarrow as pa

    return pa.array(decimal_micros(batch.column("step")))
