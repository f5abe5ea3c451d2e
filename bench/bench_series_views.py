"""What the MLflow target's views cost beside the exact artifact: the histogram picture and the string-series log.

Baseline: writing the exact JSON-lines artifact of the same series (what the loader does anyway). Each case runs
in a fresh child process so its peak RSS is its own.

    .venv/bin/python bench/bench_series_views.py [--steps 100 10000 100000] [--bins 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(kind: str, steps: int, bins: int, folder: Path) -> dict:
    import numpy as np

    from neptune_migration.targets.mlflow.views import render_histograms, write_log

    rng = np.random.default_rng(1)
    jsonl = folder / "series.jsonl"
    started = time.perf_counter()
    with open(jsonl, "w", encoding="utf-8") as fh:
        for step in range(steps):
            if kind == "log":
                value = f"step {step}: loss={rng.random():.5f}"
            else:
                counts = rng.integers(0, 100, bins).astype(float).tolist()
                value = {"type": "COUNTING", "edges": np.linspace(-1 + step / steps, 1 + step / steps,
                                                                  bins + 1).tolist(), "values": counts}
            fh.write(json.dumps({"step": step, "timestamp": "2025-01-01T00:00:00.000Z", "value": value}) + "\n")
    jsonl_s = time.perf_counter() - started
    started = time.perf_counter()
    if kind == "log":
        write_log(jsonl, folder / "series.log")
    else:
        render_histograms(jsonl, folder / "series.png", "bench")
    view_s = time.perf_counter() - started
    return {"jsonl_s": jsonl_s, "view_s": view_s, "jsonl_mb": jsonl.stat().st_size / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 10_000, 100_000])
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, steps, folder = args.child
        print(json.dumps(_child(kind, int(steps), args.bins, Path(folder))))
        return
    print(f"{'case':<28} {'steps':>8} {'JSONL MB':>9} {'baseline: JSONL s':>18} {'view s':>8} {'peak RSS MB':>12}")
    for kind in ("histogram picture", "string log"):
        for steps in args.steps:
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([sys.executable, __file__, "--bins", str(args.bins), "--child",
                                      "log" if kind == "string log" else "hist", str(steps), tmp],
                                     capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{kind:<28} {steps:>8} {r['jsonl_mb']:>9.1f} {r['jsonl_s']:>18.2f} {r['view_s']:>8.2f} "
                  f"{r['peak_rss_mb']:>12.0f}")
            print("RESULT " + json.dumps({"bench": "series views (MLflow)", "case": f"{kind}, {steps} steps",
                                          "wall_s": round(r["view_s"], 2), "peak_rss_mb": round(r["peak_rss_mb"]),
                                          "baseline_s": round(r["jsonl_s"], 2)}))


if __name__ == "__main__":
    main()
