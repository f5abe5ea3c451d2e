"""A project of many small runs through the pipelined `migrate`: how much of the wall time is overhead.

    .venv/bin/python bench/bench_many_runs.py [--runs 10000] [--to wandb-offline|mlflow] [--workers 4]

The Neptune sandbox serves a generated project (`--runs` runs, each with a few parameters and `--series`
metrics of `--points` points) from its own process, so it does not share this process's interpreter lock.
`migrate` (export -> load -> validate) runs here, in-process, so the pipeline's stage clock can be read:
listing, ledger and coordinator time (everything that is not moving data) are printed as a share of the wall
time. `--baseline` first runs the same three stages one after the other (export all, load all, validate all).
`--to mlflow` loads into a local `sqlite:///` store in-process (no server), `--to wandb-offline` into
sync-ready folders. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import start_sandbox


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--series", type=int, default=2)
    parser.add_argument("--points", type=int, default=20, help="points per series")
    parser.add_argument("--to", choices=("wandb-offline", "mlflow"), default="wandb-offline")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--no-validate", action="store_true")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the stages one after the other (export all, load all, validate all)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-many-"))
    t0 = time.perf_counter()
    sandbox, env = start_sandbox(f"generate:runs={args.runs},series={args.series},points={args.points},files=0")
    print(f"sandbox seeded with {args.runs:,} runs in {time.perf_counter() - t0:.1f} s")
    os.environ.update(env)  # before neptune-query is first imported: it reads its environment then
    try:
        from rich.console import Console

        from neptune_migration.archive import ArchiveWriter
        from neptune_migration.ledger import Ledger
        from neptune_migration.progress import Tracker
        from neptune_migration.selection import Selection
        from neptune_migration.sources.neptune3.source import Neptune3Source
        from neptune_migration.stages.migrate import Workers, run_pipeline

        selection = Selection()

        def target_at(folder: Path):
            if args.to == "mlflow":
                from neptune_migration.targets.mlflow.loader import MlflowTarget

                return MlflowTarget(f"sqlite:///{folder / 'mlflow.db'}", upload_workers=2)
            from neptune_migration.targets.wandb.loader import WandbOfflineTarget

            return WandbOfflineTarget(folder / "wandb", project="bench")

        quiet = Console(stderr=True)
        tracker = lambda n: Tracker("migrate", n, quiet, enabled=False)  # noqa: E731
        workers = Workers(args.workers, args.workers, args.workers)
        rows = []
        if args.baseline:
            from neptune_migration.archive import Archive
            from neptune_migration.stages.export import export
            from neptune_migration.stages.load import load
            from neptune_migration.stages.validate import validate

            folder = tmp / "baseline"
            folder.mkdir()
            target = target_at(folder)
            with Ledger(folder / "state.db") as ledger:
                started = time.perf_counter()
                export(Neptune3Source(["sandbox/generated"], selection, env["NEPTUNE_API_TOKEN"]),
                       ArchiveWriter(folder / "archive"), ledger, tracker, args.workers)
                load(Archive(folder / "archive"), target, selection, ledger, tracker, args.workers)
                if not args.no_validate:
                    validate(Archive(folder / "archive"), target, selection, ledger, tracker, args.workers)
                wall = time.perf_counter() - started
            target.close()
            print(f"baseline (export all, then load all, then validate all): {wall:.1f} s wall, "
                  f"{args.runs / wall:.1f} runs/s")
            rows.append({"bench": "sandbox -> migrate -> " + args.to, "case": f"{args.runs:,} runs, stage after stage",
                         "runs_per_s": args.runs / wall, "wall_s": wall})

        folder = tmp / "pipelined"
        folder.mkdir()
        target = target_at(folder)
        source = Neptune3Source(["sandbox/generated"], selection, env["NEPTUNE_API_TOKEN"])
        with Ledger(folder / "state.db") as ledger:
            started = time.perf_counter()
            result = run_pipeline(source, ArchiveWriter(folder / "archive"), target, selection, ledger, tracker,
                                  workers, validate=not args.no_validate)
            wall = time.perf_counter() - started
        target.close()
        clock = result.clock
        failed = len(result.exported.failed) + len(result.loaded.failed)
        bad = 0 if result.validated is None else sum(1 for c in result.validated.checks if c.status != "validated")
        print(f"{args.runs:,} runs -> {args.to}: {wall:.1f} s wall, {args.runs / wall:.1f} runs/s, "
              f"{result.loaded.points:,} points, failed {failed}, not validated {bad}")
        print(f"stage seconds (summed over workers): export {clock.export:.1f}, load {clock.load:.1f}, "
              f"validate {clock.validate:.1f}")
        share = 100 * clock.overhead / wall
        print(f"overhead: listing {clock.listing:.2f} s, ledger {clock.ledger:.2f} s CPU, coordinator "
              f"{clock.coordinator:.2f} s = {clock.overhead:.2f} s = {share:.1f}% of the wall time "
              f"(ledger held {clock.ledger_held:.2f} s of wall, mostly waiting for the interpreter lock)")
        rows.append({"bench": "sandbox -> migrate -> " + args.to,
                     "case": f"{args.runs:,} runs, pipelined (overhead {share:.1f}%)",
                     "runs_per_s": args.runs / wall, "points_per_s": result.loaded.points / wall, "wall_s": wall})
        for row in rows:
            print("RESULT " + json.dumps(row))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
