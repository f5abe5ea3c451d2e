"""Validation beside the load it checks: archive -> MLflow over REST, then read everything back and compare.

    .venv/bin/python bench/bench_validate.py [--runs 20] [--points 32000] [--workers 4]

Same server and archive as bench_mlflow_load.py (gunicorn with 4 workers, SQLite, proxied artifacts; runs x points
across 4 series plus 2 files of 1 MB per run). Loads the archive with `pipeline.load`, then validates it with
`validation.validate` (every point, param, tag and file byte compared), and prints both times. The validation
must be faster than the load. Never part of the test run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import start_mlflow_server
from bench_mlflow_load import make_archive, peak_rss_mb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--points", type=int, default=32_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--server-workers", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

    from rich.console import Console

    from neptune_migration.archive import Archive
    from neptune_migration.ledger import Ledger
    from neptune_migration.progress import Tracker
    from neptune_migration.selection import Selection
    from neptune_migration.stages.load import load
    from neptune_migration.stages.validate import validate
    from neptune_migration.targets.mlflow.loader import MlflowTarget

    def quiet(n: int) -> Tracker:
        return Tracker("bench", n, Console(quiet=True), enabled=False)

    tmp = Path(tempfile.mkdtemp(prefix="bench-validate-"))
    proc, uri = start_mlflow_server(tmp / "server", args.server_workers)
    try:
        make_archive(tmp / "archive", args.runs, args.points)
        print(f"archive: {args.runs} runs x {args.points} points + 2 MB files each; server: gunicorn "
              f"{args.server_workers} workers, SQLite; --workers {args.workers}")
        prefix = f"bench-{time.time_ns()}-"
        with Ledger(tmp / "state.db") as ledger:
            target = MlflowTarget(uri, experiment_prefix=prefix, upload_workers=args.workers)
            started = time.perf_counter()
            loaded = load(Archive(tmp / "archive"), target, Selection(), ledger, quiet, workers=args.workers)
            load_secs = time.perf_counter() - started
            target.close()
            assert not loaded.failed, loaded.failed
            print(f"load:     {loaded.points:,} points, {loaded.bytes / 1e6:.0f} MB in {load_secs:.1f} s "
                  f"= {loaded.points / load_secs:,.0f} points/s")

            target = MlflowTarget(uri, experiment_prefix=prefix)
            started = time.perf_counter()
            checked = validate(Archive(tmp / "archive"), target, Selection(), ledger, quiet, workers=args.workers)
            val_secs = time.perf_counter() - started
            target.close()
        files = sum(c.checked.get("files", 0) for c in checked.checks)
        mismatches = sum(c.mismatch_count for c in checked.checks)
        print(f"validate: {checked.points:,} points, {files} files compared in {val_secs:.1f} s "
              f"= {checked.points / val_secs:,.0f} points/s; {mismatches} mismatches; peak RSS {peak_rss_mb():.0f} MB")
        print(f"validate/load time: {val_secs / load_secs:.2f} ({'faster' if val_secs < load_secs else 'SLOWER'} "
              "than the load)")
        if not checked.ok:
            raise SystemExit("validation found mismatches in a clean load")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
