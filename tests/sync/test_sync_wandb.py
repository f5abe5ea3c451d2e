"""`migrate --sync` into W&B offline folders: the same run id, one more folder resuming it with only the new
history rows, validation reading the folders joined."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neptune_migration.sandbox import Sandbox
from neptune_migration.targets.wandb.readback import _run_id_of, read_offline, read_offline_run, run_folders
from neptune_migration.targets.wandb.records import read_records

from .sync_helpers import POINTS, growing_project, migrate


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with Sandbox([growing_project("wb3"), growing_project("wb2"), growing_project("wbf", runs=2)]) as sb:
        yield sb


def _history_steps(folder: Path) -> list[int]:
    wandb_file = next(folder.glob("run-*.wandb"))
    return [rec.history.step.num for rec in read_records(wandb_file) if rec.WhichOneof("record_type") == "history"]


@pytest.mark.parametrize("source,project,grown", [("neptune3", "sync/wb3", "run-1"), ("neptune2", "sync/wb2", "WB2-1")])
def test_sync_resumes_the_same_wandb_run_with_only_new_rows(sandbox: Sandbox, tmp_path: Path, source: str,
                                                             project: str, grown: str) -> None:
    target = ["--to", "wandb-offline", "--wandb-dir", str(tmp_path / "wandb-root")]
    first = migrate(sandbox, source, project, tmp_path, *target)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = tmp_path / "wandb-root"
    folders = sorted((root / "wandb").glob("offline-run-*"))
    assert folders
    ids = {_run_id_of(f.name) for f in folders}

    new_steps = [POINTS + i for i in range(30)]
    # One timestamp per step for both series: W&B rows are per step and time, so they share a row.
    stamps = {s: 1_800_000_000_000 + s for s in new_steps}
    sandbox.changes.append(project, grown, "train/loss", [(s, 1.0 / s, stamps[s]) for s in new_steps])
    sandbox.changes.append(project, grown, "train/acc", [(s, 0.9, stamps[s]) for s in new_steps])
    second = migrate(sandbox, source, project, tmp_path, *target, "--sync")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"synced {project}/{grown}: +60 points" in second.stdout, second.stdout

    after = sorted((root / "wandb").glob("offline-run-*"))
    assert {_run_id_of(f.name) for f in after} == ids, "no new W&B run id"
    added = [f for f in after if f not in folders]
    assert len(added) == 1 and "_sync" in added[0].name, [f.name for f in added]
    wandb_id = _run_id_of(added[0].name)
    base, tail = run_folders(root, wandb_id)
    old_steps, new_rows = _history_steps(base), _history_steps(tail)
    # Only the new points were written, in rows whose steps continue after the earlier folder's.
    assert len(new_rows) == 30, "one row per new step, both series in it"
    assert min(new_rows) > max(old_steps)
    assert sum(len(v) for k, v in read_offline(tail, root).history.items() if k.startswith("train")) == 60
    record = next(r for r in read_records(next(tail.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run")
    assert record.run.run_id == wandb_id and record.run.resumed


def test_every_repeats_until_ctrl_c(sandbox: Sandbox, tmp_path: Path) -> None:
    """`--sync --every`: a round, a wait, another round; Ctrl-C while waiting ends it cleanly."""
    import os
    import signal
    import subprocess
    import time

    from ..conftest import VENV_BIN

    target = ["--to", "wandb-offline", "--wandb-dir", str(tmp_path / "wandb-root")]
    args = ["migrate", "--from", "neptune3", "-p", "sync/wb3", "--archive", str(tmp_path / "archive"), "--state",
            str(tmp_path / "state.db"), "--report-dir", str(tmp_path / "report"), "--no-progress", "--sync",
            "--every", "1s", *target]
    env = dict(os.environ, **sandbox.env(), COLUMNS="250")
    proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    rounds = 0
    deadline = time.monotonic() + 120
    while rounds < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        rounds += "next sync in 1s" in line
    assert rounds == 2, "two rounds, each announcing the next"
    time.sleep(0.3)  # inside the wait between rounds (a round of an unchanged project takes seconds)
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), err[-2000:]
    assert "Traceback" not in err


def test_a_failed_sync_is_finished_by_the_next_one(sandbox: Sandbox, tmp_path: Path) -> None:
    """The source refuses the tail of a series mid-sync: that sync fails, the archive keeps the run complete, and
    the next sync appends the new points once (not a whole re-export the target would never see)."""
    target = ["--to", "wandb-offline", "--wandb-dir", str(tmp_path / "wandb-root")]
    first = migrate(sandbox, "neptune3", "sync/wbf", tmp_path, *target)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    sandbox.changes.append("sync/wbf", "run-1", "train/loss", [(POINTS + i, 0.1) for i in range(10)])
    sandbox.faults.add(r"/attributes/series/float", "500")
    try:
        failed = migrate(sandbox, "neptune3", "sync/wbf", tmp_path, *target, "--sync", "--retry-budget", "1")
    finally:
        sandbox.faults.clear()
    assert failed.returncode == 1, failed.stdout[-3000:]
    again = migrate(sandbox, "neptune3", "sync/wbf", tmp_path, *target, "--sync")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "synced sync/wbf/run-1: +10 points" in again.stdout, again.stdout
    wandb_id = next(_run_id_of(f.name) for f in (tmp_path / "wandb-root" / "wandb").glob("offline-run-*_sync*"))
    steps = [s for s, _v, _t in read_offline_run(tmp_path / "wandb-root", wandb_id).history["train/loss"]]
    assert steps == list(range(POINTS + 10)), "every point once"
