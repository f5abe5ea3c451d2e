"""The conformance suite's fixtures: one kit per target (tests/conformance/kits.py), started once per module, and
the small archives every target loads."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from neptune_migration.archive import ArchiveWriter
from neptune_migration.samples import write_nasty_archive
from neptune_migration.vocabulary import RunRef

from .kits import KITS, Kit, Place

KILL_RUNS = ("KILL-1", "KILL-2")
KILL_SERIES = 2
KILL_POINTS = 10_000  # per series: 20 of MLflow's 1000-point batches per run, and a W&B sync of several requests


@pytest.fixture(scope="module", params=sorted(KITS))
def kit(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kit]:
    chosen = KITS[request.param]()
    with pytest.MonkeyPatch.context() as mp:
        chosen.start(tmp_path_factory.mktemp(f"kit-{chosen.name}"), mp)
        try:
            yield chosen
        finally:
            chosen.stop()


@pytest.fixture
def place(kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Place:
    return kit.place(tmp_path, monkeypatch)


@pytest.fixture(scope="session")
def nasty_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nasty_archive(tmp_path_factory.mktemp("conformance") / "nasty")


@pytest.fixture(scope="session")
def kill_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs big enough to be killed in the middle of: plain float series, a param and a file each."""
    root = tmp_path_factory.mktemp("conformance") / "kill"
    writer = ArchiveWriter(root)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    for run_id in KILL_RUNS:
        with writer.run(RunRef("ws/conformance", run_id)) as w:
            w.add_atom("sys/creation_time", "datetime", t0)
            w.add_atom("params/lr", "float", 0.1)
            for s in range(KILL_SERIES):
                w.add_series(f"train/m{s}", "float_series", list(range(KILL_POINTS)),
                             [t0 + timedelta(milliseconds=i) for i in range(KILL_POINTS)],
                             [float(i * (s + 1)) for i in range(KILL_POINTS)])
            w.add_file("model/ckpt", "file", bytes(range(256)) * 40, "ckpt.bin")
    return root
