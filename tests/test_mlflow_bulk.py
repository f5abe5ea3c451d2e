"""The bulk MLflow path against real `sqlite:///` stores, read back through `MlflowClient`."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.archive.reader import _row_groups_with
from neptune_migration.errors import TargetError
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.samples import write_nasty_archive
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.targets.mlflow import bulk as mlflow_bulk
from neptune_migration.targets.mlflow import bulk_core
from neptune_migration.targets.mlflow.bulk import SCHEMA_REVISIONS, MlflowBulkTarget
from neptune_migration.targets.mlflow.loader import MlflowTarget
from neptune_migration.targets.mlflow.store_schema import client_revision
from neptune_migration.vocabulary import RunRef

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _load(archive: Path, target: MlflowTarget, state: Path) -> object:
    target.check()
    with Ledger(state) as ledger:
        try:
            return load(Archive(archive), target, Selection(), ledger,
                        lambda n: Tracker("t", n, Console(quiet=True), enabled=False), workers=2)
        finally:
            target.close()


def _edge_archive(root: Path) -> Path:
    """Ties that decide MLflow's latest value, exact repeats, and series that cross transaction boundaries."""
    writer = ArchiveWriter(root, rows_per_batch=20_000)
    with writer.run(RunRef("bulk/edge", "EDGE-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        # Same step: the later timestamp wins; same step and timestamp: the larger value; NaN counts as 0 and
        # loses a tie against an earlier 0.0.
        w.add_series("ties/ts", "float_series", [5, 5, 5, 1], [T0 + timedelta(seconds=s) for s in (1, 3, 2, 9)],
                     [1.0, 2.0, 3.0, 4.0])
        w.add_series("ties/value", "float_series", [7, 7, 7], [T0] * 3, [2.0, 9.0, -1.0])
        w.add_series("ties/nan", "float_series", [3, 3], [T0] * 2, [0.0, math.nan])
        w.add_series("ties/nan_first", "float_series", [3, 3], [T0] * 2, [math.nan, 0.0])
        w.add_series("repeat", "float_series", [1, 1, 2], [T0, T0, T0], [0.5, 0.5, 0.5])
        n = 25_000
        w.add_series("long/a", "float_series", list(range(n)), [T0 + timedelta(milliseconds=i) for i in range(n)],
                     [math.sin(i) * 1e-3 for i in range(n)])
        w.add_series("long/b", "float_series", [i * 0.5 for i in range(n)], [None] * n,
                     [float(i % 97) for i in range(n)])
    return root


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple]:
    points = client.get_metric_history(run_id, key)
    # NaN != NaN, so compare NaN by name; every other value bit-exactly through repr.
    return sorted((m.step, m.timestamp, "nan" if math.isnan(m.value) else repr(m.value)) for m in points)


def _snapshot(uri: str) -> dict[str, dict]:
    client = MlflowClient(uri)
    out = {}
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100):
        data = run.data
        latest = {m.key: (m.step, m.timestamp, "nan" if math.isnan(m.value) else repr(m.value))
                  for m in data._metric_objs}
        out[data.tags["neptune.run_key"]] = {
            "history": {k: _history(client, run.info.run_id, k) for k in sorted(data.metrics)},
            "latest": latest,
            "params": data.params,
            # neptune.bulk_rows is the bulk path's own progress marker (docs/mlflow.md); neptune.migration.ledger
            # names the ledger that created the run, and the two loads compared here each have their own.
            "tags": {k: v for k, v in data.tags.items()
                     if k not in ("mlflow.parentRunId", "neptune.bulk_rows", "neptune.migration.ledger")},
            # The end time is the run's last activity (never the load time), so it is the same for both loads.
            "status": (run.info.status, run.info.start_time, run.info.end_time),
        }
    return out


def test_bulk_reads_back_like_log_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Several transactions per archive batch, so latest_metrics is folded across transaction boundaries.
    monkeypatch.setattr(mlflow_bulk, "ROWS_PER_TRANSACTION", 7_000)
    nasty = write_nasty_archive(tmp_path / "nasty", rows_per_part=700)
    edge = _edge_archive(tmp_path / "edge")
    for archive in (nasty, edge):
        name = archive.name
        plain_uri = f"sqlite:///{tmp_path / name / 'plain' / 'mlflow.db'}"
        bulk_uri = f"sqlite:///{tmp_path / name / 'bulk' / 'mlflow.db'}"
        plain = _load(archive, MlflowTarget(plain_uri), tmp_path / f"{name}-plain.db")
        bulk = _load(archive, MlflowBulkTarget(bulk_uri), tmp_path / f"{name}-bulk.db")
        assert not plain.failed and not bulk.failed
        want, got = _snapshot(plain_uri), _snapshot(bulk_uri)
        assert want.keys() == got.keys() and want
        for key in want:
            assert got[key] == want[key], key
    edge_run = got["bulk/edge/EDGE-1"]
    assert edge_run["latest"]["ties/ts"] == (5, int((T0 + timedelta(seconds=3)).timestamp() * 1000), "2.0")
    assert edge_run["latest"]["ties/value"][2] == "9.0"
    assert edge_run["latest"]["ties/nan"][2] == "0.0" and edge_run["latest"]["ties/nan_first"][2] == "nan"
    assert len(edge_run["history"]["repeat"]) == 2
    assert len(edge_run["history"]["long/b"]) == 25_000


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    MlflowBulkTarget(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        # MLflow created the store at its client's schema, and the bulk path was tested on that schema.
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == client_revision()
        assert client_revision() in SCHEMA_REVISIONS
        conn.execute("UPDATE alembic_version SET version_num = 'f5a4f2784254'")
    with pytest.raises(TargetError) as err:
        MlflowBulkTarget(f"sqlite:///{db}")
    message = str(err.value)
    # Refused as every in-process load is: the store is not at our client's schema (tests/test_mlflow_store_versions).
    assert "\n" not in message and "f5a4f2784254" in message and client_revision() in message
    with pytest.raises(TargetError, match="sqlite:///"):
        MlflowBulkTarget("http://127.0.0.1:5000")


def test_client_schema_the_bulk_path_was_not_tested_on_is_refused(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A client newer than the bulk path's tests: the in-process load would work, so that is the way forward."""
    db = tmp_path / "mlflow.db"
    MlflowBulkTarget(f"sqlite:///{db}").close()
    monkeypatch.setattr(bulk_core, "SCHEMA_REVISIONS", {"0123456789ab": "9.9.9"})
    with pytest.raises(TargetError) as err:
        MlflowBulkTarget(f"sqlite:///{db}")
    message = str(err.value)
    assert "\n" not in message and client_revision() in message and "0123456789ab (MLflow 9.9.9)" in message
    assert "load without the bulk option" in message
    MlflowTarget(f"sqlite:///{db}").close()


def test_tables_not_as_expected_are_refused(tmp_path: Path) -> None:
    """The revision is one the bulk path knows, but `latest_metrics` lost the key its upsert relies on."""
    db = tmp_path / "mlflow.db"
    MlflowBulkTarget(f"sqlite:///{db}").close()
    columns = "key VARCHAR(250), value FLOAT, timestamp BIGINT, step BIGINT, is_nan BOOLEAN, run_uuid VARCHAR(32)"
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE latest_metrics")
        conn.execute(f"CREATE TABLE latest_metrics ({columns})")
    with pytest.raises(TargetError) as err:
        MlflowBulkTarget(f"sqlite:///{db}")
    message = str(err.value)
    assert "\n" not in message and "latest_metrics" in message and "keyed by []" in message, message


_CHILD = """
import sys
from pathlib import Path
from rich.console import Console
from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.stages.load import load
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.targets.mlflow.bulk import MlflowBulkTarget

target = MlflowBulkTarget(sys.argv[2])
with Ledger(Path(sys.argv[3])) as ledger:
    summary = load(Archive(Path(sys.argv[1])), target, Selection(), ledger,
                   lambda n: Tracker("t", n, Console(quiet=True), enabled=False), workers=1)
target.close()
sys.exit(1 if summary.failed else 0)
"""


def _stored_points(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_then_rerun_stores_every_point_once(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    writer = ArchiveWriter(archive, rows_per_batch=10_000)
    n = 40_000
    with writer.run(RunRef("bulk/kill", "KILL-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        for s in range(4):
            w.add_series(f"m/{s}", "float_series", list(range(n)), [T0 + timedelta(milliseconds=i) for i in range(n)],
                         [float(i * (s + 1)) for i in range(n)])
        # Every point twice: exact repeats inside the archive, in every transaction of the run.
        w.add_series("dup", "float_series", [i // 2 for i in range(n)],
                     [T0 + timedelta(milliseconds=i // 2) for i in range(n)], [float(i // 2) for i in range(n)])
    db = tmp_path / "store" / "mlflow.db"
    uri, state = f"sqlite:///{db}", tmp_path / "state.db"
    cmd = [sys.executable, "-c", _CHILD, str(archive), uri, str(state)]
    child = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + 90
    while _stored_points(db) == 0 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, "the load finished before it could be killed; make the archive bigger"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    partial = _stored_points(db)
    assert 0 < partial < 4 * n + n // 2
    assert subprocess.run(cmd, timeout=120).returncode == 0
    assert subprocess.run(cmd, timeout=120).returncode == 0  # a third pass over a complete run adds nothing

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["neptune.migration.state"] == "complete"
    run_id = runs[0].info.run_id
    with sqlite3.connect(db) as conn:
        per_key = dict(conn.execute("SELECT key, COUNT(*) FROM metrics WHERE run_uuid = ? GROUP BY key", (run_id,)))
        distinct = conn.execute(
            "SELECT COUNT(*) FROM (SELECT DISTINCT key, step FROM metrics WHERE run_uuid = ?)", (run_id,)
        ).fetchone()[0]
    assert per_key == {**{f"m/{s}": n for s in range(4)}, "dup": n // 2} and distinct == 4 * n + n // 2
    assert runs[0].data.tags["neptune.bulk_rows"] == f"{5 * n}:{n // 2}"
    history = client.get_metric_history(run_id, "m/3")
    assert sorted((m.step, m.value) for m in history) == [(i, float(i * 4)) for i in range(n)]
    assert runs[0].data.metrics == {**{f"m/{s}": float((n - 1) * (s + 1)) for s in range(4)},
                                    "dup": float(n // 2 - 1)}


def test_string_series_stream_to_artifacts_in_step_order(tmp_path: Path) -> None:
    """Rows of a series may come in any order in an archive; the artifact lists them by step (ties in archive
    order), and a value holding a Unicode line separator stays one line."""
    writer = ArchiveWriter(tmp_path / "archive", rows_per_batch=2)
    with writer.run(RunRef("bulk/text", "TEXT-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_series("logs/out", "string_series", [3, 1, 2], [T0] * 3, ["three", "one\u2028sep", "two a"])
        w.add_series("logs/in_order", "string_series", [0, 1], [T0] * 2, ["a", "b"])
        w.add_series("logs/out", "string_series", [2, 0.5], [T0] * 2, ["two b", "half"])
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert not _load(tmp_path / "archive", MlflowBulkTarget(uri), tmp_path / "state.db").failed
    client = MlflowClient(uri)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    local = Path(client.download_artifacts(run.info.run_id, "logs", str(tmp_path / "dl")))
    out = [json.loads(x) for x in (local / "out.jsonl").read_bytes().split(b"\n")[:-1]]
    assert [(x["step"], x["value"]) for x in out] == [
        (0.5, "half"), (1, "one\u2028sep"), (2, "two a"), (2, "two b"), (3, "three")
    ]
    assert [x["value"] for x in map(json.loads, (local / "in_order.jsonl").read_text().split("\n")[:-1])] == ["a", "b"]
    assert sorted(p.name for p in local.iterdir()) == ["in_order.jsonl", "in_order.log", "out.jsonl", "out.log"]
    # The plain-text log: the same order, one line per point, the line separator shown rather than kept.
    log = (local / "out.log").read_text(encoding="utf-8").split("\n")
    assert [line.split("\t")[0] + " " + line.split("\t")[2] for line in log[:-1]] == [
        "0.5 half", "1 one\\nsep", "2 two a", "2 two b", "3 three"]


def test_reader_skips_only_row_groups_without_wanted_types(tmp_path: Path) -> None:
    """Row-group pruning by attribute_type statistics must never drop a row of a wanted type."""
    writer = ArchiveWriter(tmp_path / "archive", rows_per_batch=5)
    with writer.run(RunRef("bulk/groups", "G-1")) as w:
        w.add_atom("params/first", "int", 1)
        for start in range(0, 23, 5):  # row groups holding float points only, which atom reads skip
            steps = list(range(start, min(23, start + 5)))
            w.add_series("m", "float_series", steps, [T0] * len(steps), [float(i) for i in steps])
        w.add_series("s", "string_series", [0, 1], [T0] * 2, ["a", "b"])
        w.add_atom("params/last", "float", 2.5)  # lands in the last row group, after the series
        w.add_series("m", "float_series", [23], [T0], [23.0])
    run = Archive(tmp_path / "archive").scan().runs[0]
    part = pq.ParquetFile(run.parts[0])
    groups = _row_groups_with(part, ["float", "int"])
    last = part.metadata.num_row_groups - 1
    # Statistics are a range, so mixed groups stay; the float-only ones in between are skipped.
    assert groups is not None and groups[0] == 0 and groups[-1] == last and len(groups) <= last - 2
    assert {p: a.value for p, a in run.atoms().items() if p.startswith("params/")} == {
        "params/first": 1, "params/last": 2.5
    }
    floats = [v for b in run.batches(["float_series"], ["float_value"]) for v in b.column("float_value").to_pylist()]
    assert sorted(floats) == [float(i) for i in range(24)]
    texts = [v for b in run.batches(["string_series"], ["string_value"]) for v in b.column("string_value").to_pylist()]
    assert texts == ["a", "b"]
    assert sum(b.num_rows for b in run.batches()) == 24 + 2 + 2


def test_a_failed_chunk_stops_the_writer_before_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loading thread hands out chunk k+1 before it learns that chunk k failed; k+1 must not be written, or
    the progress tag would skip k's rows on the rerun. A database error in the middle of a run is injected (a
    stand-in: no real part fails on cue), then the rerun must store every point once."""
    from neptune_migration.targets.mlflow import bulk_sqlite

    monkeypatch.setattr(mlflow_bulk, "ROWS_PER_TRANSACTION", 1_000)
    archive = tmp_path / "archive"
    n = 6_000
    with ArchiveWriter(archive, rows_per_batch=n).run(RunRef("bulk/gap", "GAP-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_series("m", "float_series", list(range(n)), [T0 + timedelta(milliseconds=i) for i in range(n)],
                     [float(i) for i in range(n)])
    real = bulk_sqlite.SqliteBulkSession.write
    calls = []

    def failing(self, chunk, progress):
        calls.append(chunk.start)
        if len(calls) == 3:
            time.sleep(0.2)  # the next chunk is queued by now
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return real(self, chunk, progress)

    monkeypatch.setattr(bulk_sqlite.SqliteBulkSession, "write", failing)
    db = tmp_path / "store" / "mlflow.db"
    uri = f"sqlite:///{db}"
    assert len(_load(archive, MlflowBulkTarget(uri), tmp_path / "state.db").failed) == 1
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
        tag = conn.execute("SELECT value FROM tags WHERE key = 'neptune.bulk_rows'").fetchone()[0]
    assert stored == 2_000 and tag == "2000:0", (stored, tag)
    monkeypatch.setattr(bulk_sqlite.SqliteBulkSession, "write", real)
    assert not _load(archive, MlflowBulkTarget(uri), tmp_path / "state.db").failed
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT step) FROM metrics").fetchone() == (n, n)
