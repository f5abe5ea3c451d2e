"""Sandbox start-up time: import, seed and listen, from a fresh interpreter, and the first client call.

    .venv/bin/python bench/bench_sandbox_startup.py [--seed demo] [--repeat 5]

Prints one line per figure; copy them into bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = r"""
import json, time, urllib.request
t0 = time.perf_counter()
from neptune_migration.sandbox.serve import projects_from_seed
from neptune_migration.sandbox import Sandbox
t1 = time.perf_counter()
projects = projects_from_seed(SEED)
t2 = time.perf_counter()
sb = Sandbox(projects).start()
t3 = time.perf_counter()
req = urllib.request.Request(sb.url + "/api/backend/v1/authorization/oauth-token",
                             headers={"X-Neptune-Api-Token": sb.api_token})
urllib.request.urlopen(req).read()
t4 = time.perf_counter()
sb.stop()
print(json.dumps({"import": t1 - t0, "seed": t2 - t1, "listen": t3 - t2, "first_reply": t4 - t3, "total": t4 - t0}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", default="demo")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    samples = []
    for _ in range(args.repeat):
        code = f"SEED = {args.seed!r}\n" + PROBE
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    for key in ("import", "seed", "listen", "first_reply", "total"):
        values = [s[key] for s in samples]
        print(f"sandbox start-up [{args.seed}] {key}: median {statistics.median(values):.3f} s, "
              f"max {max(values):.3f} s over {len(values)} runs")


if __name__ == "__main__":
    main()
