"""`migrate --sync` after a project grew a little: its time beside the first migration's, and no point sent twice.

    .venv/bin/python bench/bench_sync.py [--runs 1000] [--points 10000] [--grown 10] [--growth 100]

The Neptune sandbox serves a project of `--runs` runs with one float series of `--points` points each (plus two
params) from this process; `neptune-migrate` runs as a child process through the real neptune-query client.
1. the first migration: `migrate --from neptune3 --to mlflow --mlflow-bulk` into a `sqlite:///` store (the
   fastest loader we have, so the ratio is the least flattering one), without validation;
2. `--grown` runs gain `--growth` points each while the sandbox keeps serving (`Sandbox.changes`);
3. `migrate --sync` (validating the changed runs), then a second `migrate --sync` with nothing changed.
It checks in MLflow's database that each grown run holds exactly points + growth rows, and in the ledger that the
sync sent exactly grown x growth points. Never part of the test run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neptune_migration.sandbox import Point, Project, Sandbox

BIN = Path(sys.executable).parent
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def build(runs: int, points: int) -> Project:
    project = Project("bench", "sync")
    base = int(T0.timestamp() * 1000)
    for n in range(runs):
        run = project.new_run(f"run-{n:05d}", experiment_name="bench", creation_time=T0 + dt.timedelta(seconds=n))
        run.set("params/lr", 0.001 * (n + 1))
        run.set("params/seed", n)
        run.extend("train/loss", "float_series", [Point(float(i), 1.0 / (i + 1), base + i) for i in range(points)])
        run.touch()
    return project


def migrate(env: dict[str, str], tmp: Path, *extra: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    cmd = [str(BIN / "neptune-migrate"), "migrate", "--from", "neptune3", "-p", "bench/sync", "--to", "mlflow",
           "--mlflow-tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--mlflow-bulk", "--archive",
           str(tmp / "archive"), "--state", str(tmp / "state.db"), "--report-dir", str(tmp / "report"),
           "--no-progress", "--workers", "4", *extra]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--grown", type=int, default=10)
    parser.add_argument("--growth", type=int, default=100)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    t0 = time.perf_counter()
    project = build(args.runs, args.points)
    print(f"built {args.runs} runs x {args.points:,} points in {time.perf_counter() - t0:.1f} s", flush=True)
    try:
        with Sandbox([project]) as sb:
            env = dict(os.environ, **sb.env(), COLUMNS="200")
            first, _ = migrate(env, tmp, "--no-validate")
            print(f"first migration: {first:.1f} s", flush=True)

            grown = [f"run-{n:05d}" for n in range(0, args.runs, max(1, args.runs // args.grown))][: args.grown]
            stamp = int(time.time() * 1000)
            for run_id in grown:
                sb.changes.append("bench/sync", run_id, "train/loss",
                                  [Point(float(args.points + i), 0.5, stamp + i) for i in range(args.growth)])
            mark = len(sb.request_log)
            synced, out = migrate(env, tmp, "--sync", "--log-file", str(tmp / "sync.log"))
            stages = [line.split("stage seconds: ", 1)[1] for line in (tmp / "sync.log").read_text().splitlines()
                      if "stage seconds: " in line]
            print(f"sync stage seconds (summed over each stage's workers): {stages[-1] if stages else '?'}")
            series_requests = len([r for r in sb.request_log[mark:] if "series" in r.path])
            print(f"sync after {len(grown)} runs grew by {args.growth}: {synced:.1f} s", flush=True)
            idle, _ = migrate(env, tmp, "--sync")
            print(f"sync with nothing changed: {idle:.1f} s", flush=True)

        with sqlite3.connect(tmp / "state.db") as db:
            rows = db.execute("SELECT run_id, details FROM progress WHERE stage='sync'").fetchall()
        sent = {run_id: json.loads(d)["points"] for run_id, d in rows}
        with sqlite3.connect(tmp / "mlflow.db") as db:
            held = dict(db.execute(
                "SELECT t.value, COUNT(*) FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
                "AND t.key = 'neptune.run_id' WHERE m.key = 'train/loss' GROUP BY t.value").fetchall())
        exact = all(held.get(r) == args.points + args.growth for r in grown)
        others = all(n == args.points for r, n in held.items() if r not in grown)
        twice = sum(sent.values()) - len(grown) * args.growth
        ratio = synced / first
        row = {"benchmark": "sandbox -> migrate --sync -> MLflow (bulk sqlite)",
               "case": f"{args.runs} runs x {args.points} points, {len(grown)} grew by {args.growth}",
               "first_s": round(first, 1), "sync_s": round(synced, 1), "idle_sync_s": round(idle, 1),
               "ratio": round(ratio, 4), "points_sent_by_sync": sum(sent.values()), "sent_twice": twice,
               "series_requests": series_requests, "exact": exact and others,
               "wall s": round(synced, 1)}
        print(f"\n| first migration | sync | sync / first | idle sync | points sent by the sync | sent twice | "
              f"series requests | every run exact |\n|---|---|---|---|---|---|---|---|\n"
              f"| {first:.1f} s | {synced:.1f} s | {ratio:.1%} | {idle:.1f} s | {sum(sent.values()):,} | {twice} | "
              f"{series_requests} | {exact and others} |")
        print("RESULT " + json.dumps(row))
        if not (exact and others) or twice:
            sys.exit("the sync did not leave every run exact")
        _ = out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
