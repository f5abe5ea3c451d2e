"""`migrate --refresh` into W&B: a run that changed in Neptune gets a new run id (derived from its key and its
Neptune modification time), the run it replaces is tagged `superseded`, nothing is deleted, and validation reads
the new generation. Offline (run folders) and online (the stand-in server), through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from standin import DEFAULT_ENTITY, StandIn

from neptune_migration.sandbox import Attribute, Sandbox, generate_project
from neptune_migration.targets.wandb.names import run_id
from neptune_migration.targets.wandb.readback import find_run_folder, read_offline_run

KEY = "r" * 40
CLI = Path(sys.executable).parent / "neptune-migrate"
PROJECT = "sandbox/wrefresh"


def _cli(args: list[str], sb: Sandbox, work: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    full = dict(os.environ, **sb.env(), TMPDIR=str(work / "tmp"), NEPTUNE_MIGRATION_RETRIES="2", **env)
    full.pop("WANDB_SERVICE", None)
    result = subprocess.run([str(CLI), *args], env=full, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((work / "report" / "report.json").read_text())
    assert report["ok"] and report["totals"]["mismatches"] == 0 and report["totals"]["runs_validated"] == 3, \
        report["mismatches"][:5]
    return result


def _change(project: Any, index: int, value: str) -> tuple[str, str]:
    """Change a run in the sandbox as Neptune would: a new value, a later modification time. Returns (run key,
    the new modification time as the W&B config holds it)."""
    run = project.runs[index]
    run.attributes["params/changed"] = Attribute("params/changed", "string", value)
    mod = run.attributes["sys/modification_time"]
    later = mod.value + timedelta(hours=1)
    run.attributes["sys/modification_time"] = Attribute(mod.path, mod.type, later)
    return f"{PROJECT}/{run.custom_run_id}", later.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _load_details(work: Path, key: str) -> dict[str, Any]:
    """The ledger's record of a run's load: its target id and the warnings of the load."""
    import sqlite3

    project_id, run = key.rsplit("/", 1)
    with sqlite3.connect(work / "state.db") as db:
        target_id, details = db.execute("SELECT target_id, details FROM progress WHERE stage='load' AND "
                                        "project_id=? AND run_id=?", (project_id, run)).fetchone()
    return {"target_id": target_id, **json.loads(details)}


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _folders_of(tree: dict[str, str], wandb_run_id: str) -> dict[str, str]:
    return {k: v for k, v in tree.items() if k.split("/")[1].endswith("-" + wandb_run_id)}


def test_refresh_offline_new_generation_and_superseded(tmp_path: Path) -> None:
    project = generate_project("wrefresh", runs=3, series=1, points=20, files=1, seed=2, nasty=False)
    out = tmp_path / "out"
    args = ["migrate", "--from", "neptune3", "-p", PROJECT, "--to", "wandb-offline", "--wandb-dir", str(out),
            "--archive", str(tmp_path / "archive"), "--state", str(tmp_path / "state.db"), "--report-dir",
            str(tmp_path / "report"), "--workers", "2", "--no-progress"]
    with Sandbox([project]) as sb:
        _cli(args, sb, tmp_path)
        first = _tree(out)
        key, mod2 = _change(project, 1, "second")
        base, gen2 = run_id(key), run_id(key, mod2)
        _cli([*args, "--refresh"], sb, tmp_path)
        assert _load_details(tmp_path, key)["target_id"].endswith(gen2)
        assert any(f"replaces W&B run {base}" in w for w in _load_details(tmp_path, key)["warnings"])
        second = _tree(out)
        # The other runs are untouched; the changed one has a second folder under a new id.
        untouched = {k: v for k, v in first.items() if key.rsplit("/", 1)[1] not in k}
        assert {k: second[k] for k in untouched} == untouched
        assert _folders_of(second, gen2) and len({k.split("/")[1] for k in second}) == 4
        new = read_offline_run(out, gen2)
        assert new.config["params"]["changed"] == "second" and new.config["sys"]["modification_time"] == mod2
        assert new.config["neptune_migration"]["supersedes"] == base and "superseded" not in new.tags
        old = read_offline_run(out, base)
        assert "superseded" in old.tags and "params" in old.config and "changed" not in old.config["params"]
        assert old.config["neptune_migration"]["superseded_by"] == gen2
        assert old.config["neptune_migration"]["current"] == gen2
        assert old.history == read_offline_run(out, base).history and old.history_rows == 20  # nothing removed

        # A second change: the third generation replaces the second; the base points at the newest.
        _key, mod3 = _change(project, 1, "third")
        gen3 = run_id(key, mod3)
        _cli([*args, "--refresh"], sb, tmp_path)
        third = read_offline_run(out, gen3)
        assert third.config["params"]["changed"] == "third" and third.config["neptune_migration"]["supersedes"] == gen2
        second_gen = read_offline_run(out, gen2)
        assert "superseded" in second_gen.tags and second_gen.config["neptune_migration"]["superseded_by"] == gen3
        assert read_offline_run(out, base).config["neptune_migration"]["current"] == gen3
        assert len(list((out / "wandb").iterdir())) == 5

        # Without changes, a rerun (with or without --refresh) leaves every folder as it is.
        before = _tree(out)
        _cli([*args, "--refresh"], sb, tmp_path)
        _cli(args, sb, tmp_path)
        assert _tree(out) == before
    assert find_run_folder(out, base) is not None  # never deleted


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn().start()
    yield s
    s.stop()


def test_refresh_online_new_generation_and_superseded(standin: StandIn, tmp_path: Path) -> None:
    project = generate_project("wrefresh", runs=3, series=1, points=20, files=1, seed=2, nasty=False)
    args = ["migrate", "--from", "neptune3", "-p", PROJECT, "--to", "wandb", "--wandb-entity", DEFAULT_ENTITY,
            "--archive", str(tmp_path / "archive"), "--state", str(tmp_path / "state.db"), "--report-dir",
            str(tmp_path / "report"), "--workers", "2", "--no-progress"]
    env = {"WANDB_API_KEY": KEY, "WANDB_BASE_URL": standin.url}
    with Sandbox([project]) as sb:
        _cli(args, sb, tmp_path, **env)
        assert len(standin.runs) == 3
        key, mod2 = _change(project, 1, "second")
        base, gen2 = run_id(key), run_id(key, mod2)
        old_history = standin.run(DEFAULT_ENTITY, "wrefresh", base).history()
        result = _cli([*args, "--refresh"], sb, tmp_path, **env)
        assert KEY not in result.stdout + result.stderr
        assert _load_details(tmp_path, key)["target_id"].endswith(gen2)
    assert len(standin.runs) == 4, "the changed run gets a new id; nothing is deleted"
    new = standin.run(DEFAULT_ENTITY, "wrefresh", gen2)
    assert new.complete and new.state == "finished" and len(new.history()) == 20
    assert new.config["params"]["value"]["changed"] == "second"
    assert new.config["neptune_migration"]["value"]["supersedes"] == base
    assert "superseded" not in new.tags
    old = standin.run(DEFAULT_ENTITY, "wrefresh", base)
    assert "superseded" in old.tags
    assert old.config["neptune_migration"]["value"]["superseded_by"] == gen2
    assert old.config["neptune_migration"]["value"]["current"] == gen2
    assert "changed" not in old.config["params"]["value"]
    assert old.history() == old_history and old.complete  # the old run keeps its data
    assert "_wandb" in old.config  # wandb's own config block survives the update
