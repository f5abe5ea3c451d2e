"""Archive -> MLflow over REST: our loader beside a sequential baseline, on one local tracking server.

    .venv/bin/python bench/bench_mlflow_load.py [--runs 20] [--points 32000] [--workers 4]

Starts `mlflow server` (gunicorn, 4 workers, job runner off, SQLite, proxied artifacts) as
shared/notes/mlflow.md advises, generates an archive (runs x points across 4 series, plus 2 files of 1 MB per
run), then loads it twice into fresh experiments:
  - baseline: one run at a time, one `MlflowClient.log_batch` call per series (the client splits it into
    1000-metric requests), in the same run;
  - ceiling: the same points as raw log-batch requests (JSON built before the clock starts, 1000 metrics per
    request, --workers threads each with its own connection): what the server takes when the client does
    nothing else. Files are not part of it, so this case and the next run with `--files 0` to compare.
  - ours: `neptune_migration.stages.load.load` with --workers.
Prints points/s, MB/s and peak RSS of this process for each, and ours / ceiling. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests
from _common import start_mlflow_server, stop_server

SERIES = 4


def make_archive(root: Path, runs: int, points: int, files: int = 2) -> None:
    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.vocabulary import RunRef

    writer = ArchiveWriter(root)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    per_series = points // SERIES
    steps = list(range(per_series))
    stamps = [t0 + timedelta(milliseconds=i) for i in steps]
    for r in range(runs):
        with writer.run(RunRef("bench/mlflow", f"RUN-{r}")) as w:
            w.add_atom("sys/creation_time", "datetime", t0)
            w.add_atom("params/lr", "float", 0.001 * (r + 1))
            for s in range(SERIES):
                w.add_series(f"train/metric_{s}", "float_series", steps, stamps,
                             [float((i * 7919 + s * 104729 + r) % 1000) / 7.0 for i in steps])
            for f in range(files):
                w.add_file(f"files/f{f}", "file", os.urandom(1_000_000), f"blob{f}.bin")


def baseline(archive: Path, uri: str) -> tuple[int, float]:
    """What a straightforward loader does: sequential runs, one log_batch per series."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from neptune_migration.archive import Archive

    client = MlflowClient(uri)
    exp = client.create_experiment(f"baseline-{time.time_ns()}")
    points = 0
    started = time.perf_counter()
    for run in Archive(archive).scan().runs:
        mlflow_run = client.create_run(exp, run_name=run.ref.run_id)
        table = run.table(["float_series"], ["attribute_path", "step", "timestamp", "float_value"])
        by_series: dict[str, list[Metric]] = {}
        for row in table.to_pylist():
            by_series.setdefault(row["attribute_path"], []).append(
                Metric(row["attribute_path"], row["float_value"], int(row["timestamp"].timestamp() * 1000),
                       int(row["step"])))
        for metrics in by_series.values():
            client.log_batch(mlflow_run.info.run_id, metrics=metrics)
            points += len(metrics)
        for row in run.table(["file"], ["file_value"]).to_pylist():
            client.log_artifact(mlflow_run.info.run_id, str(run.file_path(row["file_value"]["path"])), "files")
        client.set_terminated(mlflow_run.info.run_id)
    return points, time.perf_counter() - started


def ceiling(archive: Path, uri: str, workers: int) -> tuple[int, float]:
    """Raw parallel log-batch requests of pre-built JSON: the most the server takes from this client."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import local

    from neptune_migration.archive import Archive

    session = requests.Session()
    exp = session.post(f"{uri}/api/2.0/mlflow/experiments/create",
                       json={"name": f"ceiling-{time.time_ns()}"}).json()["experiment_id"]
    bodies: list[bytes] = []
    points = 0
    for run in Archive(archive).scan().runs:
        run_id = session.post(f"{uri}/api/2.0/mlflow/runs/create",
                              json={"experiment_id": exp, "run_name": run.ref.run_id}).json()["run"]["info"]["run_id"]
        table = run.table(["float_series"], ["attribute_path", "step", "timestamp", "float_value"]).to_pylist()
        for i in range(0, len(table), 1000):
            metrics = [{"key": r["attribute_path"], "value": r["float_value"], "step": int(r["step"]),
                        "timestamp": int(r["timestamp"].timestamp() * 1000)} for r in table[i:i + 1000]]
            bodies.append(json.dumps({"run_id": run_id, "metrics": metrics}).encode())
            points += len(metrics)
    sessions = local()

    def post(body: bytes) -> None:
        if not hasattr(sessions, "s"):
            sessions.s = requests.Session()
        response = sessions.s.post(f"{uri}/api/2.0/mlflow/runs/log-batch", data=body,
                                   headers={"Content-Type": "application/json"})
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, bodies))
    return points, time.perf_counter() - started


def ours(archive: Path, uri: str, workers: int, state: Path) -> tuple[int, int, float]:
    from rich.console import Console

    from neptune_migration.archive import Archive
    from neptune_migration.ledger import Ledger
    from neptune_migration.progress import Tracker
    from neptune_migration.selection import Selection
    from neptune_migration.stages.load import load
    from neptune_migration.targets.mlflow.loader import MlflowTarget

    target = MlflowTarget(uri, experiment_prefix=f"ours-{time.time_ns()}-", upload_workers=workers)
    started = time.perf_counter()
    with Ledger(state) as ledger:
        summary = load(Archive(archive), target, Selection(), ledger,
                       lambda n: Tracker("bench", n, Console(quiet=True), enabled=False), workers=workers)
    target.close()
    assert not summary.failed, summary.failed
    return summary.points, summary.bytes, time.perf_counter() - started


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--points", type=int, default=32_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--server-workers", type=int, default=4)
    parser.add_argument("--files", type=int, default=2, help="1 MB files per run (0 to compare with the ceiling)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    tmp = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    proc, uri = start_mlflow_server(tmp / "server", args.server_workers)
    try:
        make_archive(tmp / "archive", args.runs, args.points, args.files)
        print(f"archive: {args.runs} runs x {args.points} points + {args.files} MB files each; server: gunicorn "
              f"{args.server_workers} workers, SQLite")
        results = []
        if not args.skip_baseline:
            b_points, b_secs = baseline(tmp / "archive", uri)
            print(f"baseline (sequential, log_batch per series): {b_points:,} points in {b_secs:.1f} s = "
                  f"{b_points / b_secs:,.0f} points/s; peak RSS so far {peak_rss_mb():.0f} MB")
            results.append({"bench": "archive -> MLflow REST", "case": "baseline: sequential log_batch",
                            "points_per_s": b_points / b_secs, "wall_s": b_secs})
        c_points, c_secs = ceiling(tmp / "archive", uri, args.workers)
        print(f"ceiling (raw log-batch, {args.workers} threads, JSON pre-built): {c_points:,} points in "
              f"{c_secs:.1f} s = {c_points / c_secs:,.0f} points/s")
        results.append({"bench": "archive -> MLflow REST", "case": f"ceiling: raw log-batch x{args.workers}",
                        "points_per_s": c_points / c_secs, "wall_s": c_secs})
        o_points, o_bytes, o_secs = ours(tmp / "archive", uri, args.workers, tmp / "state.db")
        print(f"neptune-migrate (--workers {args.workers}): {o_points:,} points in {o_secs:.1f} s = "
              f"{o_points / o_secs:,.0f} points/s, {o_bytes / 1e6 / o_secs:.1f} MB/s of files; "
              f"peak RSS {peak_rss_mb():.0f} MB")
        results.append({"bench": "archive -> MLflow REST", "case": f"neptune-migrate load --workers {args.workers}",
                        "points_per_s": o_points / o_secs, "mb_per_s": o_bytes / 1e6 / o_secs,
                        "peak_rss_mb": peak_rss_mb(), "wall_s": o_secs})
        if not args.skip_baseline:
            print(f"speed-up over the baseline: {b_secs / o_secs:.2f}x")
        print(f"ours / ceiling: {(o_points / o_secs) / (c_points / c_secs):.2f}")
        for row in results:
            print("RESULT " + json.dumps(row))
    finally:
        stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
