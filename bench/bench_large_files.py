"""Large files stream: one big file attribute, sandbox Neptune 3.x -> archive -> MLflow (REST) and W&B offline.

    .venv/bin/python bench/bench_large_files.py [--size-mb 2048] [--small-mb 10] [--stages export,mlflow,wandb-offline]

The big file and a small baseline file (same run shape, same process, same run of the benchmark) are written to
disk once and served by the sandbox straight from disk (`FileValue(source=...)`, streamed replies), so the
sandbox never holds them either. Each stage is the real CLI in a child process:
  - export:        `neptune-migrate export --from neptune3` (neptune-query download -> temp file -> archive);
  - mlflow:        `neptune-migrate load --to mlflow` into a real `mlflow server` with proxied artifacts;
  - wandb-offline: `neptune-migrate load --to wandb-offline` (sync-ready run folder with the file as an artifact);
  - wandb-online:  `neptune-migrate load --to wandb` against the W&B stand-in server of tests/wandb (it keeps
                   uploads in memory, in this process); the RSS is of the whole tree: our process, `wandb sync`
                   and its wandb-core, since those move the bytes. Not in the default stages.
The parent polls the child's RSS with psutil every 20 ms (ru_maxrss of children would carry the parent's pages
across fork), and also its own RSS growth during export (the sandbox serving) and the MLflow server's process
tree during its load. Every copy at the end of the chain is hashed and compared with the source (sha256).
Prints one table; never part of the test run. Needs about 4x --size-mb of free disk.

    .venv/bin/python bench/bench_large_files.py --neptune2-files 16 [--small-mb 8] [--latency 0.2]

instead measures the 2.x source's concurrent downloads: one run with 16 file attributes of --small-mb each, the
sandbox answering every download after --latency seconds (a remote server's round trip), exported through
`Neptune2Source(download_workers=1)` and `(download_workers=4)` in child processes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from _common import start_mlflow_server

BIN = Path(sys.executable).parent
FILE_NAME = "weights.bin"
ATTRIBUTE = "model/weights"


def write_pattern_file(path: Path, size: int) -> str:
    """A file of `size` bytes (4 MB of random bytes repeated, each block stamped with its index); its sha256."""
    block = bytearray(os.urandom(4 << 20))
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        written = 0
        n = 0
        while written < size:
            block[:8] = n.to_bytes(8, "little")
            chunk = block[: min(len(block), size - written)]
            fh.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            n += 1
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_project(name: str, payload: Path, in_memory: bool = False):
    from datetime import UTC, datetime

    from neptune_migration.sandbox import FileValue, Project

    project = Project("sandbox", name, key=name.upper().replace("-", "")[:5])
    run = project.new_run("run-0", experiment_name="large-files", creation_time=datetime(2024, 1, 1, tzinfo=UTC))
    run.set("params/lr", 0.001)
    if in_memory:  # how the sandbox held payloads before it could stream them from disk
        run.set(ATTRIBUTE, FileValue(payload.read_bytes(), FILE_NAME, "application/octet-stream"))
    else:
        run.set(ATTRIBUTE, FileValue(b"", FILE_NAME, "application/octet-stream", source=payload))
    run.touch()
    return project


class Peak:
    """Peak RSS (bytes) of a set of processes, polled from a thread until `stop()`."""

    def __init__(self, pids: list[int], tree: bool = False, interval: float = 0.02) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.tree = tree
        self.interval = interval
        self.peak = 0
        self.first = self._sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        total = 0
        procs = list(self.procs)
        if self.tree:
            for p in self.procs:
                with contextlib.suppress(psutil.Error):
                    procs += p.children(recursive=True)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@dataclass
class Row:
    stage: str
    label: str
    mb: float
    seconds: float
    peak_mb: float
    extra: str = ""

    @property
    def rate(self) -> float:
        return self.mb / self.seconds if self.seconds else 0.0


def run_child(cmd: list[str], env: dict[str, str], watch_self: bool = False, watch_tree: int | None = None,
              child_tree: bool = False) -> tuple[float, float, float, float]:
    """(seconds, child peak RSS MB, parent (sandbox) peak RSS MB, watched tree peak MB)."""
    me = Peak([os.getpid()]) if watch_self else None
    other = Peak([watch_tree], tree=True) if watch_tree else None
    started = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watched = Peak([child.pid], tree=child_tree, interval=0.02)
    _, err = child.communicate()
    seconds = time.perf_counter() - started
    peak = watched.stop()
    parent = me.stop() if me else 0
    tree = other.stop() if other else 0
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({child.returncode}): {err.decode()[-2000:]}")
    return seconds, peak / 2**20, parent / 2**20, tree / 2**20


def start_standin():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "wandb"))
    from standin import StandIn

    return StandIn().start()


_NEPTUNE2_CHILD = """
import json, os, sys, time
from pathlib import Path
from neptune_migration.archive import ArchiveWriter
from neptune_migration.selection import Selection
from neptune_migration.sources.neptune2.source import Neptune2Source
project, archive, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
source = Neptune2Source([project], Selection(), os.environ["NEPTUNE_API_TOKEN"], download_workers=workers)
(run,) = source.list_runs(project)
started = time.perf_counter()
stats = source.export_run(run, ArchiveWriter(Path(archive)))
print(json.dumps({"seconds": time.perf_counter() - started, "files": stats.files, "bytes": stats.bytes}))
"""


def neptune2_downloads(files: int, mb: float, latency: float) -> None:
    import json
    from datetime import UTC, datetime

    from neptune_migration.sandbox import FileValue, Project, Sandbox

    tmp = Path(tempfile.mkdtemp(prefix="bench-neptune2-files-"))
    try:
        size = int(mb * 2**20)
        write_pattern_file(tmp / "payload.bin", size)
        project = Project("sandbox", "n2files", key="NTWO")
        run = project.new_run("run-0", creation_time=datetime(2024, 1, 1, tzinfo=UTC))
        for i in range(files):
            run.set(f"files/f{i:02d}", FileValue(b"", f"f{i:02d}.bin", source=tmp / "payload.bin"))
        run.touch()
        with Sandbox([project]) as sb:
            sb.faults.add(r"/attributes/download$", "slow", delay=latency)
            env = dict(os.environ, **sb.env())
            print("| download_workers | files | wall time | MB/s | peak RSS |")
            print("|---|---|---|---|---|")
            for workers in (1, 4):
                archive = tmp / f"archive-{workers}"
                cmd = [sys.executable, "-c", _NEPTUNE2_CHILD, "sandbox/n2files", str(archive), str(workers)]
                child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                watched = Peak([child.pid])
                out, err = child.communicate()
                peak = watched.stop()
                if child.returncode != 0:
                    raise SystemExit(err.decode()[-2000:])
                got = json.loads(out.decode().strip().splitlines()[-1])
                assert got["files"] == files, got
                print(f"| {workers} | {files} x {mb:g} MiB | {got['seconds']:.1f} s | "
                      f"{got['bytes'] / 2**20 / got['seconds']:.1f} | {peak / 2**20:.0f} MB |")
                shutil.rmtree(archive, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find_copy(root: Path, size: int) -> Path:
    found = [p for p in root.rglob(FILE_NAME) if p.is_file() and p.stat().st_size == size]
    if len(found) != 1:
        raise SystemExit(f"expected one {FILE_NAME} of {size} bytes under {root}, found {found}")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=float, default=2048, help="the large file (MiB)")
    parser.add_argument("--small-mb", type=float, default=10, help="the baseline file (MiB)")
    parser.add_argument("--stages", default="export,mlflow,wandb-offline", help="also: wandb-online")
    parser.add_argument("--workdir", type=Path, help="where to put the files (default: a temp folder)")
    parser.add_argument("--no-verify", action="store_true", help="skip hashing the copies")
    parser.add_argument("--in-memory-payload", action="store_true",
                        help="seed the sandbox with bytes objects (the only way before FileValue.source existed)")
    parser.add_argument("--neptune2-files", type=int, default=0, help="measure the 2.x source's downloads instead")
    parser.add_argument("--latency", type=float, default=0.2, help="with --neptune2-files: seconds per download")
    args = parser.parse_args()
    if args.neptune2_files:
        neptune2_downloads(args.neptune2_files, args.small_mb, args.latency)
        return
    stages = args.stages.split(",")

    from neptune_migration.sandbox import Sandbox

    tmp = Path(tempfile.mkdtemp(prefix="bench-large-", dir=args.workdir))
    server = None
    rows: list[Row] = []
    try:
        sizes = {"small": int(args.small_mb * 2**20), "large": int(args.size_mb * 2**20)}
        digests = {}
        for label, size in sizes.items():
            started = time.perf_counter()
            digests[label] = write_pattern_file(tmp / f"{label}.bin", size)
            print(f"wrote the {label} file ({size / 2**20:,.0f} MiB) in {time.perf_counter() - started:.1f} s")
        projects = {label: make_project(f"large-{label}", tmp / f"{label}.bin", args.in_memory_payload)
                    for label in sizes}
        if "mlflow" in stages:
            server, uri = start_mlflow_server(tmp / "mlflow")
        with Sandbox(list(projects.values())) as sb:
            env = dict(os.environ, **sb.env(), NEPTUNE_MIGRATION_RETRIES="2")
            for label, size in sizes.items():
                mb = size / 2**20
                archive = tmp / f"archive-{label}"
                state = tmp / f"state-{label}.db"
                # export (also when not asked for: the loads need its archive)
                cmd = [str(BIN / "neptune-migrate"), "export", "--from", "neptune3", "-p", f"sandbox/large-{label}",
                       "--archive", str(archive), "--state", str(state), "--no-progress"]
                seconds, peak, sandbox_peak, _ = run_child(cmd, env, watch_self=True)
                copy = find_copy(archive / "files", size)
                ok = "" if args.no_verify else ("sha256 ok" if sha256_of(copy) == digests[label] else "SHA256 DIFFERS")
                if "export" in stages:
                    rows.append(Row("export (sandbox -> archive)", label, mb, seconds, peak,
                                    f"sandbox process peak {sandbox_peak:.0f} MB; {ok}"))
                if "mlflow" in stages:
                    cmd = [str(BIN / "neptune-migrate"), "load", "--archive", str(archive), "--to", "mlflow",
                           "--mlflow-tracking-uri", uri, "--experiment-prefix", f"{label}-",
                           "--state", str(state), "--no-progress"]
                    seconds, peak, _, server_peak = run_child(cmd, env, watch_tree=server.pid)
                    copy = find_copy(tmp / "mlflow" / "art", size)
                    ok = "" if args.no_verify else ("sha256 ok" if sha256_of(copy) == digests[label] else
                                                    "SHA256 DIFFERS")
                    copy.unlink()
                    rows.append(Row("load -> MLflow (REST)", label, mb, seconds, peak,
                                    f"server tree peak {server_peak:.0f} MB; {ok}"))
                if "wandb-offline" in stages:
                    out = tmp / f"wandb-{label}"
                    cmd = [str(BIN / "neptune-migrate"), "load", "--archive", str(archive), "--to", "wandb-offline",
                           "--wandb-dir", str(out), "--state", str(state), "--no-progress"]
                    seconds, peak, _, _ = run_child(cmd, env)
                    copy = find_copy(out, size)
                    ok = "" if args.no_verify else ("sha256 ok" if sha256_of(copy) == digests[label] else
                                                    "SHA256 DIFFERS")
                    shutil.rmtree(out, ignore_errors=True)
                    rows.append(Row("load -> W&B offline", label, mb, seconds, peak, ok))
                if "wandb-online" in stages:
                    standin = start_standin()
                    wenv = dict(env, WANDB_BASE_URL=standin.url, WANDB_API_KEY="k" * 40, TMPDIR=str(tmp))
                    cmd = [str(BIN / "neptune-migrate"), "load", "--archive", str(archive), "--to", "wandb",
                           "--state", str(state), "--no-progress"]
                    try:
                        seconds, peak, _, _ = run_child(cmd, wenv, child_tree=True)
                        blobs = [b for b in standin.blobs.values() if len(b) == size]
                        ok = "" if args.no_verify else (
                            "sha256 ok" if len(blobs) == 1 and hashlib.sha256(blobs[0]).hexdigest() == digests[label]
                            else "SHA256 DIFFERS")
                    finally:
                        standin.stop()
                        standin.blobs.clear()
                    rows.append(Row("load -> W&B online (wandb sync)", label, mb, seconds, peak, ok))
                shutil.rmtree(archive, ignore_errors=True)
    finally:
        if server is not None:
            os.killpg(server.pid, 15)
            server.wait(15)
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("| stage | file | wall time | MB/s | peak RSS (migrating process) | large/small RSS | notes |")
    print("|---|---|---|---|---|---|---|")
    small = {r.stage: r.peak_mb for r in rows if r.label == "small"}
    for r in sorted(rows, key=lambda r: (r.stage, r.label != "small")):
        ratio = f"{r.peak_mb / small[r.stage]:.2f}x" if r.label == "large" and r.stage in small else ""
        print(f"| {r.stage} | {r.mb:,.0f} MiB | {r.seconds:.1f} s | {r.rate:,.1f} | {r.peak_mb:.0f} MB | {ratio} | "
              f"{r.extra} |")


if __name__ == "__main__":
    main()
