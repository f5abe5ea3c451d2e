"""Extraction from a Neptune 3.x server (the sandbox) into an archive: points/s, files MB/s, peak RSS.

    .venv/bin/python bench/bench_neptune3_export.py [--runs 200] [--points 50000] [--series 10] [--files 2]

The sandbox serves a generated project (runs x series float series splitting `--points` per run, plus files of
256 KB each); `neptune-migrate export` runs in a child process through the real neptune-query client, so its peak
RSS is measured alone (the sandbox lives in this process). Never part of the test run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=50_000, help="points per run")
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    from neptune_migration.archive import Archive
    from neptune_migration.sandbox import Sandbox, generate_project

    started = time.perf_counter()
    project = generate_project("bench", runs=args.runs, series=args.series, points=args.points // args.series,
                               files=args.files, nasty=False)
    print(f"seeded {args.runs} runs x {args.points:,} points in {time.perf_counter() - started:.1f} s")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        with Sandbox([project]) as sb:
            env = dict(os.environ, **sb.env())
            cmd = [str(Path(sys.executable).parent / "neptune-migrate"), "export", "--from", "neptune3",
                   "-p", "sandbox/bench", "--archive", str(tmp / "archive"), "--state", str(tmp / "state.db"),
                   "--workers", str(args.workers), "--no-progress"]
            started = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        runs = Archive(tmp / "archive").scan().runs
        points = sum(r.table(["float_series"], ["attribute_path"]).num_rows for r in runs)
        file_bytes = sum(p.stat().st_size for p in (tmp / "archive" / "files").rglob("*") if p.is_file())
        print(f"exported {len(runs)} runs, {points:,} points, {file_bytes / 1e6:.1f} MB of files in {seconds:.1f} s: "
              f"{points / seconds:,.0f} points/s, {file_bytes / 1e6 / seconds:.1f} MB/s; "
              f"peak RSS of the exporter {child_rss:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
