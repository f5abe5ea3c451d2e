"""Extraction from a Neptune 3.x server (the sandbox) into an archive: points/s, files MB/s, peak RSS.

    .venv/bin/python bench/bench_neptune3_export.py [--runs 200] [--points 50000] [--series 10] [--file-mb 1]

The sandbox serves a generated project: `--runs` runs, each with `--series` float series splitting `--points`,
the generator's small files, and one `--file-mb` file. `neptune-migrate export` runs in a child process through
the real neptune-query client, so its peak RSS is measured alone. Never part of the test run.
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
from pathlib import Path

from _common import poll_peak_rss

# What a script on neptune-query's public API does: list the runs, then fetch each run's metrics into pandas,
# one run after another (no files, nothing written): the baseline for the export's points/s.
_BASELINE = """
import sys, time
import neptune_query.runs as nq
started = time.perf_counter()
points = 0
for run in nq.list_runs(project=sys.argv[1]):
    frame = nq.fetch_metrics(project=sys.argv[1], runs=[run], attributes=".*", lineage_to_the_root=False)
    points += int(frame.count().sum())
print(points, time.perf_counter() - started)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=50_000, help="points per run")
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--file-mb", type=float, default=1.0, help="size of one extra file per run")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    from neptune_migration.archive import Archive
    from neptune_migration.sandbox import FileValue, Sandbox, generate_project

    started = time.perf_counter()
    project = generate_project("bench", runs=args.runs, series=args.series, points=args.points // args.series,
                               files=args.files, nasty=False)
    payload = os.urandom(int(args.file_mb * 1e6))
    for run in project.runs:
        run.set("model/weights", FileValue(payload, "weights.bin"))
    print(f"seeded {args.runs} runs x {args.points:,} points in {time.perf_counter() - started:.1f} s")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        with Sandbox([project]) as sb:
            env = dict(os.environ, **sb.env())
            cmd = [str(Path(sys.executable).parent / "neptune-migrate"), "export", "--from", "neptune3",
                   "-p", "sandbox/bench", "--archive", str(tmp / "archive"), "--state", str(tmp / "state.db"),
                   "--workers", str(args.workers), "--no-progress"]
            started = time.perf_counter()
            child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
            child_rss = poll_peak_rss(child)
            seconds = time.perf_counter() - started
            if child.returncode != 0:
                raise SystemExit(f"export failed with exit code {child.returncode}")
            started = time.perf_counter()  # from the parent, start-up included, as for the export
            base = subprocess.Popen([sys.executable, "-c", _BASELINE, "sandbox/bench"], env=env,
                                    stdout=subprocess.PIPE, text=True)
            base_rss = poll_peak_rss(base)
            base_seconds = time.perf_counter() - started
            base_points = float(base.stdout.read().split()[0])
        runs = Archive(tmp / "archive").scan().runs
        points = sum(r.table(["float_series"], ["attribute_path"]).num_rows for r in runs)
        file_bytes = sum(p.stat().st_size for p in (tmp / "archive" / "files").rglob("*") if p.is_file())
        print(f"exported {len(runs)} runs, {points:,} points, {file_bytes / 1e6:.1f} MB of files in {seconds:.1f} s: "
              f"{points / seconds:,.0f} points/s, {file_bytes / 1e6 / seconds:.1f} MB/s; "
              f"peak RSS of the exporter {child_rss:.0f} MB")
        print(f"baseline (neptune-query fetch_metrics run by run, metrics only): {base_points:,.0f} points in "
              f"{base_seconds:.1f} s = {base_points / base_seconds:,.0f} points/s; peak RSS {base_rss:.0f} MB")
        print("RESULT " + json.dumps({"bench": "sandbox -> archive (Neptune 3.x)",
                                      "case": "baseline: fetch_metrics run by run (no files)",
                                      "points_per_s": base_points / base_seconds, "peak_rss_mb": base_rss,
                                      "wall_s": base_seconds}))
        print("RESULT " + json.dumps({"bench": "sandbox -> archive (Neptune 3.x)",
                                      "case": f"neptune-migrate export --workers {args.workers}",
                                      "points_per_s": points / seconds, "runs_per_s": len(runs) / seconds,
                                      "mb_per_s": file_bytes / 1e6 / seconds, "peak_rss_mb": child_rss,
                                      "wall_s": seconds}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
