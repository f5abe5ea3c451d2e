"""The whole benchmark suite at one size, each case beside its baseline, as one table.

    .venv/bin/python bench/run_all.py [--size small|medium|large] [--out bench/results.md]

Runs every benchmark script in its own process, one after the other (they would skew each other in
parallel), collects the `RESULT {...}` lines each prints, and writes a Markdown table of points/s, runs/s,
MB/s, peak RSS and wall time. Sizes: `small` takes a few minutes and checks the suite works; `medium` is
what bench/README.md records; `large` is for a quiet machine and an hour.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent

SIZES: dict[str, list[list[str]]] = {
    "small": [
        ["bench_mlflow_load.py", "--runs", "4", "--points", "8000", "--files", "0"],
        ["bench_mlflow_bulk.py", "--runs", "4", "--points", "20000"],
        ["bench_wandb.py", "--runs", "4", "--points", "8000"],
        ["bench_neptune3_export.py", "--runs", "10", "--points", "5000", "--file-mb", "1"],
        ["bench_many_runs.py", "--runs", "300", "--baseline"],
    ],
    "medium": [
        ["bench_mlflow_load.py", "--runs", "20", "--points", "32000", "--files", "0"],
        ["bench_mlflow_bulk.py", "--runs", "10", "--points", "100000"],
        ["bench_wandb.py", "--runs", "20", "--points", "32000"],
        ["bench_neptune3_export.py", "--runs", "100", "--points", "20000", "--file-mb", "1"],
        ["bench_many_runs.py", "--runs", "2000", "--baseline"],
    ],
    "large": [
        ["bench_mlflow_load.py", "--runs", "40", "--points", "100000", "--files", "0"],
        ["bench_mlflow_bulk.py", "--runs", "10", "--points", "1000000"],
        ["bench_wandb.py", "--runs", "40", "--points", "100000"],
        ["bench_neptune3_export.py", "--runs", "200", "--points", "50000", "--file-mb", "4"],
        ["bench_many_runs.py", "--runs", "10000", "--baseline"],
    ],
}

COLUMNS = [("points_per_s", "points/s", "{:,.0f}"), ("runs_per_s", "runs/s", "{:,.1f}"),
           ("mb_per_s", "MB/s", "{:,.1f}"), ("peak_rss_mb", "peak RSS MB", "{:,.0f}"), ("wall_s", "wall s", "{:,.1f}")]


def run(script: list[str]) -> list[dict]:
    cmd = [sys.executable, str(HERE / script[0]), *script[1:]]
    print("$ " + " ".join(["python", f"bench/{script[0]}", *script[1:]]), flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if not line.startswith("RESULT "):
            print("  " + line)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        failed = f"FAILED (exit {proc.returncode})"
        return [{"bench": script[0], "case": failed, "wall_s": time.perf_counter() - started}]
    return [json.loads(line[len("RESULT "):]) | {"command": " ".join(script)}
            for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def table(rows: list[dict]) -> str:
    head = "| benchmark | case | " + " | ".join(label for _, label, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (2 + len(COLUMNS))]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "" for key, _, fmt in COLUMNS]
        lines.append(f"| {row['bench']} | {row['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--out", type=Path, help="also write the table (and the commands) to this Markdown file")
    args = parser.parse_args()
    rows: list[dict] = []
    for script in SIZES[args.size]:
        rows += run(script)
    text = table(rows)
    print()
    print(text)
    if args.out:
        commands = "\n".join(f"    python bench/{' '.join(s)}" for s in SIZES[args.size])
        args.out.write_text(f"# Benchmarks, size {args.size}, {date.today()}\n\n"
                            f"`python bench/run_all.py --size {args.size}` ran:\n\n{commands}\n\n{text}\n")
    if any(r["case"].startswith("FAILED") for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
