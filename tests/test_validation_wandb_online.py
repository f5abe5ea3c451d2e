"""Validation of runs loaded into a W&B server (the local stand-in the W&B tests use), read back via wandb.Api."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.samples import write_demo_archive
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.stages.validate import validate

sys.path.insert(0, str(Path(__file__).resolve().parent / "wandb"))
from standin import DEFAULT_ENTITY, StandIn

from neptune_migration.targets.wandb import online_plugin
from neptune_migration.targets.wandb.loader import WandbOnlineTarget


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    # As tests/wandb/conftest.py does: wandb writes only under tmp and never reaches the internet.
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (tmp_path / var.lower()).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    server = StandIn().start()
    yield server
    server.stop()


def _quiet(n: int) -> Tracker:
    return Tracker("t", n, Console(quiet=True), enabled=False)


def test_online_runs_validate_and_server_side_corruption_is_named(standin: StandIn, tmp_path: Path) -> None:
    archive = write_demo_archive(tmp_path / "a", runs=2, steps=40)
    target = WandbOnlineTarget(base_url=standin.url, api_key="k" * 40, staging_dir=tmp_path / "staging",
                               runs_per_second=50)
    target.check()
    with Ledger(tmp_path / "s.db") as ledger:
        assert not load(Archive(archive), target, Selection(), ledger, _quiet, 1).failed
        clean = validate(Archive(archive), target, Selection(), ledger, _quiet, 1)
        assert clean.ok, [c.summary_line() for c in clean.checks]
        assert all(c.checked["points"] > 0 and c.checked["files"] == 2 for c in clean.checks)
        # The report's run links: the run's page on the server it was loaded into.
        for check in clean.checks:
            spec = target.spec(next(r for r in Archive(archive).scan().runs if r.ref == check.ref))
            assert online_plugin.run_url(target, check.target_id) == (
                f"{standin.url}/{spec.entity}/{spec.project}/runs/{spec.run_id}")
        assert online_plugin.run_url(target, "never-loaded") is None

        run = next(r for r in Archive(archive).scan().runs if r.ref.run_id == "IMG-2")
        spec = target.spec(run)
        state = standin.run(DEFAULT_ENTITY, spec.project, spec.run_id)
        lines = state.streams["wandb-history.jsonl"]
        for offset, text in sorted(lines.items()):
            row = json.loads(text)
            if row.get("neptune_step", row.get("_step")) == 4 and "train/loss" in row:
                row["train/loss"] += 1.0
                lines[offset] = json.dumps(row)
                break
        else:
            raise AssertionError("no history row for train/loss at step 4")
        bad = validate(Archive(archive), target, Selection(), ledger, _quiet, 1)
    found = {c.ref.run_id: [(m.attribute, m.kind) for m in c.mismatches] for c in bad.checks}
    assert found == {"IMG-1": [], "IMG-2": [("train/loss", "value")]}
    # W&B's cloud answers the API on api.wandb.ai and shows runs on wandb.ai (no cloud here: the run's path is
    # set as read_back records it).
    cloud = WandbOnlineTarget(base_url="https://api.wandb.ai", api_key="k" * 40, staging_dir=tmp_path / "cloud")
    cloud._run_paths["r1"] = ("team", "my proj")
    assert online_plugin.run_url(cloud, "r1") == "https://wandb.ai/team/my%20proj/runs/r1"
