"""Archive -> MLflow on PostgreSQL: REST vs in-process vs `--mlflow-bulk`, then `validate` of the bulk load.

    .venv/bin/python bench/bench_mlflow_postgres.py [--runs 100] [--points 50000] [--sample-runs 10]
                                                    [--modes bulk,validate,rest,inproc] [--workers 2]
                                                    [--durable] [--same-clock]

Starts a PostgreSQL 15 server (tests/sqlstores.py: initdb in a temporary folder, loopback; `--durable` keeps
fsync and synchronous_commit on, as a production server has them), writes one archive (runs x points over 4
float series), and loads it, each mode in a child process whose peak RSS is polled with psutil:
  - bulk:     `MlflowBulkTarget` on `postgresql://` (binary COPY into metrics + latest_metrics, checked per run),
              the whole archive;
  - validate: `validate` of that bulk load (MlflowTarget in-process: batched read-back through MLflow's store);
  - rest:     `mlflow server --backend-store-uri postgresql://... --workers 4` under gunicorn, job runner off
              (shared/notes/mlflow.md), loaded over REST with `--workers` runs at once;
  - inproc:   `MlflowTarget` on the `postgresql://` URI (MLflow's SqlAlchemyStore in our process).
The two slow paths take the first `--sample-runs` runs of the same archive (the whole archive over REST would
take the better part of an hour here); their points/s are per point all the same. Runs start one after another
(their timestamps follow each other, as a team's runs do); `--same-clock` gives every run the same timestamps, the
worst case for `metrics`' primary key (key, timestamp, ...). Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import free_port, run_with_peak_rss, start_mlflow_server, stop_server  # noqa: E402
from bench_mlflow_bulk import SERIES, make_archive  # noqa: E402

_CHILD = """
import json, sys, time
from pathlib import Path
from rich.console import Console
from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.stages.validate import validate

archive, uri, state, mode, workers, limit = sys.argv[1:7]
if mode == "bulk":
    from neptune_migration.targets.mlflow.bulk import MlflowBulkTarget as Target
else:
    from neptune_migration.targets.mlflow.loader import MlflowTarget as Target
target = Target(uri)
target.check()
selection = Selection(limit=int(limit)) if int(limit) else Selection()
quiet = lambda n: Tracker("bench", n, Console(quiet=True), enabled=False)
started = time.perf_counter()
with Ledger(Path(state)) as ledger:
    if mode == "validate":
        summary = validate(Archive(Path(archive)), target, selection, ledger, quiet, workers=int(workers))
        assert summary.ok, [m.detail for c in summary.checks for m in c.mismatches][:5]
        points = sum(c.checked.get("points", 0) for c in summary.checks)
    else:
        summary = load(Archive(Path(archive)), target, selection, ledger, quiet, workers=int(workers))
        assert not summary.failed, [o.error for o in summary.failed][:3]
        points = summary.points
target.close()
print(json.dumps({"points": points, "seconds": time.perf_counter() - started}))
"""


def start_rest_server(root: Path, backend_uri: str, workers: int) -> tuple[subprocess.Popen, str]:
    return start_mlflow_server(root, workers, backend_uri, ("--gunicorn-opts", "--timeout 300"))


def run_child(archive: Path, uri: str, state: Path, mode: str, workers: int, limit: int) -> tuple[int, float, float]:
    cmd = [sys.executable, "-c", _CHILD, str(archive), uri, str(state), mode, str(workers), str(limit)]
    returncode, out, peak = run_with_peak_rss(cmd)
    if returncode != 0:
        raise SystemExit(f"{mode} failed (exit {returncode})")
    figures = json.loads(out.strip().splitlines()[-1])
    return figures["points"], figures["seconds"], peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--sample-runs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rest-workers", type=int, default=4, help="client --workers over REST")
    parser.add_argument("--modes", default="bulk,validate,rest,inproc")
    parser.add_argument("--durable", action="store_true", help="PostgreSQL with fsync and synchronous_commit on")
    parser.add_argument("--same-clock", action="store_true",
                        help="every run with the same timestamps (the worst case for the metrics primary key)")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONPATH", str(HERE.parent / "src"))
    from tests.sqlstores import PostgresServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-mlflow-pg-"))
    server = PostgresServer(free_port(), durable=args.durable)
    server.start()
    rest = None
    try:
        make_archive(tmp / "archive", args.runs, args.points, same_clock=args.same_clock)
        print(f"archive: {args.runs} runs x {args.points:,} points ({SERIES} series) = {args.runs * args.points:,}; "
              f"{'same timestamps in every run' if args.same_clock else 'runs one after another'}; "
              f"--workers {args.workers}; PostgreSQL 15 {'durable' if args.durable else 'fsync off'}; "
              f"load average before: {os.getloadavg()[0]:.1f}")
        rates: dict[str, float] = {}
        for mode in args.modes.split(","):
            if mode == "validate":
                uri, limit, workers = server.uri("bulk"), 0, args.workers
            elif mode == "bulk":
                uri, limit, workers = server.create_database("bulk"), 0, args.workers
            elif mode == "inproc":
                uri, limit, workers = server.create_database("inproc"), args.sample_runs, args.workers
            elif mode == "rest":
                rest, uri = start_rest_server(tmp / "rest", server.create_database("rest"), 4)
                limit, workers = args.sample_runs, args.rest_workers
            else:
                raise SystemExit(f"unknown mode {mode}")
            state = tmp / f"state-{'bulk' if mode == 'validate' else mode}.db"  # validate reads the bulk ledger
            points, seconds, peak = run_child(tmp / "archive", uri, state, mode, workers, limit)
            if rest is not None:
                stop_server(rest)
                rest = None
            rates[mode] = points / seconds
            print(f"{mode:8}: {points:,} points in {seconds:.1f} s = {rates[mode]:,.0f} points/s; peak RSS "
                  f"{peak:.0f} MB; load average {os.getloadavg()[0]:.1f}")
            print("RESULT " + json.dumps({"bench": "archive -> MLflow on PostgreSQL", "case": mode,
                                          "points_per_s": rates[mode], "peak_rss_mb": peak, "wall_s": seconds}))
        if "bulk" in rates:
            for other in ("rest", "inproc", "validate"):
                if other in rates:
                    print(f"bulk / {other}: {rates['bulk'] / rates[other]:.2f}x")
    finally:
        if rest is not None:
            stop_server(rest)
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
