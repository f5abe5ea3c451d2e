"""Small pure parts of the W&B target: naming rules, record framing, backoff."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from neptune_migration.targets.wandb import loader as wb
from neptune_migration.targets.wandb.names import clean_key, metric_keys, project_name, run_id, tags
from neptune_migration.targets.wandb.records import BLOCK, RecordWriter, read_records


def test_project_names() -> None:
    assert project_name("ws/my project") == "my-project"
    assert project_name("ws/proj", prefix="neptune-") == "neptune-proj"
    assert project_name("ws/a#b?c%d:e") == "a-b-c-d-e"
    long = project_name("ws/" + "x" * 300)
    assert len(long) <= 128 and long != project_name("ws/" + "x" * 299)


def test_run_ids_are_deterministic_and_safe() -> None:
    a = run_id("ws/proj/RUN-1")
    assert a == run_id("ws/proj/RUN-1") and a != run_id("ws/other/RUN-1")
    for key in ("ws/p/a:b;c,d#e?f/g'h", "ws/p/ünïcödé", "ws/p/" + "z" * 500, "ws/p/"):
        rid = run_id(key)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", rid), rid
    assert run_id("ws/p/R", generation="2024-01-01") != run_id("ws/p/R")


def test_metric_keys_never_merge() -> None:
    keys = metric_keys(["loss", "Loss", "a.b", "a_b", "_step", "neptune_step", "ok/name"])
    assert len({k.lower() for k in keys.values()}) == len(keys)
    assert keys["ok/name"] == "ok/name" and keys["Loss"] == "Loss"
    assert not keys["_step"].startswith("_") and keys["neptune_step"] != "neptune_step"
    assert metric_keys(["b", "a"]) == metric_keys(["a", "b"])  # order of discovery does not matter
    assert clean_key("x y/z.w") == "x_y/z_w"


def test_tags() -> None:
    out, changed = tags(["a", "", "  ", "b" * 65, "b" * 64])
    assert "a" in out and "b" * 64 in out and all(1 <= len(t) <= 64 for t in out)
    assert len(out) == 3 and changed == 3


def test_record_framing_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "run.wandb"
    w = RecordWriter(path)
    sizes = [0, 1, 10, BLOCK - 14, BLOCK - 7, BLOCK, 3 * BLOCK + 5, 100]
    for n in sizes:
        rec = pb.Record()
        rec.run.notes = "x" * n
        w.write(rec)
    w.close()
    got = [len(r.run.notes) for r in read_records(path)]
    assert got == sizes
    # A torn tail (killed writer) ends the records without an error.
    data = path.read_bytes()
    path.write_bytes(data[:-50])
    assert [len(r.run.notes) for r in read_records(path)] == sizes[:-1]


class _Resp:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status_code = status
        self.headers = headers


class _HTTPError(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = _Resp(status, headers or {})


def test_backoff_honours_reset_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(wb.time, "sleep", slept.append)
    calls = iter([_HTTPError(429, {"RateLimit-Reset": "7"}), _HTTPError(503), "ok"])

    def fn() -> str:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert wb.with_backoff(fn) == "ok"
    assert slept[0] == 7.0 and 0 < slept[1] <= 60
    with pytest.raises(_HTTPError):  # 4xx other than 429 is not retried
        wb.with_backoff(lambda: (_ for _ in ()).throw(_HTTPError(403)))


def test_rate_limiter_spaces_acquisitions() -> None:
    limiter = wb.RateLimiter(per_second=20)
    t0 = time.monotonic()
    for _ in range(5):
        limiter.acquire()
    assert time.monotonic() - t0 >= 0.19



def test_generation_resolution(tmp_path: Path) -> None:
    """Which W&B id an archived run loads under (targets/wandb/generations.py): the base id unless the base run holds
    another Neptune modification time; the run it supersedes is the base's newest generation."""
    from datetime import UTC, datetime

    from neptune_migration.archive import Archive, ArchiveWriter
    from neptune_migration.targets.wandb.generations import Existing, resolve
    from neptune_migration.targets.wandb.names import run_id
    from neptune_migration.vocabulary import RunRef

    def archived(name: str, mod: datetime | None) -> Any:
        with ArchiveWriter(tmp_path / name).run(RunRef("ws/p", "RUN-1")) as w:
            w.add_atom("sys/creation_time", "datetime", datetime(2024, 12, 1, tzinfo=UTC))
            if mod is not None:
                w.add_atom("sys/modification_time", "datetime", mod)
        return Archive(tmp_path / name).scan().runs[0]

    t1, t2, t3 = (archived(f"a{m}", datetime(2025, m, 1, tzinfo=UTC)) for m in (1, 2, 3))
    none = archived("none", None)
    base = run_id("ws/p/RUN-1")
    gen2 = run_id("ws/p/RUN-1", "2025-02-01T00:00:00Z")
    gen3 = run_id("ws/p/RUN-1", "2025-03-01T00:00:00Z")
    first = Existing("2025-01-01T00:00:00Z")
    assert resolve(t1, None) == (base, None)  # first load
    assert resolve(t1, first) == (base, None)  # rerun, same generation
    assert resolve(t2, Existing(None)) == (base, None)  # base without a recorded time: resumed, not forked
    assert resolve(none, first) == (base, None)
    assert resolve(t2, first) == (gen2, base)  # refreshed: a new id, superseding the base run
    assert resolve(t2, Existing(first.generation, current=gen2)) == (gen2, None)  # already superseded
    assert resolve(t3, Existing(first.generation, current=gen2)) == (gen3, gen2)  # third generation
    assert len({base, gen2, gen3}) == 3
