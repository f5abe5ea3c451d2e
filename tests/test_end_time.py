"""A run's end time is its last activity, never the load time: the rule, MLflow, W&B, and validation catching it.

The expected end times are computed here straight from the parquet files with pyarrow, not through the archive
reader, so a reader bug cannot validate itself.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from neptune_migration.archive import Archive, ArchivedRun, ArchiveWriter
from neptune_migration.archive.reader import datetime_ms, micros_to_float
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.stages.validate import validate
from neptune_migration.targets.mlflow.loader import MlflowTarget
from neptune_migration.targets.wandb.loader import WandbOfflineTarget
from neptune_migration.targets.wandb.readback import find_run_folder
from neptune_migration.targets.wandb.records import RecordWriter, read_records
from neptune_migration.vocabulary import RunRef

from .conftest import run_cli

T0 = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
ATOMS = ("float", "int", "string", "bool", "datetime", "string_set")


def _quiet(n: int) -> Tracker:
    return Tracker("t", n, Console(quiet=True), enabled=False)


def _ms(value: datetime) -> int:
    return int(pa.scalar(value, pa.timestamp("ms", tz="UTC")).cast(pa.int64()).as_py())


def last_activity_from_parquet(parts: list[Path]) -> int | None:
    """The rule, from the raw parquet: ping time, else modification time, else the latest point or file
    timestamp; never before the creation time (else the earliest timestamp)."""
    table = pa.concat_tables(pq.read_table(p, columns=["attribute_path", "attribute_type", "timestamp",
                                                       "datetime_value"]) for p in parts)

    def atom(path: str) -> int | None:
        rows = table.filter(pc.equal(table["attribute_path"], path))["datetime_value"].drop_null()
        return rows.cast(pa.int64())[-1].as_py() if len(rows) else None

    points = table.filter(pc.invert(pc.is_in(table["attribute_type"], pa.array(ATOMS))))["timestamp"]
    stamps = points.drop_null().cast(pa.int64()).to_pylist()
    end = atom("sys/ping_time") or atom("sys/modification_time") or max(stamps, default=None)
    start = atom("sys/creation_time") or min(stamps, default=None)
    return max((t for t in (end, start) if t is not None), default=None)


# -- the rule ---------------------------------------------------------------------------------------------
def _one_run(root: Path, build) -> ArchivedRun:
    writer = ArchiveWriter(root)
    with writer.run(RunRef("ws/p", "R-1")) as w:
        build(w)
    (run,) = Archive(root).scan().runs
    return run


def test_end_time_rule_prefers_ping_then_modification_then_latest_activity(tmp_path: Path) -> None:
    def points(w, created: bool = True) -> None:
        if created:
            w.add_atom("sys/creation_time", "datetime", T0)
        w.add_series("m/loss", "float_series", [0, 1], [T0 + timedelta(seconds=1), T0 + timedelta(seconds=5)],
                     [1.0, 0.5])
        w.add_series("logs", "string_series", [0], [T0 + timedelta(seconds=7)], ["hello"])
        w.add_series("h", "histogram_series", [0], [T0 + timedelta(seconds=3)],
                     [{"type": "COUNTING", "edges": [0.0, 1.0], "values": [2.0]}])

    def with_ping(w) -> None:
        points(w)
        w.add_atom("sys/ping_time", "datetime", T0 + timedelta(seconds=30))
        w.add_atom("sys/modification_time", "datetime", T0 + timedelta(seconds=60))

    def with_modification(w) -> None:
        points(w)
        w.add_atom("sys/modification_time", "datetime", T0 + timedelta(seconds=60))

    def with_file(w) -> None:
        points(w)
        w.add_file("model/ckpt", "file", b"x", "ckpt.bin", timestamp=T0 + timedelta(seconds=9))

    def stale_ping(w) -> None:
        # A ping before the creation time (clock skew): the end is never before the start.
        points(w)
        w.add_atom("sys/ping_time", "datetime", T0 - timedelta(seconds=30))

    def only_created(w) -> None:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_atom("params/lr", "float", 0.1)

    def no_time_at_all(w) -> None:
        w.add_atom("params/lr", "float", 0.1)

    cases = {
        "ping": (with_ping, _ms(T0) + 30_000),
        "modification": (with_modification, _ms(T0) + 60_000),
        "points": (points, _ms(T0) + 7_000),  # the string series is the latest, not the metrics
        "file": (with_file, _ms(T0) + 9_000),
        "stale ping": (stale_ping, _ms(T0)),
        "only created": (only_created, _ms(T0)),
        "no creation time": (lambda w: points(w, created=False), _ms(T0) + 7_000),
        "no time at all": (no_time_at_all, None),
    }
    for name, (build, expected) in cases.items():
        run = _one_run(tmp_path / name.replace(" ", "-"), build)
        assert run.end_time_ms() == expected == last_activity_from_parquet(list(run.parts)), name


def test_end_time_streams_many_parts(tmp_path: Path) -> None:
    """The latest point may be in any part, in any row: the rule reads every part."""
    stamps = [T0 + timedelta(milliseconds=random.Random(3).randrange(10**9)) for _ in range(5000)]
    run = _one_run(tmp_path / "a", lambda w: (w.add_atom("sys/creation_time", "datetime", T0),
                                              w.add_series("m", "float_series", list(range(5000)), stamps,
                                                           [0.0] * 5000)))
    assert run.end_time_ms() == max(_ms(s) for s in stamps)
    writer = ArchiveWriter(tmp_path / "b", rows_per_part=700, rows_per_batch=700)
    with writer.run(RunRef("ws/p", "R-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_series("m", "float_series", list(range(5000)), stamps, [0.0] * 5000)
    (run,) = Archive(tmp_path / "b").scan().runs
    assert len(run.parts) > 3
    assert run.end_time_ms() == max(_ms(s) for s in stamps) == last_activity_from_parquet(list(run.parts))


def test_datetime_ms_is_exact() -> None:
    rng = random.Random(5)
    for _ in range(20_000):
        ms = rng.randrange(0, 4_000_000_000_000)
        assert datetime_ms(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)) == ms


def test_micros_to_float_is_the_nearest_float() -> None:
    rng = np.random.default_rng(11)
    top = 999_999_999_999_999_999  # decimal(18, 6)
    micros = np.concatenate([
        rng.integers(-top, top, 200_000),
        rng.integers(0, 10**12, 50_000) * 10**6 + rng.integers(0, 10**6, 50_000),  # big steps, small fractions
        rng.integers(-10**9, 10**9, 50_000),
        np.array([0, 1, -1, 10**15, 999_999_999_999 * 10**6, 2**53, 2**53 + 1, top, -top]),
    ])
    got = micros_to_float(micros)
    want = np.array([float(Decimal(int(m)).scaleb(-6)) for m in micros.tolist()])
    assert np.array_equal(got, want)
    assert got[-5] == 999_999_999_999.0  # a float division of the millionths gave 999999999999.0001


# -- MLflow -----------------------------------------------------------------------------------------------
def _mlflow_runs(client: MlflowClient, prefix: str) -> dict[str, object]:
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    return {r.data.tags["neptune.run_key"]: r for r in client.search_runs(exps, max_results=100)}


def test_exporter_2x_archive_ends_at_its_last_activity_and_validation_catches_load_time(
        exporter_archives: Path, tmp_path: Path, mlflow_server, prefix: str) -> None:
    root = exporter_archives / "neptune2"
    common = ["--archive", str(root / "data"), "--files", str(root / "files"), "--to", "mlflow",
              "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix,
              "--state", str(tmp_path / "state.db"), "--no-progress"]
    loaded = run_cli("load", *common)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    client = MlflowClient(mlflow_server.uri)
    runs = _mlflow_runs(client, prefix)
    parts = {pq.read_table(p, columns=["run_id"])["run_id"][0].as_py(): p
             for p in (root / "data").rglob("*_part_0.parquet")}
    assert sorted(runs) == ["ws/proj/PROJ-1", "ws/proj/PROJ-2"]
    for key, run in runs.items():
        expected = last_activity_from_parquet([parts[key.rsplit("/", 1)[1]]])
        # The fixture holds neither sys/ping_time nor sys/modification_time: the last point is the end.
        assert run.info.end_time == expected, key
        assert run.info.end_time - run.info.start_time < 60_000, key

    good = run_cli("validate", *common, "--report-dir", str(tmp_path / "good"))
    assert good.returncode == 0, good.stdout + good.stderr

    now_ms = int(time.time() * 1000)
    client.set_terminated(runs["ws/proj/PROJ-1"].info.run_id, end_time=now_ms)  # what MLflow did by itself
    bad = run_cli("validate", *common, "--report-dir", str(tmp_path / "bad"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads((tmp_path / "bad" / "report.json").read_text())
    found = [(m["run_id"], m["attribute"], m["kind"]) for m in report["mismatches"]]
    assert found == [("PROJ-1", "run", "end_time")]
    detail = report["mismatches"][0]["detail"]
    assert f"({now_ms} ms) in MLflow" in detail and "last activity" in detail, detail


# -- both targets -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["neptune2", "neptune3"])
def test_mlflow_and_wandb_agree_on_the_end_time(exporter_archives: Path, tmp_path: Path, mlflow_server,
                                                prefix: str, flavour: str) -> None:
    root = exporter_archives / flavour
    archive = Archive(root / "data", root / "files")
    mlflow_target = MlflowTarget(mlflow_server.uri, experiment_prefix=prefix)
    wandb_target = WandbOfflineTarget(tmp_path / "wandb-out")
    with Ledger(tmp_path / "m.db") as ledger:
        assert not load(archive, mlflow_target, Selection(), ledger, _quiet, 2).failed
        assert validate(archive, mlflow_target, Selection(), ledger, _quiet, 2).ok
    mlflow_target.close()
    with Ledger(tmp_path / "w.db") as ledger:
        assert not load(archive, wandb_target, Selection(), ledger, _quiet, 2).failed
        checks = validate(archive, wandb_target, Selection(), ledger, _quiet, 2).checks
        assert [(c.ref.key, c.summary_line()) for c in checks if c.status != "validated"] == []
    mlflow_runs = _mlflow_runs(MlflowClient(mlflow_server.uri), prefix)
    for run in archive.scan().runs:
        expected = last_activity_from_parquet(list(run.parts))
        info = mlflow_runs[run.ref.key].info
        data = wandb_target.read_back(run)
        assert info.end_time == expected, run.ref.key
        assert data.start_time_ms == info.start_time, run.ref.key
        # W&B keeps whole seconds; the fixture's times are whole seconds, so both ends are the same instant.
        assert data.start_time_ms + data.runtime_s * 1000 == info.end_time, run.ref.key
        assert data.summary["_wandb"]["runtime"] == data.runtime_s


def test_wandb_validation_catches_a_runtime_up_to_the_load_time(exporter_archives: Path, tmp_path: Path) -> None:
    root = exporter_archives / "neptune2"
    archive = Archive(root / "data", root / "files")
    target = WandbOfflineTarget(tmp_path / "out")
    with Ledger(tmp_path / "w.db") as ledger:
        assert not load(archive, target, Selection(), ledger, _quiet, 2).failed
        run = next(r for r in archive.scan().runs if r.ref.run_id == "PROJ-1")
        folder = find_run_folder(target.root, target.run_id_for(run))
        start = target.read_back(run).start_time_ms
        load_time_runtime = int(time.time() - start / 1000)
        path = next(folder.glob("run-*.wandb"))
        records = list(read_records(path))
        writer = RecordWriter(path)
        for rec in records:
            if rec.WhichOneof("record_type") == "exit":
                rec.exit.runtime = load_time_runtime
            writer.write(rec)
        writer.close()
        bad = validate(archive, target, Selection(), ledger, _quiet, 2)
    found = {c.ref.run_id: [(m.attribute, m.kind) for m in c.mismatches] for c in bad.checks if c.mismatches}
    assert found == {"PROJ-1": [("run", "end_time")]}
    detail = next(c for c in bad.checks if c.mismatches).mismatches[0].detail
    assert f"a runtime of {load_time_runtime} s" in detail and "last activity" in detail, detail
