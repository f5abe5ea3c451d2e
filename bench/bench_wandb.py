"""Archive -> W&B offline throughput: our `.wandb` writer beside a `run.log`-once-per-step baseline.

    .venv/bin/python bench/bench_wandb.py [--runs 20] [--points 32000] [--metrics 8] [--baseline/--no-baseline]
    .venv/bin/python bench/bench_wandb.py --runs 1 --points 4000000 --no-baseline   # memory on one large run

Each phase runs in its own process; peak RSS is sampled for it and for its children (wandb-core).
Prints points/s, wall time and peak RSS per phase. Nothing leaves the machine (offline mode only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def make_archive(root: Path, runs: int, points: int, metrics: int) -> None:
    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.vocabulary import RunRef

    steps = points // metrics
    w = ArchiveWriter(root)
    for r in range(runs):
        with w.run(RunRef("bench/wandb", f"BEN-{r}")) as run:
            run.add_atom("sys/name", "string", "bench")
            run.add_atom("params/lr", "float", 0.001 * (r + 1))
            for m in range(metrics):
                run.add_series(f"train/m{m}", "float_series", list(range(steps)),
                               [1_700_000_000_000 + s * 10 for s in range(steps)],
                               [((s * 7919 + m) % 1000) / 997.0 for s in range(steps)])


def phase_ours(archive: Path, out: Path) -> dict[str, float]:
    from wandb.proto import wandb_internal_pb2  # noqa: F401 - imported before the clock starts, as in the baseline

    from neptune_migration.archive import Archive
    from neptune_migration.targets.base import LoadContext
    from neptune_migration.targets.wandb.loader import WandbOfflineTarget

    target = WandbOfflineTarget(out)
    t0 = time.perf_counter()
    points = 0
    for run in Archive(archive).scan().runs:
        points += target.load_run(run, LoadContext()).points
    return {"points": points, "seconds": time.perf_counter() - t0}


def phase_baseline(archive: Path, out: Path) -> dict[str, float]:
    """What a straightforward exporter does: wandb.init per run, one run.log per step with that step's values."""
    import wandb

    from neptune_migration.archive import Archive

    t0 = time.perf_counter()
    points = 0
    for run in Archive(archive).scan().runs:
        rows: dict[int, dict[str, float]] = {}
        for batch in run.batches(["float_series"], ["attribute_path", "step", "float_value"]):
            for path, step, value in zip(*(batch.column(c).to_pylist() for c in ("attribute_path", "step",
                                                                                  "float_value")), strict=True):
                rows.setdefault(int(step), {})[path] = value
        wb = wandb.init(mode="offline", dir=str(out), project="bench", id=f"base-{run.ref.run_id}",
                        config={"lr": run.atom_value("params/lr")})
        for step in sorted(rows):
            wb.log(rows[step], step=step)
            points += len(rows[step])
        wb.finish()
    return {"points": points, "seconds": time.perf_counter() - t0}


class _PeakRss:
    """Samples this process's RSS and its descendants' (wandb-core) every 20 ms.

    Not `getrusage(...).ru_maxrss`: on Linux it survives fork and exec, so a child started from a big parent
    reports the parent's size, whatever it used itself.
    """

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.self_peak = self.tree_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                own = self.proc.memory_info().rss
                kids = sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except psutil.Error:
                continue
            self.self_peak = max(self.self_peak, own)
            self.tree_peak = max(self.tree_peak, own + kids)
            time.sleep(0.02)

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self._thread.join()
        return self.self_peak / 2**20, self.tree_peak / 2**20


def _child(phase: str, archive: Path, out: Path) -> None:
    fn = phase_ours if phase == "ours" else phase_baseline
    peak = _PeakRss()
    res = fn(archive, out)
    own, tree = peak.stop()
    res.update(peak_rss_mb=own, peak_rss_with_children_mb=tree)
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--points", type=int, default=32_000, help="points per run")
    ap.add_argument("--metrics", type=int, default=8, help="float series per run")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--phase", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--archive", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        _child(args.phase, args.archive, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", HOME=str(base))
        for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
            (base / var.lower()).mkdir()
            env[var] = str(base / var.lower())
        t0 = time.perf_counter()
        make_archive(base / "archive", args.runs, args.points, args.metrics)
        print(f"archive: {args.runs} runs x {args.points} points ({args.metrics} series) "
              f"written in {time.perf_counter() - t0:.1f}s")
        for phase in ("ours", "baseline") if args.baseline else ("ours",):
            out = base / f"out-{phase}"
            out.mkdir()
            proc = subprocess.run([sys.executable, __file__, "--phase", phase, "--archive", str(base / "archive"),
                                   "--out", str(out)], env=env, capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            label = "neptune-migration .wandb writer" if phase == "ours" else "baseline run.log per step"
            print(f"{label:34s} {res['points'] / res['seconds']:>10,.0f} points/s  {res['seconds']:7.1f}s  "
                  f"peak RSS {res['peak_rss_mb']:.0f} MB (with wandb-core {res['peak_rss_with_children_mb']:.0f} MB)")
            print("RESULT " + json.dumps({"bench": "archive -> W&B offline", "case": label,
                                          "points_per_s": res["points"] / res["seconds"],
                                          "peak_rss_mb": res["peak_rss_with_children_mb"], "wall_s": res["seconds"]}))


if __name__ == "__main__":
    main()
