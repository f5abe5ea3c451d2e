"""Online W&B target against the local stand-in server: the real `wandb sync` and `wandb.Api` talk to it.

What the stand-in records is what wandb 0.31 really sent; the tests assert on that, inject 429s, and kill a
load half-way to show the rerun completes the same run without duplicating anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from standin import DEFAULT_ENTITY, StandIn
from wandb_archives import runs_of
from wandb_expect import assert_run_matches

from neptune_migration.archive import ArchiveWriter
from neptune_migration.targets.base import LoadContext
from neptune_migration.targets.wandb.loader import WandbOnlineTarget
from neptune_migration.targets.wandb.online_readback import read_online
from neptune_migration.vocabulary import RunRef

KEY = "k" * 40  # the stand-in accepts any key; this one must never appear in output


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn().start()
    yield s
    s.stop()


def _target(standin: StandIn, tmp_path: Path, **kw: object) -> WandbOnlineTarget:
    return WandbOnlineTarget(base_url=standin.url, api_key=KEY, staging_dir=tmp_path / "staging",
                             runs_per_second=50, **kw)  # type: ignore[arg-type]


def _read(target: WandbOnlineTarget, run) -> object:
    return read_online(target.api(), target.entity, target.spec(run).project, target.run_id_for(run), download=True)


def test_online_load_and_read_back(standin: StandIn, nasty_archive: Path, tmp_path: Path) -> None:
    target = _target(standin, tmp_path)
    target.check()
    assert target.entity == DEFAULT_ENTITY  # taken from the viewer when not given
    runs = runs_of(nasty_archive)
    results = {key: target.load_run(run, LoadContext()) for key, run in runs.items()}
    assert not standin.unknown or set(standin.unknown) <= {"POST /sdk/otel/v1/metrics"}
    for key, run in runs.items():
        data = _read(target, run)
        assert_run_matches(run, results[key], data)
        server = standin.run(DEFAULT_ENTITY, data.project, data.run_id)
        # One history line per row, each at its own offset, and `_step` strictly increasing.
        lines = server.history()
        assert len(lines) == data.history_rows
        steps = [row["_step"] for row in lines]
        assert steps == sorted(set(steps))
        assert all("_timestamp" in row for row in lines)
    nasty = _read(target, runs["ws/nasty proj/NAS-1"])
    assert nasty.state == "failed" and nasty.start_time_ms == 1_700_000_000_000
    # Ordinal mode: wandb sync turned our metric records into the run's metric definitions, every key on the
    # `neptune_step` axis (in W&B's compact form: "1" name, "5" 1-based index of the step metric).
    metrics = standin.run(DEFAULT_ENTITY, nasty.project, nasty.run_id).config["_wandb"]["value"]["m"]
    names = [m["1"] for m in metrics]
    step_index = names.index("neptune_step") + 1
    assert {m["1"] for m in metrics if m.get("5") == step_index} == set(nasty.history)
    assert nasty.group == "exp nasty" and nasty.notes == "description ünïcödé ✓"
    # The staging copies are gone once a run is synced.
    assert not any((tmp_path / "staging" / "runs").iterdir())


def test_exporter_archive_online(standin: StandIn, exporter_archives: Path, tmp_path: Path) -> None:
    target = _target(standin, tmp_path, entity="team")
    for run in runs_of(exporter_archives / "neptune3").values():
        result = target.load_run(run, LoadContext())
        assert_run_matches(run, result, _read(target, run))
    assert {k[0] for k in standin.runs} == {"team"}


def test_rate_limits_are_retried(standin: StandIn, nasty_archive: Path, tmp_path: Path) -> None:
    run = runs_of(nasty_archive)["ws/other/OTH-1"]
    standin.fail_next("graphql:UpsertBucket", 2)
    standin.fail_next("file_stream", 2)
    standin.fail_next("upload", 1)
    target = _target(standin, tmp_path, entity=DEFAULT_ENTITY)
    result = target.load_run(run, LoadContext())
    # Every injected 429 was met and retried...
    assert [f.remaining for f in standin.faults] == [0, 0, 0], [r[2] for r in standin.requests]
    standin.fail_next("graphql:Run", 1)
    data = _read(target, run)  # ...and the read-back retries too
    assert_run_matches(run, result, data)
    assert standin.count("UpsertBucket") >= 3


def test_run_creation_rate(standin: StandIn, nasty_archive: Path, tmp_path: Path) -> None:
    target = WandbOnlineTarget(base_url=standin.url, api_key=KEY, staging_dir=tmp_path / "s", runs_per_second=1,
                               entity=DEFAULT_ENTITY)
    t0 = time.monotonic()
    for _ in range(3):
        target.limiter.acquire()
    assert time.monotonic() - t0 >= 1.9


def test_key_never_in_errors(standin: StandIn, nasty_archive: Path, tmp_path: Path) -> None:
    from neptune_migration.errors import TargetError

    run = runs_of(nasty_archive)["ws/other/OTH-1"]
    standin.fail_next("graphql:UpsertBucket", 1000, status=403)
    target = _target(standin, tmp_path, entity=DEFAULT_ENTITY, sync_timeout=60, verify_timeout=2)
    with pytest.raises(TargetError) as err:
        target.load_run(run, LoadContext())
    assert KEY not in str(err.value)


_LOADER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from neptune_migration.archive import Archive
    from neptune_migration.targets.base import LoadContext
    from neptune_migration.targets.wandb.loader import WandbOnlineTarget
    archive, url, staging, checkpoint = sys.argv[1:5]
    run = Archive(Path(archive)).scan().runs[0]
    cp = Path(checkpoint)
    ctx = LoadContext(checkpoint=json.loads(cp.read_text()) if cp.exists() else None,
                      save_checkpoint=lambda s: cp.write_text(json.dumps(s)))
    t = WandbOnlineTarget(base_url=url, api_key="k" * 40, staging_dir=Path(staging), entity="standin-user")
    r = t.load_run(run, ctx)
    resumed = [int(w.split(": ")[1].split()[0]) for w in r.warnings if w.startswith("resumed")]
    print(json.dumps({"points": r.points, "run_id": t.run_id_for(run), "resumed_rows": sum(resumed)}))
    """
)


def test_sigkill_mid_load_then_rerun_has_no_duplicates(standin: StandIn, tmp_path: Path) -> None:
    archive = tmp_path / "big"
    n = 40_000
    with ArchiveWriter(archive).run(RunRef("ws/big", "BIG-1")) as w:
        for name in ("a", "b", "c"):
            w.add_series(f"m/{name}", "float_series", list(range(n)), [1_700_000_000_000 + i for i in range(n)],
                         [float(i) for i in range(n)])
        w.add_file("model/ckpt", "file", b"x" * 100_000, "ckpt.bin")
    standin.file_stream_delay = 0.4
    env = dict(os.environ)
    args = [sys.executable, "-c", _LOADER, str(archive), standin.url, str(tmp_path / "staging"),
            str(tmp_path / "checkpoint.json")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        runs = list(standin.runs.values())
        if runs and runs[0].streams.get("wandb-history.jsonl") and not runs[0].complete:
            os.killpg(proc.pid, signal.SIGKILL)  # the loader, `wandb sync` and wandb-core with it
            killed = True
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed, "the load finished before it could be interrupted"
    (server,) = standin.runs.values()
    partial = len(server.streams["wandb-history.jsonl"])
    assert 0 < partial < n and not server.complete
    assert json.loads((tmp_path / "checkpoint.json").read_text())["stage"] == "written"

    standin.file_stream_delay = 0.0
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert KEY not in out.stdout + out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    run_id = summary["run_id"]
    assert summary["points"] == 3 * n and summary["resumed_rows"] == partial
    assert list(standin.runs) == [(DEFAULT_ENTITY, "big", run_id)]  # the same run, not a second one
    server = standin.run(DEFAULT_ENTITY, "big", run_id)
    assert server.complete and server.state == "finished"
    rows = server.history()
    assert [r["_step"] for r in rows] == list(range(n))  # every row once, in order
    assert all(r["m/a"] == r["_step"] for r in rows)
    # wandb-core appends a resumed run's history after the server's line count; the rerun left out the rows
    # the server already had, so every row crossed the wire exactly once.
    assert sum(c for f, _o, c in server.chunks if f == "wandb-history.jsonl") == n
    committed = [a for a in standin.artifacts.values() if a.state == "COMMITTED"]
    assert len(committed) == 1 and committed[0].version == 0
    assert json.loads((tmp_path / "checkpoint.json").read_text())["stage"] == "synced"


def _sync_env(standin: StandIn) -> dict[str, str]:
    env = dict(os.environ, WANDB_API_KEY=KEY, WANDB_BASE_URL=standin.url)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("WANDB_SERVICE", None)
    return env


def test_offline_folders_sync_with_the_printed_command(standin: StandIn, nasty_archive: Path, tmp_path: Path) -> None:
    from neptune_migration.targets.wandb.loader import WandbOfflineTarget

    offline = WandbOfflineTarget(tmp_path / "airgap", entity=DEFAULT_ENTITY)
    runs = runs_of(nasty_archive)
    results = {key: offline.load_run(run, LoadContext()) for key, run in runs.items()}
    # Carried to "another machine": the folder moves, the command still works (paths are relative).
    moved = tmp_path / "elsewhere"
    (tmp_path / "airgap").rename(moved)
    cmd = offline.sync_command().replace(str(tmp_path / "airgap"), str(moved))
    out = subprocess.run(["bash", "-c", cmd], env=_sync_env(standin), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    online = _target(standin, tmp_path, entity=DEFAULT_ENTITY)
    for key, run in runs.items():
        assert_run_matches(run, results[key], _read(online, run))
    # A rerun of the load leaves synced folders alone (rebuilding them would invite a second upload).
    again = WandbOfflineTarget(moved, entity=DEFAULT_ENTITY)
    before = {p: p.stat().st_mtime_ns for p in moved.rglob("*.wandb")}
    res = again.load_run(runs["ws/other/OTH-1"], LoadContext())
    assert "already synced" in res.warnings[0] and res.points == results["ws/other/OTH-1"].points
    assert before == {p: p.stat().st_mtime_ns for p in moved.rglob("*.wandb")}


def test_parallel_loads(standin: StandIn, nasty_archive: Path, tmp_path: Path) -> None:
    """The pipeline loads several runs at once through one target: each gets its own staging and sync."""
    from concurrent.futures import ThreadPoolExecutor

    target = _target(standin, tmp_path)  # no entity: learned from the server on first use
    runs = runs_of(nasty_archive)
    with ThreadPoolExecutor(3) as pool:
        results = dict(zip(runs, pool.map(lambda r: target.load_run(r, LoadContext()), runs.values()), strict=True))
    assert len(standin.runs) == 3
    for key, run in runs.items():
        assert_run_matches(run, results[key], _read(target, run))


def test_sigkill_during_uploads_then_rerun(standin: StandIn, tmp_path: Path) -> None:
    """Killed while payloads upload (history already sent, run not finished): the rerun completes the run,
    sends no history row twice and commits each artifact once."""
    archive = tmp_path / "files"
    n = 3000
    with ArchiveWriter(archive).run(RunRef("ws/files", "FIL-1")) as w:
        w.add_series("m/x", "float_series", list(range(n)), [1_700_000_000_000 + i for i in range(n)],
                     [i / 3 for i in range(n)])
        for k in range(3):
            w.add_file(f"model/ckpt{k}", "file", bytes([k]) * 50_000, f"ckpt{k}.bin")
    standin.upload_delay = 3.0
    args = [sys.executable, "-c", _LOADER, str(archive), standin.url, str(tmp_path / "staging"),
            str(tmp_path / "checkpoint.json")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(op == "upload" for _m, _p, op in list(standin.requests)):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait(timeout=30)
    (server,) = standin.runs.values()
    assert not server.complete
    assert not any(a.state == "COMMITTED" for a in standin.artifacts.values())

    standin.upload_delay = 0.0
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    (server,) = standin.runs.values()
    assert server.complete and server.state == "finished"
    assert [r["_step"] for r in server.history()] == list(range(n))
    assert sum(c for f, _o, c in server.chunks if f == "wandb-history.jsonl") == n
    committed = sorted(a.name for a in standin.artifacts.values() if a.state == "COMMITTED")
    assert len(committed) == 3 and len(set(committed)) == 3
    for a in standin.artifacts.values():
        if a.state == "COMMITTED":
            (key,) = a.files.values()
            assert len(standin.blobs[key]) == 50_000
