"""The W&B targets through the command line: load, validate, and the sync command a user runs later."""

from __future__ import annotations

import json
from pathlib import Path

from neptune_migration.samples import write_nasty_archive

from .conftest import run_cli


def test_load_and_validate_wandb_offline(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_CACHE_DIR": str(tmp_path / "wbc"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wbcfg"), "WANDB_DATA_DIR": str(tmp_path / "wbd")}
    common = ["--archive", str(archive), "--to", "wandb-offline", "--wandb-dir", str(tmp_path / "out"),
              "--state", str(tmp_path / "s.db"), "--no-progress"]
    loaded = run_cli("load", *common, env=env, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stdout[-3000:] + loaded.stderr[-3000:]
    assert "wandb sync" in loaded.stdout
    folders = sorted(p.name for p in (tmp_path / "out" / "wandb").iterdir() if p.name.startswith("offline-run-"))
    assert len(folders) == 2
    assert not any(p.is_symlink() for p in (tmp_path / "out").rglob("*")), "self-contained: no links to the archive"
    checked = run_cli("validate", *common, "--report-dir", str(tmp_path / "report"), env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["totals"]["runs_validated"] == 2 and report["totals"]["mismatches"] == 0
