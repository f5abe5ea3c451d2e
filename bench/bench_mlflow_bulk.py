"""Archive -> MLflow `sqlite:///`: the bulk path beside MLflow's own store, same archive, same machine.

    .venv/bin/python bench/bench_mlflow_bulk.py [--runs 10] [--points 100000] [--modes bulk,sqlite]

Writes an archive (runs x points over 4 float series), then loads it into a fresh `sqlite:///` store per mode,
each in a child process whose peak RSS is polled with psutil:
  - sqlite: `MlflowTarget` on the database URL (MlflowClient.log_batch -> SqlAlchemyStore), the in-process path;
  - bulk:   `MlflowBulkTarget` (executemany into metrics + latest_metrics, verified per run).
Prints points/s for the whole load (runs, params, tags, metrics, verification). Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from _common import run_with_peak_rss

SERIES = 4

_CHILD = """
import json, sys, time
from pathlib import Path
from rich.console import Console
from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.stages.load import load
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection

archive, uri, state, mode, workers = sys.argv[1:6]
if mode == "bulk":
    from neptune_migration.targets.mlflow.bulk import MlflowBulkTarget as Target
else:
    from neptune_migration.targets.mlflow.loader import MlflowTarget as Target
target = Target(uri)
started = time.perf_counter()
with Ledger(Path(state)) as ledger:
    summary = load(Archive(Path(archive)), target, Selection(), ledger,
                   lambda n: Tracker("bench", n, Console(quiet=True), enabled=False), workers=int(workers))
target.close()
assert not summary.failed, summary.failed
print(json.dumps({"points": summary.points, "seconds": time.perf_counter() - started}))
"""


def make_archive(root: Path, runs: int, points: int, same_clock: bool = False) -> None:
    """`runs` runs of `points` points over SERIES float series, one point a millisecond. Each run starts when the
    one before ended, as a team's runs do; `same_clock` gives every run the same timestamps instead (the worst case
    for MLflow's `metrics` primary key, which starts with (key, timestamp): every run's rows land between every
    other run's)."""
    from datetime import UTC, datetime, timedelta

    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.vocabulary import RunRef

    writer = ArchiveWriter(root)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    ms0 = int(t0.timestamp() * 1000)
    steps = range(points // SERIES)
    for r in range(runs):
        start = 0 if same_clock else r * len(steps)
        with writer.run(RunRef("bench/bulk", f"RUN-{r}")) as w:
            w.add_atom("sys/creation_time", "datetime", t0 + timedelta(milliseconds=start))
            w.add_atom("params/lr", "float", 0.001 * (r + 1))
            for s in range(SERIES):
                w.add_series(f"train/metric_{s}", "float_series", steps, [ms0 + start + i for i in steps],
                             [float((i * 7919 + s * 104729 + r) % 1000) / 7.0 for i in steps])


def run_child(archive: Path, mode: str, workers: int, tmp: Path) -> tuple[int, float, float]:
    store = tmp / f"store-{mode}"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    cmd = [sys.executable, "-c", _CHILD, str(archive), f"sqlite:///{store / 'mlflow.db'}", str(store / "state.db"),
           mode, str(workers)]
    returncode, out, peak = run_with_peak_rss(cmd)
    if returncode != 0:
        raise SystemExit(f"{mode} load failed (exit {returncode})")
    figures = json.loads(out.strip().splitlines()[-1])
    shutil.rmtree(store, ignore_errors=True)
    return figures["points"], figures["seconds"], peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--modes", default="bulk,sqlite")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mlflow-bulk-"))
    try:
        make_archive(tmp / "archive", args.runs, args.points)
        print(f"archive: {args.runs} runs x {args.points:,} points ({SERIES} series); --workers {args.workers}")
        rates = {}
        for mode in args.modes.split(","):
            points, seconds, peak = run_child(tmp / "archive", mode, args.workers, tmp)
            rates[mode] = points / seconds
            print(f"{mode:6}: {points:,} points in {seconds:.1f} s = {rates[mode]:,.0f} points/s; "
                  f"peak RSS {peak:.0f} MB")
            case = {"bulk": "--mlflow-bulk (executemany into the tables)",
                    "sqlite": "in-process sqlite:/// (MLflow's own store)"}.get(mode, mode)
            print("RESULT " + json.dumps({"bench": "archive -> MLflow database", "case": case,
                                          "points_per_s": rates[mode], "peak_rss_mb": peak, "wall_s": seconds}))
        if "bulk" in rates and "sqlite" in rates:
            print(f"bulk / sqlite: {rates['bulk'] / rates['sqlite']:.1f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
