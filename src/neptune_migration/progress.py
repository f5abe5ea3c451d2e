"""Progress a person can watch: rich bars on a terminal, plain periodic log lines in CI (`--no-progress`)."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("neptune_migration")


class Tracker:
    """Counts runs, points and bytes; thread-safe, so every worker reports into it directly."""

    def __init__(self, title: str, total_runs: int, console: Console, enabled: bool = True,
                 stages: tuple[str, ...] = ()) -> None:
        self.title = title
        # A pipelined command shows one bar per stage (export, load, validate) above the overall one.
        self.stages = stages
        self.stage_runs = dict.fromkeys(stages, 0)
        self.total_runs = total_runs
        self.console = console
        self.enabled = enabled and console.is_terminal
        self.runs = 0
        self.points = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_log = 0.0
        self._progress: Progress | None = None
        self._note = ""  # e.g. "workers connected: 4" on a cluster
        self._note_task: int | None = None

    def __enter__(self) -> Tracker:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._stage_tasks = {
                stage: self._progress.add_task(f"  {stage}", total=self.total_runs) for stage in self.stages
            }
            self._runs_task = self._progress.add_task(f"{self.title}: runs", total=self.total_runs)
            self._points_task = self._progress.add_task("points", total=None)
            self._bytes_task = self._progress.add_task("file bytes", total=None)
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def run_done(self) -> None:
        with self._lock:
            self.runs += 1
        if self._progress is not None:
            self._progress.advance(self._runs_task)
        self._maybe_log(force=self.runs == self.total_runs)

    def stage_done(self, stage: str) -> None:
        with self._lock:
            self.stage_runs[stage] = self.stage_runs.get(stage, 0) + 1
        if self._progress is not None and stage in self._stage_tasks:
            self._progress.advance(self._stage_tasks[stage])

    def note(self, text: str) -> None:
        """One line of context under the bars (a cluster's workers connected); also in the periodic log lines."""
        if text == self._note:
            return
        self._note = text
        if self._progress is not None:
            if self._note_task is None:
                self._note_task = self._progress.add_task(text, total=None)
            else:
                self._progress.update(self._note_task, description=text)

    def add_points(self, n: int) -> None:
        with self._lock:
            self.points += n
        if self._progress is not None:
            rate = self.points / max(time.monotonic() - self.started, 1e-6)
            self._progress.update(
                self._points_task, completed=self.points, description=f"points ({rate:,.0f}/s)"
            )
        self._maybe_log()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += n
        if self._progress is not None:
            rate = self.bytes / max(time.monotonic() - self.started, 1e-6) / 1e6
            self._progress.update(
                self._bytes_task, completed=self.bytes, description=f"file bytes ({rate:,.1f} MB/s)"
            )

    def _maybe_log(self, force: bool = False) -> None:
        if self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_log < 10:
            return
        self._last_log = now
        elapsed = now - self.started
        stages = "".join(f" {stage} {n}," for stage, n in self.stage_runs.items())
        log.info(
            "%s:%s %d/%d runs done, %d points (%.0f/s), %.1f MB of files, %.0fs elapsed%s",
            self.title,
            stages,
            self.runs,
            self.total_runs,
            self.points,
            self.points / max(elapsed, 1e-6),
            self.bytes / 1e6,
            elapsed,
            f", {self._note}" if self._note else "",
        )
