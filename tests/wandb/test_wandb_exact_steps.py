"""Steps reach the `.wandb` file exactly: 0, 10**9, 999,999,999,999 and 6-decimal fractions, read back from the
records themselves, validated with no mismatch; a step that is off names both values distinguishably."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.stages.validate import validate
from neptune_migration.targets.wandb.loader import WandbOfflineTarget
from neptune_migration.targets.wandb.readback import find_run_folder
from neptune_migration.targets.wandb.records import RecordWriter, read_records
from neptune_migration.vocabulary import RunRef

T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
WHOLE = ["0", "1000000000", "999999999999"]
FRACTIONS = ["0.000001", "0.123456", "1.000001", "1234.567891", "987654.321987", "99999999.999999",
             "123456789.123456", "999999999999"]


def _quiet(n: int) -> Tracker:
    return Tracker("t", n, Console(quiet=True), enabled=False)


def _archive(root: Path) -> Path:
    writer = ArchiveWriter(root)
    for run_id, steps in (("WHOLE", WHOLE), ("FRAC", FRACTIONS)):
        with writer.run(RunRef("ws/steps", run_id)) as w:
            w.add_atom("sys/creation_time", "datetime", T0)
            w.add_series("m/x", "float_series", [float(s) for s in steps],
                         [T0 + timedelta(seconds=i) for i in range(len(steps))], [float(i) for i in range(len(steps))])
    return root


def _history(folder: Path) -> list[dict[str, str]]:
    """Every history record of the run's `.wandb` file as {key: JSON text}, the text exactly as written."""
    rows = []
    for rec in read_records(next(folder.glob("run-*.wandb"))):
        if rec.WhichOneof("record_type") == "history":
            rows.append({"/".join(i.nested_key): i.value_json for i in rec.history.item})
    return rows


def test_huge_and_fractional_steps_read_back_exactly(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a")
    target = WandbOfflineTarget(tmp_path / "out")
    with Ledger(tmp_path / "s.db") as ledger:
        assert not load(Archive(archive), target, Selection(), ledger, _quiet, 2).failed
        summary = validate(Archive(archive), target, Selection(), ledger, _quiet, 2)
    assert [(c.ref.run_id, m.kind, m.detail) for c in summary.checks for m in c.mismatches] == []
    assert summary.ok and summary.count("validated") == 2

    runs = {r.ref.run_id: r for r in Archive(archive).scan().runs}
    whole = _history(find_run_folder(target.root, target.run_id_for(runs["WHOLE"])))
    # Whole, non-negative, increasing steps: `_step` is the Neptune step itself, as an integer.
    assert [row["_step"] for row in whole] == WHOLE
    assert all("neptune_step" not in row for row in whole)

    frac = _history(find_run_folder(target.root, target.run_id_for(runs["FRAC"])))
    # Fractions: `_step` counts rows, `neptune_step` holds the step; its text is the archived decimal exactly.
    assert [row["_step"] for row in frac] == [str(i) for i in range(len(FRACTIONS))]
    assert [Decimal(row["neptune_step"]) for row in frac] == [Decimal(s) for s in FRACTIONS]
    assert frac[-1]["neptune_step"] == "999999999999.0"  # was 999999999999.0001
    assert target.read_back(runs["FRAC"]).points("m/x")[-1][0] == 999_999_999_999.0


def _set_step(folder: Path, old: str, new: str) -> None:
    path = next(folder.glob("run-*.wandb"))
    records = list(read_records(path))
    writer = RecordWriter(path)
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            for item in rec.history.item:
                if list(item.nested_key) == ["neptune_step"] and item.value_json == old:
                    item.value_json = new
        writer.write(rec)
    writer.close()


def test_a_step_off_by_a_ten_thousandth_is_named_with_both_values(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a")
    target = WandbOfflineTarget(tmp_path / "out")
    with Ledger(tmp_path / "s.db") as ledger:
        assert not load(Archive(archive), target, Selection(), ledger, _quiet, 2).failed
        run = next(r for r in Archive(archive).scan().runs if r.ref.run_id == "FRAC")
        _set_step(find_run_folder(target.root, target.run_id_for(run)), "999999999999.0", "999999999999.0001")
        bad = validate(Archive(archive), target, Selection(), ledger, _quiet, 2)
    mismatches: dict[str, Any] = {m.kind: m.detail for c in bad.checks for m in c.mismatches}
    assert set(mismatches) == {"missing_points", "extra_points"}, mismatches
    assert mismatches["missing_points"].endswith("at step(s) 999999999999"), mismatches
    assert mismatches["extra_points"].endswith("the archive does not have: 999999999999.0001"), mismatches
    assert "1e+12" not in json.dumps(mismatches)
