"""The pipelined `migrate`: stages overlap, buffers stay bounded, forks load after their parents.

The source here is a small in-test Source that writes generated runs through the real ArchiveWriter, and the
targets are the real W&B offline and MLflow targets, wrapped only to record when each load starts and ends
(the scheduler's ordering is what is under test; no real Neptune server can make a fork list before its parent
on demand, and no real target reports how many runs waited for it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from neptune_migration.archive import ArchiveWriter
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.selection import Selection
from neptune_migration.stages.migrate import Workers, run_pipeline
from neptune_migration.vocabulary import RunRef

PROJECT = "ws/sched"


@dataclass
class Listed:
    ref: RunRef
    parent: str | None = None
    modification_time: str = "2026-01-01T00:00:00"


class GeneratedSource:
    """Runs with one metric of 50 points each; `order` is the listing order (forks may come first)."""

    name = "generated"

    def __init__(self, runs: list[Listed], export_delay: float = 0.0) -> None:
        self.projects = [PROJECT]
        self.runs = runs
        self.export_delay = export_delay
        self.events: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def check(self) -> None:
        pass

    def list_runs(self, project: str) -> list[Listed]:
        return list(self.runs)

    def describe_run(self, run: Listed) -> dict[str, Any]:
        return {}

    def export_run(self, run: Listed, writer: ArchiveWriter) -> None:
        time.sleep(self.export_delay)
        with writer.run(run.ref) as w:
            w.add_atom("sys/id", "string", run.ref.run_id)
            w.add_atom("sys/name", "string", run.ref.run_id)
            if run.parent:
                w.add_atom("sys/forking/parent", "string", run.parent)
                w.add_atom("sys/forking/step", "float", 10.0)
            w.add_series("train/loss", "float_series", list(range(50)), [1_700_000_000_000 + i for i in range(50)],
                         [1.0 / (i + 1) for i in range(50)])
        with self._lock:
            self.events.append((time.monotonic(), "exported", run.ref.run_id))


class Recording:
    """Delegates to a real target and notes when each run's load starts and ends."""

    def __init__(self, target: Any, delay: float = 0.0) -> None:
        self.target = target
        self.delay = delay
        self.events: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def load_run(self, run: Any, ctx: Any) -> Any:
        with self._lock:
            self.events.append((time.monotonic(), "load_start", run.ref.run_id))
        time.sleep(self.delay)
        result = self.target.load_run(run, ctx)
        with self._lock:
            self.events.append((time.monotonic(), "load_end", run.ref.run_id))
        return result


def quiet(n: int) -> Tracker:
    return Tracker("t", n, Console(quiet=True), enabled=False)


def test_stages_overlap_and_buffers_stay_bounded(tmp_path: Path) -> None:
    from neptune_migration.targets.wandb.loader import WandbOfflineTarget

    runs = [Listed(RunRef(PROJECT, f"R-{i:02d}")) for i in range(24)]
    source = GeneratedSource(runs, export_delay=0.01)
    target = Recording(WandbOfflineTarget(tmp_path / "wb", project="sched"), delay=0.15)
    workers = Workers(export=2, load=2, validate=2)
    with Ledger(tmp_path / "state.db") as ledger:
        result = run_pipeline(source, ArchiveWriter(tmp_path / "a"), target, Selection(), ledger, quiet, workers)
    assert not result.exported.failed and not result.loaded.failed
    assert result.loaded.count("loaded") == 24
    assert result.validated is not None and result.validated.ok and len(result.validated.checks) == 24

    events = sorted(source.events + target.events)
    first_load = min(t for t, kind, _ in events if kind == "load_start")
    last_export = max(t for t, kind, _ in events if kind == "exported")
    assert first_load < last_export, "loading waited for the whole export"
    # Loads are 15x slower than exports, so an unbounded pipeline would export everything up front.
    waiting = peak = 0
    for _t, kind, _run in events:
        waiting += {"exported": 1, "load_start": -1}.get(kind, 0)
        peak = max(peak, waiting)
    assert peak <= workers.buffer + workers.export, f"{peak} exported runs waited for a loader"
    assert result.clock.wall > 0 and result.clock.load > 0 and result.clock.export > 0


def test_fork_listed_first_loads_after_its_parent(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    from mlflow.tracking import MlflowClient

    from neptune_migration.targets.mlflow.loader import MlflowTarget

    runs = [
        Listed(RunRef(PROJECT, "FORK-2"), parent="FORK-1"),
        Listed(RunRef(PROJECT, "FORK-1"), parent="ROOT"),
        Listed(RunRef(PROJECT, "ROOT")),
        Listed(RunRef(PROJECT, "LOOP-A"), parent="LOOP-B"),  # a cycle must not hang the pipeline
        Listed(RunRef(PROJECT, "LOOP-B"), parent="LOOP-A"),
    ]
    source = GeneratedSource(runs)
    target = Recording(MlflowTarget(mlflow_server.uri, experiment_prefix=prefix))
    with Ledger(tmp_path / "state.db") as ledger:
        try:
            result = run_pipeline(source, ArchiveWriter(tmp_path / "a"), target, Selection(), ledger, quiet,
                                  Workers(export=3, load=3, validate=1))
        finally:
            target.close()
    assert result.loaded.count("loaded") == 5 and result.validated.ok
    order = [run for _t, kind, run in sorted(target.events) if kind == "load_start"]
    assert order.index("ROOT") < order.index("FORK-1") < order.index("FORK-2")

    client = MlflowClient(mlflow_server.uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    by_key = {r.data.tags["neptune.run_key"]: r for r in client.search_runs(exps)}
    assert by_key[f"{PROJECT}/FORK-1"].data.tags.get("mlflow.parentRunId") == by_key[f"{PROJECT}/ROOT"].info.run_id
    assert by_key[f"{PROJECT}/FORK-2"].data.tags.get("mlflow.parentRunId") == by_key[f"{PROJECT}/FORK-1"].info.run_id


def test_rerun_after_completion_moves_nothing(tmp_path: Path) -> None:
    from neptune_migration.targets.wandb.loader import WandbOfflineTarget

    runs = [Listed(RunRef(PROJECT, f"R-{i}")) for i in range(5)]
    with Ledger(tmp_path / "state.db") as ledger:
        first = run_pipeline(GeneratedSource(runs), ArchiveWriter(tmp_path / "a"),
                             WandbOfflineTarget(tmp_path / "wb", project="sched"), Selection(), ledger, quiet)
        source = GeneratedSource(runs)
        again = run_pipeline(source, ArchiveWriter(tmp_path / "a"),
                             WandbOfflineTarget(tmp_path / "wb", project="sched"), Selection(), ledger, quiet)
    assert first.loaded.count("loaded") == 5
    assert again.exported.count("already_exported") == 5 and again.loaded.count("already_loaded") == 5
    assert source.events == []
    assert again.validated.ok and len(again.validated.checks) == 5
