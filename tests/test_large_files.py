"""A big file moves Neptune 3.x (sandbox) -> archive -> MLflow server byte for byte, with flat memory.

The file (256 MiB of a 4 MiB random block, each block stamped with its index, so a misplaced chunk changes the
hash) lives on disk and the sandbox streams it. `export` and `load` run as the real CLI in child processes whose
RSS is polled; each is run once with a 1 MiB file first, and the big file may raise the peak by far less than
its size. A memory bound, not a timing: bench/bench_large_files.py has the figures.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from neptune_migration.sandbox import FileValue, Project, Sandbox

from .conftest import VENV_BIN, MlflowServer

BIG = 256 << 20
SMALL = 1 << 20
NAME = "weights.bin"


def _pattern_file(path: Path, size: int) -> str:
    block = bytearray(os.urandom(4 << 20))
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        n = written = 0
        while written < size:
            block[:8] = n.to_bytes(8, "little")
            chunk = block[: min(len(block), size - written)]
            fh.write(chunk)
            digest.update(chunk)
            written, n = written + len(chunk), n + 1
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _project(name: str, payload: Path) -> Project:
    project = Project("sandbox", name, key=name.upper().replace("-", "")[:5])
    run = project.new_run("run-0", experiment_name="big", creation_time=datetime(2024, 1, 1, tzinfo=UTC))
    run.set("model/weights", FileValue(b"", NAME, "application/octet-stream", source=payload))
    run.touch()
    return project


def _cli_peak_rss(args: list[str], env: dict[str, str]) -> int:
    """Run neptune-migrate; its peak RSS in bytes, polled every 10 ms from here."""
    child = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = psutil.Process(child.pid)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    _, err = child.communicate(timeout=600)
    done.set()
    poller.join()
    assert child.returncode == 0, err.decode()[-3000:]
    return peak


def test_big_file_streams_to_mlflow(tmp_path: Path, mlflow_server: MlflowServer, prefix: str) -> None:
    sizes = {"small": SMALL, "big": BIG}
    digests = {label: _pattern_file(tmp_path / f"{label}.bin", size) for label, size in sizes.items()}
    projects = [_project(f"lf-{label}", tmp_path / f"{label}.bin") for label in sizes]
    peaks: dict[tuple[str, str], int] = {}
    with Sandbox(projects) as sb:
        env = dict(os.environ, **sb.env(), NEPTUNE_MIGRATION_RETRIES="2")
        for label in sizes:
            archive, state = tmp_path / f"archive-{label}", str(tmp_path / f"state-{label}.db")
            peaks["export", label] = _cli_peak_rss(
                ["export", "--from", "neptune3", "-p", f"sandbox/lf-{label}", "--archive", str(archive),
                 "--state", state, "--no-progress"], env)
            stored = [p for p in (archive / "files").rglob(NAME) if p.is_file()]
            assert len(stored) == 1 and _sha256(stored[0]) == digests[label]
            # the download scratch folder inside the archive root is gone, and nothing else was left
            assert sorted(p.name for p in archive.iterdir()) == ["data", "files"]
            peaks["load", label] = _cli_peak_rss(
                ["load", "--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri,
                 "--experiment-prefix", f"{prefix}{label}-", "--state", state, "--no-progress"], env)

    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name(f"{prefix}big-sandbox/lf-big")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    uploaded = [p for p in (mlflow_server.root / "artifacts" / exp.experiment_id / run.info.run_id).rglob(NAME)]
    assert len(uploaded) == 1
    assert uploaded[0].stat().st_size == BIG
    assert _sha256(uploaded[0]) == digests["big"]

    for stage in ("export", "load"):
        growth = peaks[stage, "big"] - peaks[stage, "small"]
        assert growth < BIG / 4, (
            f"{stage}: peak RSS {peaks[stage, 'big'] / 2**20:.0f} MiB with a {BIG >> 20} MiB file against "
            f"{peaks[stage, 'small'] / 2**20:.0f} MiB with a 1 MiB file"
        )


@pytest.mark.parametrize("workers", [1, 3])
def test_mlflow_upload_workers_bound_the_pool(tmp_path: Path, workers: int) -> None:
    from neptune_migration.targets.mlflow.loader import MlflowTarget

    target = MlflowTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", upload_workers=workers)
    try:
        assert target.upload_workers == workers
        assert target._artifact_pool._max_workers == workers
    finally:
        target.close()


def test_wandb_upload_workers_cap_concurrent_syncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs loaded from two threads with `upload_workers=1`: their real `wandb sync`s never overlap."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "wandb"))
    from standin import StandIn

    from neptune_migration.archive import Archive, ArchiveWriter
    from neptune_migration.targets.base import LoadContext
    from neptune_migration.targets.wandb.loader import WandbOnlineTarget
    from neptune_migration.vocabulary import RunRef

    home = tmp_path / "home"
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (home / var.lower()).mkdir(parents=True)
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    writer = ArchiveWriter(tmp_path / "archive")
    for n in range(2):
        with writer.run(RunRef("ws/proj", f"RUN-{n}")) as w:
            w.add_atom("sys/creation_time", "datetime", datetime(2024, 1, 1, tzinfo=UTC))
            w.add_series("train/loss", "float_series", [0, 1], [1704067200000, 1704067201000], [1.0, 0.5])
            w.add_file("model/weights", "file", os.urandom(3 << 20), NAME)
    runs = Archive(tmp_path / "archive").scan().runs

    standin = StandIn().start()
    try:
        target = WandbOnlineTarget(base_url=standin.url, api_key="k" * 40, staging_dir=tmp_path / "staging",
                                   runs_per_second=50, upload_workers=1)
        target.check()
        active, overlap, lock = [0], [0], threading.Lock()
        real_sync = target._sync

        def counting_sync(*args: object) -> str:
            with lock:
                active[0] += 1
                overlap[0] = max(overlap[0], active[0])
            try:
                return real_sync(*args)  # type: ignore[arg-type]
            finally:
                with lock:
                    active[0] -= 1

        monkeypatch.setattr(target, "_sync", counting_sync)
        errors: list[BaseException] = []

        def load(run: object) -> None:
            try:
                target.load_run(run, LoadContext())  # type: ignore[arg-type]
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        threads = [threading.Thread(target=load, args=(run,)) for run in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        assert not errors, errors
        assert overlap[0] == 1
        uploaded = [b for b in standin.blobs.values() if len(b) == 3 << 20]
        assert len(uploaded) == 2
    finally:
        standin.stop()
