"""`migrate` on local threads against `migrate --cluster` with 1, 2 and 4 Dask worker processes, when the source
answers slowly (a remote Neptune): what the engine adds when the work is latency-bound.

    PYTHONPATH=src:. .venv/bin/python bench/bench_cluster.py [--runs 32] [--delay 1.0] [--workers 1 2 4]

The Neptune sandbox serves a generated project from its own process with a `slow` fault on every request
(`--delay` seconds, the sandbox's fault table, docs/sandbox.md); an `mlflow server` (4 workers) is the target;
the ledger is a real PostgreSQL (tests/sqlstores.py starts one in a temporary folder). Each Dask worker process
has one thread, so the worker count is the concurrency. Every worker imports its client libraries before the
clock starts (a long-lived cluster has them loaded); the archive is a local folder every worker process can
read. Local threads run with `--workers` equal to the largest worker count. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import start_mlflow_server, stop_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


_SANDBOX = """
import json, sys, time
from neptune_migration.sandbox import Sandbox, generate_project
runs, series, points, delay = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sandbox = Sandbox([generate_project("bench", runs=runs, series=series, points=points, files=1, nasty=False)]).start()
sandbox.faults.add(r".", "slow", delay=delay)
print(json.dumps(sandbox.env("sandbox/bench")), flush=True)
while True:
    time.sleep(3600)
"""


def _warm() -> str:
    import mlflow  # noqa: F401
    import neptune_query  # noqa: F401
    import psycopg  # noqa: F401

    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=32)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the sandbox waits before each reply")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()

    import distributed

    import neptune_migration as nm
    from tests.sqlstores import PostgresServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    mlflow_proc, mlflow_uri = start_mlflow_server(tmp, workers=4)
    postgres = PostgresServer(_free_port())
    postgres.start()
    # Its own process: serving pages must not compete with the driver for this interpreter's lock.
    sandbox = subprocess.Popen([sys.executable, "-c", _SANDBOX, str(args.runs), str(args.series), str(args.points),
                                str(args.delay)], stdout=subprocess.PIPE, text=True)
    assert sandbox.stdout is not None
    os.environ.update(json.loads(sandbox.stdout.readline()))
    rows: list[dict[str, Any]] = []
    try:
        cases: list[int | None] = [None, *args.workers]  # None: local threads
        for n in cases:
            prefix = f"b{uuid.uuid4().hex[:6]}-"
            archive = tmp / f"archive-{prefix}"
            common = {"to": "mlflow", "mlflow_tracking_uri": mlflow_uri, "experiment_prefix": prefix,
                      "archive": archive, "report_dir": tmp / f"report-{prefix}", "project": ["sandbox/bench"]}
            if n is None:
                workers = max(args.workers)
                started = time.perf_counter()
                result = nm.migrate("neptune3", workers=workers, state=tmp / f"{prefix}.db", **common)
                wall = time.perf_counter() - started
                label = f"local threads, --workers {workers}"
            else:
                state = postgres.create_database(f"bench_{prefix.strip('-')}")
                with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                              dashboard_address=None, silence_logs=40) as cluster:
                    with distributed.Client(cluster) as client:
                        client.run(_warm)
                    started = time.perf_counter()
                    result = nm.migrate("neptune3", state=state, cluster=cluster.scheduler_address, **common)
                    wall = time.perf_counter() - started
                label = f"--cluster, {n} worker process(es) x 1 thread"
            assert result.ok, result.to_dict()
            runs = result.loaded.count("loaded")
            row = {"bench": "sandbox (slow replies) -> migrate -> MLflow", "case": label, "runs": runs,
                   "points": result.loaded.points, "wall_s": round(wall, 2), "runs_per_s": round(runs / wall, 2),
                   "points_per_s": round(result.loaded.points / wall)}
            rows.append(row)
            print("RESULT " + json.dumps(row), flush=True)
    finally:
        sandbox.kill()
        sandbox.wait()
        postgres.stop()
        stop_server(mlflow_proc)
        shutil.rmtree(tmp, ignore_errors=True)
    one = next((r for r in rows if r["case"].startswith("--cluster, 1 ")), None)
    print(f"\n{'case':45} {'runs/s':>8} {'points/s':>10} {'wall s':>8} {'vs 1 worker':>12}")
    for r in rows:
        # From the unrounded rates: runs/s is printed with two decimals, too coarse for a ratio near 0.1 runs/s.
        ratio = f"{(r['runs'] / r['wall_s']) / (one['runs'] / one['wall_s']):.2f}x" if one else ""
        print(f"{r['case']:45} {r['runs_per_s']:>8} {r['points_per_s']:>10,} {r['wall_s']:>8} {ratio:>12}")


def _free_port() -> int:
    from _common import free_port

    return free_port()


if __name__ == "__main__":
    main()
