"""Flat memory: peak RSS of one big run against one small run, archive -> MLflow `sqlite:///`.

    .venv/bin/python bench/bench_scale.py [--big 10000000] [--small 10000] [--modes sqlite,bulk]

Writes two one-run archives (float series over 10 metrics, plus a string series with 1% as many points), then
loads each into a fresh `sqlite:///` store in a child process, once per mode:
  - sqlite: `MlflowTarget` (MLflow's own SqlAlchemyStore through `MlflowClient.log_batch`);
  - bulk:   `MlflowBulkTarget` (executemany into metrics + latest_metrics).
The parent polls the child's RSS with psutil every 20 ms (ru_maxrss would carry the parent's pages across fork)
and prints points/s and peak RSS, and the big/small ratio per mode. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import run_with_peak_rss

SERIES = 10
# Rows per add_series call = rows per parquet row group, like the exporter's default batches; the reader decodes
# one row group at a time, so that (not the run) bounds the memory of reading.
CHUNK = 50_000

_CHILD = """
import json, sys, time
from pathlib import Path
from rich.console import Console
from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.stages.load import load
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection

archive, uri, state, mode = sys.argv[1:5]
if mode == "bulk":
    from neptune_migration.targets.mlflow.bulk import MlflowBulkTarget as Target
else:
    from neptune_migration.targets.mlflow.loader import MlflowTarget as Target
target = Target(uri)
started = time.perf_counter()
with Ledger(Path(state)) as ledger:
    summary = load(Archive(Path(archive)), target, Selection(), ledger,
                   lambda n: Tracker("bench", n, Console(quiet=True), enabled=False), workers=1)
target.close()
assert not summary.failed, summary.failed
print(json.dumps({"points": summary.points, "seconds": time.perf_counter() - started}))
"""


def make_archive(root: Path, points: int) -> None:
    from datetime import UTC, datetime

    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.vocabulary import RunRef

    writer = ArchiveWriter(root)
    t0 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
    per_series = points // SERIES
    with writer.run(RunRef("bench/scale", f"RUN-{points}")) as w:
        w.add_atom("sys/creation_time", "datetime", datetime(2024, 1, 1, tzinfo=UTC))
        w.add_atom("params/lr", "float", 0.001)
        for s in range(SERIES):
            for start in range(0, per_series, CHUNK):
                steps = range(start, min(per_series, start + CHUNK))
                w.add_series(f"train/metric_{s}", "float_series", steps, [t0 + i for i in steps],
                             [((i * 7919 + s * 104729) % 1000) / 7.0 for i in steps])
        texts = max(1, points // 100)
        for start in range(0, texts, CHUNK):
            steps = range(start, min(texts, start + CHUNK))
            w.add_series("logs/stdout", "string_series", steps, [t0 + i for i in steps],
                         [f"line {i}: loss went down a little" for i in steps])


def measure(archive: Path, mode: str, tmp: Path) -> tuple[int, float, float]:
    store = tmp / f"store-{mode}-{archive.name}"
    shutil.rmtree(store, ignore_errors=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    cmd = [sys.executable, "-c", _CHILD, str(archive), uri, str(store / "state.db"), mode]
    store.mkdir(parents=True)
    returncode, out, peak = run_with_peak_rss(cmd)
    if returncode != 0:
        raise SystemExit(f"{mode} load of {archive.name} failed (exit {returncode})")
    figures = json.loads(out.strip().splitlines()[-1])
    shutil.rmtree(store, ignore_errors=True)
    return figures["points"], figures["seconds"], peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--modes", default="sqlite,bulk")
    parser.add_argument("--keep", type=Path, help="reuse/keep archives in this folder")
    args = parser.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    archives = {}
    for label, points in (("small", args.small), ("big", args.big)):
        archive = tmp / f"archive-{points}"
        if not archive.exists():
            started = time.perf_counter()
            make_archive(archive, points)
            print(f"archive {label}: {points:,} float points written in {time.perf_counter() - started:.1f} s")
        archives[label] = archive
    try:
        for mode in args.modes.split(","):
            peaks = {}
            for label, archive in archives.items():
                points, seconds, peak = measure(archive, mode, tmp)
                peaks[label] = peak
                print(f"{mode:6} {label:5}: {points:,} points in {seconds:.1f} s = {points / seconds:,.0f} points/s; "
                      f"peak RSS {peak:.0f} MB")
            print(f"{mode:6} peak RSS big/small: {peaks['big'] / peaks['small']:.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
