"""A load into `--to comet-offline` SIGKILLed while a run's archive is being written, then run again: every zip in
the folder is always whole (opens and parses), and the rerun leaves each run's archive exact (validate clean, every
point once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import neptune_migration as nm
from neptune_migration.archive import ArchiveWriter
from neptune_migration.vocabulary import RunRef

VENV_BIN = Path(sys.executable).parent
RUNS, POINTS = ("K-1", "K-2", "K-3"), 60_000


def _archive(root: Path) -> Path:
    writer = ArchiveWriter(root)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for run_id in RUNS:
        with writer.run(RunRef("ws/kill", run_id)) as w:
            w.add_atom("sys/creation_time", "datetime", t0)
            w.add_series("train/loss", "float_series", [i / 4 for i in range(POINTS)],
                         [t0 + timedelta(milliseconds=i) for i in range(POINTS)], [1 / (i + 1) for i in range(POINTS)])
            w.add_file("model/ckpt", "file", bytes(range(256)) * 40, "ckpt.bin")
    return root


def _metric_points(zip_path: Path) -> int:
    with zipfile.ZipFile(zip_path) as z:
        json.loads(z.read("experiment.json"))
        return sum(1 for line in z.read("messages.json").splitlines() if json.loads(line)["type"] == "metric_msg")


def test_sigkill_while_an_archive_is_written_then_rerun_is_exact(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "archive")
    comet = tmp_path / "comet"
    args = ["load", "--archive", str(archive), "--state", str(tmp_path / "state.db"), "--workers", "1",
            "--no-progress", "--to", "comet-offline", "--comet-dir", str(comet)]
    proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not any(
            m.stat().st_size > 1_000_000 for m in comet.glob(".tmp-*/messages.json") if m.exists()):
        time.sleep(0.01)
    alive = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    _out, err = proc.communicate(timeout=60)
    assert alive, f"the load ended before an archive was half-written\n{err[-2000:]!r}"
    assert list(comet.glob(".tmp-*")), "the kill left no staging files: it did not land inside a run"
    whole = sorted(comet.glob("*.zip"))
    assert len(whole) < len(RUNS) and all(_metric_points(z) == POINTS for z in whole)

    again = subprocess.run([str(VENV_BIN / "neptune-migrate"), *args], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not list(comet.glob(".tmp-*"))
    zips = sorted(comet.glob("*.zip"))
    assert len(zips) == len(RUNS) and all(_metric_points(z) == POINTS for z in zips)
    checked = nm.validate(archive, to="comet-offline", comet_dir=comet, state=tmp_path / "state.db",
                          report_dir=tmp_path / "report", progress=False)
    assert checked.ok and checked.report["totals"]["runs_validated"] == len(RUNS), checked.to_dict()
