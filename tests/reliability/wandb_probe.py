"""Observation points for the W&B offline crash torture, installed into the real CLI process.

A W&B offline load makes no network call a proxy could watch: it writes files. So the torture starts the real
CLI (`neptune_migration.cli:main`) through `python -c`, after `install()` has wrapped a few functions of the
W&B target. Nothing is replaced: every wrapper calls the real function. The wrappers append `begin STAGE` /
`end STAGE` lines to the file named by $NEPTUNE_TORTURE_PROBE (one `os.write` on an O_APPEND descriptor each, so a
SIGKILL never leaves half a line), and hold the aimed stage ($NEPTUNE_TORTURE_AIM) for $NEPTUNE_TORTURE_DELAY
seconds at its pause points so a kill can land inside it:

- artifact_writing: `_write_files` / `_write_string_series` (payloads hard-linked or copied into the run folder,
  tables written); pause after every payload copy and every table;
- metric_loading: from the first history record a `.wandb` writer appends until the writer is closed; pause
  after every `HISTORY_PAUSE_EVERY` rows;
- validation: `WandbVerifier.verify` (the read-back of one run and its comparison); pause before the read-back.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

HISTORY_PAUSE_EVERY = 300


def install() -> None:
    path = os.environ.get("NEPTUNE_TORTURE_PROBE")
    if not path:
        return
    aim = os.environ.get("NEPTUNE_TORTURE_AIM", "")
    delay = float(os.environ.get("NEPTUNE_TORTURE_DELAY", "0"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def mark(event: str, stage: str) -> None:
        os.write(fd, f"{event} {stage} {os.getpid()}:{threading.get_ident()}\n".encode())

    def pause(stage: str) -> None:
        if stage == aim and delay > 0:
            time.sleep(delay)

    from neptune_migration.targets.wandb import folder as wandb_folder
    from neptune_migration.targets.wandb import records as wandb_records
    from neptune_migration.targets.wandb import verify as wandb_verify

    def staged(fn: Any, stage: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark("begin", stage)
            try:
                return fn(*args, **kwargs)
            finally:
                mark("end", stage)

        return wrapper

    wandb_folder._write_files = staged(wandb_folder._write_files, "artifact_writing")
    wandb_folder._write_string_series = staged(wandb_folder._write_string_series, "artifact_writing")

    real_copy = wandb_folder._copy

    def copy(src: Any, dest: Any) -> None:
        real_copy(src, dest)
        pause("artifact_writing")

    wandb_folder._copy = copy

    writer = wandb_records.RecordWriter
    real_write, real_close = writer.write, writer.close

    def write(self: Any, record: Any) -> None:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows = getattr(self, "_probe_rows", 0)
            if rows == 0:
                mark("begin", "metric_loading")
            self._probe_rows = rows + 1
            real_write(self, record)
            if rows % HISTORY_PAUSE_EVERY == HISTORY_PAUSE_EVERY - 1:
                pause("metric_loading")
            return
        if kind == "artifact":
            pause("artifact_writing")  # the manifest record of an artifact whose payloads are in place
        real_write(self, record)

    def close(self: Any) -> None:
        try:
            real_close(self)
        finally:
            if getattr(self, "_probe_rows", 0):
                mark("end", "metric_loading")

    writer.write, writer.close = write, close  # type: ignore[method-assign]

    real_verify = wandb_verify.WandbVerifier.verify

    def verify(self: Any, run: Any, selection: Any) -> Any:
        mark("begin", "validation")
        try:
            pause("validation")
            return real_verify(self, run, selection)
        finally:
            mark("end", "validation")

    wandb_verify.WandbVerifier.verify = verify  # type: ignore[method-assign]


def read(path: str | os.PathLike[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(started, in flight) per stage, from a probe file."""
    started: dict[str, int] = {}
    open_: dict[str, int] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return started, open_
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        event, stage, _who = parts
        if event == "begin":
            started[stage] = started.get(stage, 0) + 1
            open_[stage] = open_.get(stage, 0) + 1
        elif event == "end":
            open_[stage] = open_.get(stage, 0) - 1
    return started, {s: n for s, n in open_.items() if n > 0}
