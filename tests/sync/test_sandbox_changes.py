"""`Sandbox.changes`: a served project changes the way Neptune's would (the sync tests drive the real clients)."""

from __future__ import annotations

import pytest
import requests

from neptune_migration.sandbox import Sandbox
from neptune_migration.sandbox.world import to_ms

from .sync_helpers import POINTS, growing_project


@pytest.fixture
def sandbox() -> Sandbox:
    with Sandbox([growing_project("changes", runs=2)]) as sb:
        yield sb


def _modified(sb: Sandbox, run_id: str) -> int:
    return to_ms(sb.changes.run("sync/changes", run_id).attributes["sys/modification_time"].value)


def test_every_change_moves_the_modification_time_forward(sandbox: Sandbox) -> None:
    ch = sandbox.changes
    seen = [_modified(sandbox, "run-1")]
    ch.append("sync/changes", "run-1", "train/loss", [(POINTS, 0.1)])
    seen.append(_modified(sandbox, "run-1"))
    ch.set("sync/changes", "CHANG-1", "params/lr", 0.5)  # 2.x names the run by sys/id
    seen.append(_modified(sandbox, "run-1"))
    ch.rewrite("sync/changes", "run-1", "train/acc", [(0, 0.1)])
    seen.append(_modified(sandbox, "run-1"))
    ch.delete("sync/changes", "run-1", "logs/stdout")
    seen.append(_modified(sandbox, "run-1"))
    assert seen == sorted(set(seen)), "strictly increasing, even within one millisecond"
    run = ch.run("sync/changes", "run-1")
    assert run.attributes["train/loss"].value[-1].step == POINTS
    assert [p.step for p in run.attributes["train/acc"].value] == [0.0]
    assert run.attributes["params/lr"].value == 0.5 and "logs/stdout" not in run.attributes
    assert _modified(sandbox, "run-2") < seen[-1], "other runs are left alone"


def test_appends_keep_steps_growing_and_copy_on_write(sandbox: Sandbox) -> None:
    ch = sandbox.changes
    before = ch.run("sync/changes", "run-2").attributes["train/loss"].value
    ch.append("sync/changes", "run-2", "train/loss", [(POINTS + 1, 0.2, 1_800_000_000_000)])
    after = ch.run("sync/changes", "run-2").attributes["train/loss"].value
    assert before is not after and len(after) == len(before) + 1, "a reader holding the old list keeps it whole"
    with pytest.raises(ValueError, match="does not follow"):
        ch.append("sync/changes", "run-2", "train/loss", [(1, 0.0)])
    with pytest.raises(KeyError):
        ch.append("sync/changes", "nope", "train/loss", [(1, 0.0)])


def test_added_files_and_runs_are_served(sandbox: Sandbox) -> None:
    ch = sandbox.changes
    fv = ch.add_file("sync/changes", "run-1", "model/best", b"new bytes", "best.pt")
    assert sandbox.store.files[fv.path] is fv
    step = ch.add_file("sync/changes", "run-1", "images/pred", b"png", "p.png", step=3)
    assert ch.run("sync/changes", "run-1").attributes["images/pred"].value[-1].value is step
    run = ch.add_run("sync/changes", "run-3", experiment_name="later")
    assert sandbox.projects["sync/changes"].run_by_custom_id("run-3") is run
    # the 3.x listing sees the new run at once
    token = requests.get(f"{sandbox.url}/api/backend/v1/authorization/oauth-token",
                         headers={"X-Neptune-Api-Token": sandbox.api_token}, timeout=5).json()["accessToken"]
    found = requests.post(f"{sandbox.url}/api/leaderboard/v1/proto/leaderboard/entries/search/",
                          params={"projectIdentifier": "sync/changes", "type": "run"}, json={},
                          headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert found.status_code == 200 and b"CHANG-3" in found.content
