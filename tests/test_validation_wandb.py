"""Validation of W&B offline run files: a clean load matches; corruption written into the run files is named
on the right run and attribute, and retry repairs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.samples import write_demo_archive, write_nasty_archive
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.stages.validate import retry, validate
from neptune_migration.targets.wandb.loader import WandbOfflineTarget
from neptune_migration.targets.wandb.readback import find_run_folder
from neptune_migration.targets.wandb.records import RecordWriter, read_records


def _quiet(n: int) -> Tracker:
    return Tracker("t", n, Console(quiet=True), enabled=False)


def test_clean_nasty_archive_validates(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "a", rows_per_part=700)
    target = WandbOfflineTarget(tmp_path / "out")
    with Ledger(tmp_path / "s.db") as ledger:
        assert not load(Archive(archive), target, Selection(), ledger, _quiet, 2).failed
        summary = validate(Archive(archive), target, Selection(), ledger, _quiet, 2)
    assert [(c.ref.key, c.summary_line()) for c in summary.checks if c.status != "validated"] == []
    nasty = summary.checks[0]
    assert nasty.checked["files"] == 6 and nasty.checked["series_points"] == 3 and nasty.checked["points"] > 2500


def _rewrite(folder: Path, edit: Any) -> None:
    """Rewrite a run's .wandb file record by record; `edit` returns the record (changed or not) or None."""
    path = next(folder.glob("run-*.wandb"))
    records = list(read_records(path))
    writer = RecordWriter(path)
    for rec in records:
        rec = edit(rec)
        if rec is not None:
            writer.write(rec)
    writer.close()


def _row_step(rec: Any) -> float:
    for item in rec.history.item:
        if list(item.nested_key) == ["neptune_step"]:
            return float(json.loads(item.value_json))
    return float(rec.history.step.num)


def _edit_history(key: str, step: float, change: Any) -> Any:
    def edit(rec: Any) -> Any:
        if rec.WhichOneof("record_type") == "history" and _row_step(rec) == step:
            items = list(rec.history.item)
            if any(list(i.nested_key) == [key] for i in items):
                change(rec.history, key)
        return rec
    return edit


def _drop_item(history: Any, key: str) -> None:
    keep = [i for i in history.item if list(i.nested_key) != [key]]
    del history.item[:]
    history.item.extend(keep)


def _add_to_value(history: Any, key: str) -> None:
    for i in history.item:
        if list(i.nested_key) == [key]:
            i.value_json = json.dumps(json.loads(i.value_json) + 0.5)


def _shift_timestamp(history: Any, _key: str) -> None:
    for i in history.item:
        if list(i.nested_key) == ["_timestamp"]:
            i.value_json = json.dumps(json.loads(i.value_json) + 1.0)


def _drop_artifact_entry(suffix: str) -> Any:
    def edit(rec: Any) -> Any:
        if rec.WhichOneof("record_type") == "artifact":
            keep = [e for e in rec.artifact.manifest.contents if not e.path.endswith(suffix)]
            del rec.artifact.manifest.contents[:]
            rec.artifact.manifest.contents.extend(keep)
        return rec
    return edit


def _change_config(rec: Any) -> Any:
    if rec.WhichOneof("record_type") == "run":
        for item in rec.run.config.update:
            if item.key == "parameters":
                value = json.loads(item.value_json)
                value["lr"] = 0.5
                item.value_json = json.dumps(value)
    return rec


def _flip_exit(rec: Any) -> Any:
    if rec.WhichOneof("record_type") == "exit":
        rec.exit.exit_code = 1
    return rec


def test_corrupted_run_files_are_named_and_retry_repairs_them(tmp_path: Path) -> None:
    archive = write_demo_archive(tmp_path / "a", runs=7, steps=60)
    target = WandbOfflineTarget(tmp_path / "out")
    with Ledger(tmp_path / "s.db") as ledger:
        assert not load(Archive(archive), target, Selection(), ledger, _quiet, 2).failed
        runs = {r.ref.run_id: r for r in Archive(archive).scan().runs}
        folder = {k: find_run_folder(target.root, target.run_id_for(r)) for k, r in runs.items()}
        _rewrite(folder["IMG-1"], _edit_history("train/loss", 10.0, _drop_item))
        _rewrite(folder["IMG-2"], _edit_history("train/accuracy", 5.0, _add_to_value))
        _rewrite(folder["IMG-3"], _edit_history("monitoring/gpu_util", 0.5, _shift_timestamp))
        _rewrite(folder["IMG-4"], _drop_artifact_entry("best.pt"))
        _rewrite(folder["IMG-5"], _change_config)
        _rewrite(folder["IMG-6"], _flip_exit)
        bad = validate(Archive(archive), target, Selection(), ledger, _quiet, 2)
        found = {c.ref.run_id: {(m.attribute, m.kind) for m in c.mismatches} for c in bad.checks if c.mismatches}
        assert found == {
            "IMG-1": {("train/loss", "missing_points")},
            "IMG-2": {("train/accuracy", "value")},
            "IMG-3": {("monitoring/gpu_util", "timestamp")},
            "IMG-4": {("model/checkpoint", "file_missing")},
            "IMG-5": {("parameters/lr", "param_value")},
            "IMG-6": {("sys/failed", "status")},
        }
        assert [c.ref.run_id for c in bad.checks if c.status == "validated"] == ["IMG-7"]

        outcome = retry(Archive(archive), target, Selection(), ledger, _quiet, 2)
        assert [r.run_id for r in outcome.reloaded] == [f"IMG-{i}" for i in range(1, 7)]
        assert outcome.validation.ok and outcome.validation.count("validated") == 6
        assert validate(Archive(archive), target, Selection(), ledger, _quiet, 2).ok
    # one run folder per run, rewritten in place
    assert len(list((target.root / "wandb").glob("offline-run-*"))) == 7
