"""Make Neptune data the honest way: the real clients writing in offline mode.

    python -m neptune_migration.sandbox.offline_writers scale OUT_DIR
    python -m neptune_migration.sandbox.offline_writers neptune1 OUT_DIR

Each writer runs in its own process (both libraries start background machinery and read env), writes under
``OUT_DIR/.neptune`` and leaves the source files it uploaded in ``OUT_DIR/sources`` (offline runs only
record absolute source paths). What they log is spelled out in the constants below so tests can check a
replay against it.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
from pathlib import Path

T0 = dt.datetime(2025, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
SCALE_PROJECT = "offline-ws/scale-proj"
SCALE_RUN = "scale-run-1"
SCALE_FORK = "scale-run-1-fork"
SCALE_EXPERIMENT = "offline-exp"
SCALE_CONFIGS = {
    "params/lr": 0.125,
    "params/batch": 32,
    "params/name": "ünïcode model",
    "params/on": True,
    "params/when": T0 + dt.timedelta(seconds=5),
}
SCALE_TAGS = {"offline", "scale"}
# (step, value); fractional steps and the IEEE special values on purpose
SCALE_LOSS = [(0.0, 1.0), (0.5, 0.75), (1.0, math.nan), (2.0, math.inf), (3.0, -math.inf), (4.0, 0.25)]
SCALE_PREVIEW = (5.0, 0.2, 0.5)  # (step, value, completion): a preview point after the final ones
SCALE_LOGS = [(1.0, "first line"), (2.0, "second ünïcode line")]
SCALE_HIST = (1.0, [0.0, 1.0, 2.0], [3, 4])
SCALE_FORK_STEP = 2.0
SCALE_FORK_LOSS = [(3.0, 0.5), (4.0, 0.4)]

N1_PROJECT = "offline-ws/n1-proj"
N1_ATOMS = {"params/lr": 0.01, "params/epochs": 7, "params/opt": "sgd", "params/flag": False}
N1_LOSS = [(0, 0.9), (1, 0.8), (2.5, 0.7)]
N1_LOGS = ["alpha", "beta"]


def _png() -> bytes:
    from neptune_migration.sandbox.seed import _png as png

    return png(4, 4, (200, 10, 10))


def write_scale(out: Path) -> None:
    from neptune_scale import Run
    from neptune_scale.types import Histogram

    sources = out / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    (sources / "config.yaml").write_text("lr: 0.125\n")
    (sources / "sample.png").write_bytes(_png())
    os.chdir(out)
    with Run(
        project=SCALE_PROJECT, run_id=SCALE_RUN, experiment_name=SCALE_EXPERIMENT, mode="offline", creation_time=T0
    ) as run:
        run.log_configs(SCALE_CONFIGS)
        run.add_tags(sorted(SCALE_TAGS))
        for i, (step, value) in enumerate(SCALE_LOSS):
            run.log_metrics({"train/loss": value}, step=step, timestamp=T0 + dt.timedelta(seconds=10 + i))
        step, value, completion = SCALE_PREVIEW
        run.log_metrics(
            {"train/loss": value},
            step=step,
            timestamp=T0 + dt.timedelta(seconds=30),
            preview=True,
            preview_completion=completion,
        )
        for i, (step, line) in enumerate(SCALE_LOGS):
            run.log_string_series({"train/logs": line}, step=step, timestamp=T0 + dt.timedelta(seconds=40 + i))
        step, edges, counts = SCALE_HIST
        run.log_histograms(
            {"train/hist": Histogram(bin_edges=edges, counts=counts)},
            step=step,
            timestamp=T0 + dt.timedelta(seconds=50),
        )
        run.assign_files({"files/config": str(sources / "config.yaml")})
        run.log_files({"images/sample": str(sources / "sample.png")}, step=1, timestamp=T0 + dt.timedelta(seconds=60))
    with Run(
        project=SCALE_PROJECT,
        run_id=SCALE_FORK,
        experiment_name=SCALE_EXPERIMENT + "-fork",
        mode="offline",
        creation_time=T0 + dt.timedelta(hours=1),
        fork_run_id=SCALE_RUN,
        fork_step=SCALE_FORK_STEP,
    ) as fork:
        for i, (step, value) in enumerate(SCALE_FORK_LOSS):
            fork.log_metrics({"train/loss": value}, step=step, timestamp=T0 + dt.timedelta(hours=1, seconds=i))


def write_neptune1(out: Path) -> None:
    import neptune
    from neptune.types import File

    sources = out / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    (sources / "weights.bin").write_bytes(bytes(range(256)))
    os.chdir(out)
    run = neptune.init_run(
        mode="offline",
        project=N1_PROJECT,
        name="n1 display name",
        tags=["offline", "n1"],
        capture_stdout=False,
        capture_stderr=False,
        capture_hardware_metrics=False,
        capture_traceback=False,
        git_ref=False,
        source_files=[],
    )
    for key, value in N1_ATOMS.items():
        run[key] = value
    run["params/started"] = T0
    run["params/set"].add(["x", "y"])
    for i, (step, value) in enumerate(N1_LOSS):
        run["train/loss"].append(value, step=step, timestamp=T0.timestamp() + i)
    for i, line in enumerate(N1_LOGS):
        run["train/logs"].append(line, step=i, timestamp=T0.timestamp() + 10 + i)
    run["files/weights"].upload(str(sources / "weights.bin"))
    run["files/inline"].upload(File.from_content("inline content", extension="txt"))
    run["images/sample"].append(File.from_content(_png(), extension="png"), step=0, timestamp=T0.timestamp() + 20)
    run.stop()


def write_in_subprocess(kind: str, out: Path, timeout: float = 180) -> None:
    """Run one writer in a fresh interpreter (the clients keep global state and background threads)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEPTUNE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "neptune_migration.sandbox.offline_writers", kind, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=out,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"offline writer {kind} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


if __name__ == "__main__":
    target = Path(sys.argv[2]).resolve()
    {"scale": write_scale, "neptune1": write_neptune1}[sys.argv[1]](target)
