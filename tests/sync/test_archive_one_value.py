"""After a sync the archive holds one value per atom: what every reader of neptune-exporter's layout sees (it reads
all parts, in no promised order), and a crash between the sync's two steps still leaves a complete, readable run."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.archive.delta import DeltaWriter, RunTip, supersede
from neptune_migration.vocabulary import RunRef, folder_name

REF = RunRef("ws/proj", "run-1")
T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


def _first_export(root: Path) -> None:
    with ArchiveWriter(root).run(REF) as w:
        w.add_atom("params/lr", "float", 0.01)
        w.add_atom("params/optimizer", "string", "adam")
        w.add_atom("sys/modification_time", "datetime", T0)
        w.add_series("train/loss", "float_series", [0, 1, 2], [T0, T0, T0], [1.0, 0.5, 0.25])
        w.add_file("model/weights", "file", b"old weights", "weights.bin")


def _sync(root: Path, lr: float, weights: bytes) -> None:
    writer = ArchiveWriter(root)
    archived = Archive(root).run(REF)
    assert archived is not None
    with DeltaWriter(writer, REF, RunTip.of(archived)) as delta:
        delta.add_atom("params/lr", "float", lr)
        delta.add_atom("params/optimizer", "string", "adam")
        delta.add_atom("sys/modification_time", "datetime", T0 + dt.timedelta(minutes=1))
        delta.add_series("train/loss", "float_series", [1, 2, 3], [T0, T0, T0], [0.5, 0.25, 0.125])
        delta.add_file("model/weights", "file", weights, "weights.bin")


def _rows(root: Path, path: str) -> list[dict]:
    """Every row of the run for one attribute, from all its parts, the way any parquet reader sees them."""
    parts = sorted((root / "data" / folder_name(REF.project_id)).glob(f"{folder_name(REF.run_id)}_part_*.parquet"))
    rows = []
    for part in parts:
        rows += [r for r in pq.read_table(part).to_pylist() if r["attribute_path"] == path]
    return rows


def test_a_changed_atom_has_one_row_across_all_parts(tmp_path: Path) -> None:
    _first_export(tmp_path)
    _sync(tmp_path, 0.02, b"new weights")
    lr = _rows(tmp_path, "params/lr")
    assert [r["float_value"] for r in lr] == [0.02], lr
    assert len(_rows(tmp_path, "sys/modification_time")) == 1
    assert len(_rows(tmp_path, "params/optimizer")) == 1, "an unchanged atom is neither repeated nor lost"
    weights = _rows(tmp_path, "model/weights")
    assert len(weights) == 1 and "sync-1" in weights[0]["file_value"]["path"], weights
    assert [r["float_value"] for r in _rows(tmp_path, "train/loss")] == [1.0, 0.5, 0.25, 0.125]
    run = Archive(tmp_path).run(REF)
    assert run is not None and len(run.parts) == 2
    assert run.atom_value("params/lr") == 0.02 and run.atom_value("params/optimizer") == "adam"
    files = tmp_path / "files" / folder_name(REF.project_id)
    assert run.file_path(weights[0]["file_value"]["path"]).read_bytes() == b"new weights"
    assert not any(p.read_bytes() == b"old weights" for p in files.rglob("*") if p.is_file()), \
        "the superseded payload is gone with its row"
    assert not list(tmp_path.rglob("*.tmp"))

    _sync(tmp_path, 0.03, b"new weights")  # the value changes again: now the part to rewrite is the last sync's
    assert [r["float_value"] for r in _rows(tmp_path, "params/lr")] == [0.03]
    assert len(_rows(tmp_path, "model/weights")) == 1
    assert Archive(tmp_path).run(REF).atom_value("params/lr") == 0.03  # type: ignore[union-attr]


def test_sigkill_between_the_new_part_and_the_rewrite_leaves_a_complete_run(tmp_path: Path) -> None:
    _first_export(tmp_path)
    # A process that commits the new part and is killed where the older part would be rewritten.
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        import neptune_migration.archive.delta as delta
        delta.supersede = lambda archive, ref: os.kill(os.getpid(), signal.SIGKILL)
        from tests.sync.test_archive_one_value import _sync
        from pathlib import Path
        _sync(Path({str(tmp_path)!r}), 0.02, b"new weights")
    """)
    proc = subprocess.run([sys.executable, "-c", child], env=dict(os.environ), capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    lr = _rows(tmp_path, "params/lr")
    assert sorted(r["float_value"] for r in lr) == [0.01, 0.02], "at worst two rows"
    run = Archive(tmp_path).run(REF)
    assert run is not None and len(run.parts) == 2, "complete: both parts in place"
    assert run.atom_value("params/lr") == 0.02, "the newest part wins for our reader"
    assert [r["float_value"] for r in _rows(tmp_path, "train/loss")] == [1.0, 0.5, 0.25, 0.125]

    # The next sync of the run (here with nothing new) finishes the removal.
    assert supersede(ArchiveWriter(tmp_path), REF) == 3  # params/lr, model/weights, sys/modification_time
    assert [r["float_value"] for r in _rows(tmp_path, "params/lr")] == [0.02]
    assert len(_rows(tmp_path, "sys/modification_time")) == 1


def test_a_killed_rewrite_leaves_only_a_temporary_file_readers_ignore(tmp_path: Path) -> None:
    _first_export(tmp_path)
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        import neptune_migration.archive.delta as delta
        real = os.replace
        def replace(src, dst):
            if sys._getframe(1).f_code.co_name == "_rewrite_without":  # the older part's rename, not the new one's
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
        delta.os.replace = replace
        from tests.sync.test_archive_one_value import _sync
        from pathlib import Path
        _sync(Path({str(tmp_path)!r}), 0.02, b"new weights")
    """)
    proc = subprocess.run([sys.executable, "-c", child], env=dict(os.environ), capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert list(tmp_path.rglob("*_part_0.parquet.tmp")), "killed after writing the rewritten part, before its rename"
    run = Archive(tmp_path).run(REF)
    assert run is not None and run.atom_value("params/lr") == 0.02
    assert len(Archive(tmp_path).scan().runs) == 1 and not Archive(tmp_path).scan().incomplete
    supersede(ArchiveWriter(tmp_path), REF)
    assert [r["float_value"] for r in _rows(tmp_path, "params/lr")] == [0.02]
    assert not list(tmp_path.rglob("*.tmp")), "the leftover is replaced by the finished rewrite"
