"""The archive reader and writer, on neptune-exporter's real output and on archives we write."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.archive.reader import decimal_micros
from neptune_migration.errors import ArchiveError, UnsafePathError
from neptune_migration.samples import write_nasty_archive
from neptune_migration.vocabulary import EXPORTER_SCHEMA, RunRef, folder_name, step_to_decimal


def test_folder_name_matches_neptune_exporter(exporter_archives: Path) -> None:
    assert folder_name("ws/proj") == "ws_proj-00871eb7ac1bdb01"
    assert (exporter_archives / "neptune3" / "data" / folder_name("ws/proj")).is_dir()
    assert folder_name("my-org/my-project") == "my-org_my-project-de40b447a2778f2b"


@pytest.mark.parametrize("flavour,run_ids", [("neptune3", ["run-a", "run-b", "run-b-old"]),
                                              ("neptune2", ["PROJ-1", "PROJ-2"])])
def test_reads_exporter_archives_as_they_are(exporter_archives: Path, flavour: str, run_ids: list[str]) -> None:
    scan = Archive(exporter_archives / flavour / "data", exporter_archives / flavour / "files").scan()
    assert [r.ref.run_id for r in scan.runs] == run_ids
    assert scan.incomplete == []
    run = scan.runs[0]
    atoms = run.atoms()
    assert atoms["params/lr"].value == 0.01 and atoms["params/lr"].type == "float"
    assert atoms["params/epochs"].value == 3 and atoms["params/epochs"].type == "int"
    assert atoms["sys/creation_time"].value == datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC)
    loss = run.table(["float_series"], ["attribute_path", "step", "float_value"])
    assert loss.column("float_value").to_pylist() == [1.0, 0.5, 0.3333333333333333, 0.25, 0.2]
    assert list(decimal_micros(loss.column("step").combine_chunks())) == [0, 1_000_000, 2_000_000, 3_000_000,
                                                                          4_000_000]
    files = run.table(["file", "file_series"], ["attribute_path", "file_value"]).to_pylist()
    assert files, "the fixture runs have files"
    for row in files:
        assert run.file_path(row["file_value"]["path"]).is_file()


def test_archive_root_layout_and_exporter_root_layout_are_both_accepted(exporter_archives: Path) -> None:
    root = exporter_archives / "neptune3"
    via_root = Archive(root).scan()
    via_parts = Archive(root / "data", root / "files").scan()
    assert [r.ref for r in via_root.runs] == [r.ref for r in via_parts.runs]
    assert via_root.runs[0].files_dir == via_parts.runs[0].files_dir


def test_writer_round_trip_keeps_every_type_and_value(tmp_path: Path) -> None:
    write_nasty_archive(tmp_path, rows_per_part=500)
    scan = Archive(tmp_path).scan()
    assert [r.ref.run_id for r in scan.runs] == ["NASTY-1", "NASTY-2"]
    run = scan.runs[0]
    assert len(run.parts) > 3, "a small rows_per_part spreads the run over several parts"
    atoms = run.atoms()
    assert atoms["params/int"].value == 256
    assert atoms["params/big_int"].value == 2**62 + 1
    assert math.isnan(atoms["params/nan"].value)
    assert atoms["params/set"].value == ["a", "b", "c"]
    assert atoms["params/long_text"].value.endswith("END") and len(atoms["params/long_text"].value) == 9003
    table = run.table(["float_series"], ["attribute_path", "step", "step_exact", "float_value"])
    special = [r for r in table.to_pylist() if r["attribute_path"] == "metrics/special"]
    values = [r["float_value"] for r in special]
    assert math.isnan(values[0]) and values[1:3] == [math.inf, -math.inf]
    assert math.copysign(1.0, values[4]) == -1.0 and values[5] == 5e-324
    frac = {r["step"]: r["step_exact"] for r in table.to_pylist() if r["attribute_path"] == "metrics/fractional"}
    assert Decimal("0.290000") in frac and frac[Decimal("2.000001")] is None
    tiny = [r for r in table.to_pylist() if r["attribute_path"] == "metrics/tiny_fraction"]
    assert tiny[0]["step_exact"] == 0.1234567, "steps decimal(18,6) cannot hold keep their exact float"
    huge = [r for r in table.to_pylist() if r["attribute_path"] == "metrics/huge_steps"]
    assert [r["step_exact"] or float(r["step"]) for r in huge] == [1e9, 1e11, 5e14, 9.007199254740991e15]


def test_exporter_schema_is_a_subset_of_ours(tmp_path: Path) -> None:
    write_nasty_archive(tmp_path)
    part = next((tmp_path / "data").rglob("*_part_0.parquet"))
    schema = pq.read_schema(part)
    for field in EXPORTER_SCHEMA:
        assert schema.field(field.name).type == field.type


def test_rows_in_any_order_and_all_null_atoms(tmp_path: Path) -> None:
    """3.x exports hold atom rows with every value null: they are absent, not empty strings or zeros."""
    project = tmp_path / "data" / folder_name("ws/p")
    project.mkdir(parents=True)
    rows = [
        {"project_id": "ws/p", "run_id": "R", "attribute_path": "train/loss", "attribute_type": "float_series",
         "step": Decimal("2"), "float_value": 0.5},
        {"project_id": "ws/p", "run_id": "R", "attribute_path": "params/missing", "attribute_type": "string"},
        {"project_id": "ws/p", "run_id": "R", "attribute_path": "params/lr", "attribute_type": "float",
         "float_value": 0.1},
        {"project_id": "ws/p", "run_id": "R", "attribute_path": "train/loss", "attribute_type": "float_series",
         "step": Decimal("1"), "float_value": 1.0},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=EXPORTER_SCHEMA), project / f"{folder_name('R')}_part_0.parquet")
    run = Archive(tmp_path).scan().runs[0]
    assert set(run.atoms()) == {"params/lr"}
    assert run.table(["float_series"], ["float_value"]).num_rows == 2


def test_tmp_leftovers_ignored_and_incomplete_runs_reported(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path, rows_per_part=2, rows_per_batch=2)
    with writer.run(RunRef("ws/p", "DONE")) as w:
        w.add_atom("params/a", "int", 1)
    rw = writer.run(RunRef("ws/p", "HALF"))
    for i in range(6):
        rw.add_atom(f"params/a{i}", "int", i)
    rw._flush()  # parts written as .tmp, never committed: the process "died" here
    project = tmp_path / "data" / folder_name("ws/p")
    assert any(p.name.endswith(".parquet.tmp") for p in project.iterdir())
    # A part that made it to its final name without part_0 is an interrupted export too.
    (project / f"{folder_name('HALF')}_part_1.parquet").write_bytes(
        (project / f"{folder_name('DONE')}_part_0.parquet").read_bytes())
    scan = Archive(tmp_path).scan()
    assert [r.ref.run_id for r in scan.runs] == ["DONE"]
    assert [i.run_folder for i in scan.incomplete] == [folder_name("HALF")]


def test_corrupt_parquet_is_a_clear_archive_error(tmp_path: Path) -> None:
    write_nasty_archive(tmp_path)
    part = next((tmp_path / "data").rglob("*NASTY-1*_part_0.parquet"))
    data = part.read_bytes()
    part.write_bytes(data[: len(data) // 2])
    scan = Archive(tmp_path).scan()
    (bad,) = scan.unreadable  # the damaged run is reported with its reason; the others still read
    assert "corrupt or unreadable parquet" in bad.reason and "NASTY-1" in bad.run_folder
    assert scan.runs and all("NASTY-1" not in r.ref.run_id for r in scan.runs)


def test_wrong_schema_is_refused(tmp_path: Path) -> None:
    project = tmp_path / "data" / "x"
    project.mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), project / "r_part_0.parquet")
    (bad,) = Archive(tmp_path).scan().unreadable
    assert "archive schema" in bad.reason and bad.ref is None


def test_missing_archive_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="archive not found"):
        Archive(tmp_path / "nope")


@pytest.mark.parametrize("evil", ["../outside.bin", "/etc/passwd", "a/../../outside.bin", "C:\\x"])
def test_file_paths_cannot_escape_the_archive(tmp_path: Path, evil: str) -> None:
    write_nasty_archive(tmp_path)
    run = Archive(tmp_path).scan().runs[0]
    with pytest.raises(UnsafePathError):
        run.file_path(evil)


def test_symlink_out_of_the_archive_is_refused(tmp_path: Path) -> None:
    write_nasty_archive(tmp_path / "a")
    run = Archive(tmp_path / "a").scan().runs[0]
    (tmp_path / "secret").write_text("s")
    assert run.files_dir is not None
    (run.files_dir / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePathError):
        run.file_path("link")


def test_step_to_decimal() -> None:
    assert step_to_decimal(0.29) == (Decimal("0.290000"), None)
    assert step_to_decimal(1.1234567)[1] == 1.1234567
    assert step_to_decimal(1e13)[1] == 1e13
    with pytest.raises(ValueError):
        step_to_decimal(math.nan)


def test_commit_is_atomic_and_rewrite_replaces(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path)
    ref = RunRef("ws/p", "R")
    with writer.run(ref) as w:
        w.add_atom("params/a", "int", 1)
        w.add_file("f", "file", b"one", "one.txt")
    with writer.run(ref) as w:
        w.add_atom("params/a", "int", 2)
    run = Archive(tmp_path).scan().runs[0]
    assert run.atoms()["params/a"].value == 2
    assert not any(run.files_dir.rglob("one.txt")), "a rewritten run drops the files of the earlier copy"
    with pytest.raises(RuntimeError), writer.run(ref) as w:
        w.add_atom("params/a", "int", 3)
        raise RuntimeError("export died")
    assert Archive(tmp_path).scan().runs == [], "an aborted rewrite leaves no half run behind"
