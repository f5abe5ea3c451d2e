"""W&B test fixtures: wandb kept out of $HOME, generated and real exporter archives."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from wandb_archives import write_nasty_archive

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "neptune-exporter-archives"


@pytest.fixture(autouse=True)
def wandb_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Everything wandb writes goes to a temporary folder, never $HOME; nothing reaches the internet."""
    base = tmp_path_factory.mktemp("wandb-home")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (base / var.lower()).mkdir()
        monkeypatch.setenv(var, str(base / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # unroutable: a leak fails loudly
    monkeypatch.setenv("HOME", str(base))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield base


@pytest.fixture(scope="session")
def nasty_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nasty_archive(tmp_path_factory.mktemp("nasty") / "archive", rows_per_part=700)


@pytest.fixture
def exporter_archives(tmp_path: Path) -> Path:
    """The real neptune-exporter outputs, copied (they are read-only)."""
    dest = tmp_path / "exporter"
    shutil.copytree(FIXTURES, dest)
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest
