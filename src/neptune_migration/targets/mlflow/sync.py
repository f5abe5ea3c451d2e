"""`migrate --sync` into MLflow: append a run's new archive parts to the MLflow run that already holds the rest.

Same MLflow run id, only the new points sent. Step scales come from the whole run (the scale recorded at the first
load must still fit, else the run is replaced: a step that needs more decimals would land on another integer
step). New params are logged; a param whose value changed cannot be (MLflow params are immutable):
- while the Neptune run is live (`sys/state` active: it is still training, e.g. `best/val_loss` set every epoch),
  the run is kept and the current value goes into the tag `neptune.live/<param key>`, which MLflow lets change;
  validation accepts it as the approximation `live_param`. Replacing the run at every sync would send all its
  points again and break every link to it;
- once the run has finished, it is replaced once, so its params hold the final values, and the report says why.
Tags (Neptune tags, description, owner, sys/*) are set to the run's current values; string and histogram series
that grew are rewritten as their one artifact each (artifacts overwrite); new or changed files are uploaded over
the old path; end time and status are set again.

Resumable like a load: metric batches the server acknowledged are counted in the ledger checkpoint (the `sync`
row); a rerun after a crash reads back the keys of the batches in doubt and sends only the points the run lacks.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.archive.reader import to_ms
from neptune_migration.naming import resolve_collisions
from neptune_migration.retry import retrying
from neptune_migration.targets.base import LoadContext, LoadResult, ReplaceNeeded
from neptune_migration.targets.mlflow.held import HeldPoints
from neptune_migration.targets.mlflow.mapping import (
    MAPPING_TAG,
    STATE_TAG,
    fold_key,
    param_text,
    param_value,
    sanitize_key,
)
from neptune_migration.targets.mlflow.mapping_version import MAPPING_VERSION
from neptune_migration.targets.mlflow.scales import run_scales

# The loader calls in here, so the target is typed loosely: `MlflowTarget` (loader.py) is the only caller.
MlflowTarget = Any

_TEXT_TYPES = ("string_series", "histogram_series")
# The current value of a param that changed while the Neptune run was live (MLflow params cannot change; tags can).
LIVE_TAG_PREFIX = "neptune.live/"
LIVE_PARAM = "live_param"
_TAG_PREFIXES = ("neptune.tag.", "neptune.group_tag.")


def sync_run(target: MlflowTarget, run: ArchivedRun, delta: ArchivedRun, ctx: LoadContext, *,
             load_error_tag: str, creation_order: Callable[[Any], Any]) -> LoadResult:
    exp_id = target.experiment_id(target.experiment_name(run), run.ref.project_id)
    existing = retrying(lambda: target.find_runs(exp_id, run.ref))
    if not existing:
        raise ReplaceNeeded("the MLflow run is gone")
    mlflow_run = min(existing, key=creation_order)
    if mlflow_run.data.tags.get(STATE_TAG) != "complete":
        raise ReplaceNeeded("the MLflow run was never completed")
    loaded_with = mlflow_run.data.tags.get(MAPPING_TAG, "1")
    if loaded_with != str(MAPPING_VERSION):
        # Appending by today's mapping to a run laid out by an older one would mix the two in one run.
        raise ReplaceNeeded(f"the MLflow run was loaded with mapping version {loaded_with}")
    run_id = mlflow_run.info.run_id
    checkpoint = dict(ctx.checkpoint or {})
    # An earlier attempt of this sync may have sent some of the batches to come (held.py).
    resumed = checkpoint.get("mlflow_run_id") == run_id
    if checkpoint.get("mlflow_run_id") not in (None, run_id):
        checkpoint = {k: v for k, v in checkpoint.items() if k == "parts"}
    checkpoint["mlflow_run_id"] = run_id
    result = LoadResult(target_id=run_id)

    _sync_params(target, run_id, run, delta, mlflow_run.data, ctx, result)
    _sync_tags(target, run_id, run, mlflow_run.data.tags)
    with tempfile.TemporaryDirectory(prefix="neptune-sync-") as tmp:
        staging = Path(tmp)
        uploads: list[Future[None]] = []
        _append_metrics(target, exp_id, mlflow_run, run, delta, ctx, checkpoint, result, resumed)
        grown = sorted({p for b in delta.batches(_TEXT_TYPES, ["attribute_path"])
                        for p in b.column("attribute_path").to_pylist()})
        if grown:
            # A grown string or histogram series is one artifact: it is written again from the whole run.
            only = dataclasses.replace(ctx, wants_attribute=lambda p, t: p in grown and ctx.wants_attribute(p, t))
            target._log_text_series(run_id, run, only, result, staging, uploads)
        target._log_files(run_id, delta, ctx, result, staging, uploads)
        for fut in uploads:
            fut.result()
    target._terminate(run_id, run)
    if load_error_tag in mlflow_run.data.tags:
        target.delete_run_tag(run_id, load_error_tag)
    return result


def _sync_params(target: MlflowTarget, run_id: str, run: ArchivedRun, delta: ArchivedRun, held_data: Any,
                 ctx: LoadContext, result: LoadResult) -> None:
    from mlflow.entities import Param, RunTag

    held, tags = held_data.params, held_data.tags
    atoms = run.atoms()
    wanted = {p: a for p, a in atoms.items() if not p.startswith("sys/") and ctx.wants_attribute(p, a.type)}
    names = resolve_collisions(wanted, sanitize_key, fold_key)
    live_keys = {k[len(LIVE_TAG_PREFIX):] for k in tags if k.startswith(LIVE_TAG_PREFIX)}
    # A param that changed while the run was live is checked again at every sync, so the end of the run replaces it.
    changed = {p for p in delta.atoms() if p in wanted} | {p for p in wanted if names[p] in live_keys}
    params, live_tags, done_tags = [], [], []
    for path in sorted(changed):
        atom = wanted[path]
        key = names[path]
        text = param_text(atom.type, atom.value)
        stored, where, _kinds = param_value(key, text)
        if key in held:
            if held[key] == stored:
                if key in live_keys:
                    done_tags.append(LIVE_TAG_PREFIX + key)  # the value came back to the logged one
                continue
            if not run.live:
                raise ReplaceNeeded(f"param {path} changed in Neptune ({held[key]!r} -> {stored!r}); MLflow params "
                                    "cannot change" + (" (the run has finished: replaced once with its final values)"
                                                       if key in live_keys else ""))
            live_tags.append(RunTag(LIVE_TAG_PREFIX + key, stored))
            result.approx(LIVE_PARAM)
            continue
        if where is not None:
            retrying(lambda w=where, t=text: target.client.log_text(run_id, t, w))
        params.append(Param(key, stored))
    for i in range(0, max(len(params), len(live_tags)), 100):
        p_chunk, t_chunk = params[i : i + 100], live_tags[i : i + 100]
        retrying(lambda p=p_chunk, t=t_chunk: target.client.log_batch(run_id, params=p, tags=t))
    for key in done_tags:
        retrying(lambda k=key: target.client.delete_tag(run_id, k))


def _sync_tags(target: MlflowTarget, run_id: str, run: ArchivedRun, held: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    tags = target.run_tags(run)
    tags.pop(STATE_TAG, None)
    changed = [RunTag(k, v) for k, v in sorted(tags.items()) if held.get(k) != v]
    for i in range(0, len(changed), 100):  # one request (one store transaction) per 100 tags, not one per tag
        chunk = changed[i : i + 100]
        retrying(lambda c=chunk: target.client.log_batch(run_id, tags=c))
    for key in sorted(held):
        if key.startswith(_TAG_PREFIXES) and key not in tags:
            retrying(lambda k=key: target.client.delete_tag(run_id, k))  # a Neptune tag was removed


def _append_metrics(target: MlflowTarget, exp_id: str, mlflow_run: Any, run: ArchivedRun, delta: ArchivedRun,
                    ctx: LoadContext, checkpoint: dict[str, Any], result: LoadResult, resumed: bool) -> None:
    run_id = mlflow_run.info.run_id
    # The experiment's scale per key (targets/mlflow/scales.py), raised first if the new steps need a finer one.
    steps = target._step_plan(exp_id, run, ctx)
    if steps.raised:
        result.stale = retrying(lambda: target._scales.stale_runs(
            exp_id, steps.raised, lambda r: run_scales(r, target.client), skip=[run_id]))
    if not steps.decimals:
        ctx.save_checkpoint(dict(checkpoint))
        return
    plan, names = steps.decimals, steps.names
    if run_scales(mlflow_run, target.client) != steps.run_tag:
        raise ReplaceNeeded("the run's steps were logged at another step scale than its experiment now uses (new "
                            "steps need a finer one)", stale=result.stale)
    steps.record(result)
    for path, key in names.items():
        if key != path:
            result.renamed[path] = key
    fallback_ts = to_ms(run.atom_value("sys/creation_time")) or 0
    ctx.save_checkpoint(dict(checkpoint))
    # Only the delta's points are sent; what an interrupted sync had sent is skipped and not counted again.
    held = HeldPoints.of(target.client, run_id, retrying) if resumed else None
    target._stream_metrics(run_id, delta, plan, names, fallback_ts, ctx, checkpoint, result, count_skipped=False,
                           held=held)
