"""The options around `--sync`: durations, and the mistakes that get one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from neptune_migration.api import parse_interval
from neptune_migration.errors import UsageError

from ..conftest import run_cli


def test_every_takes_durations() -> None:
    assert parse_interval("15m") == 900
    assert parse_interval("1h") == 3600
    assert parse_interval("90s") == 90
    assert parse_interval("2d") == 172_800
    assert parse_interval(0.5) == 0.5
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(UsageError, match="--every"):
            parse_interval(bad)


@pytest.mark.parametrize("args,message", [
    (["--every", "15m"], "--every repeats a sync: pass --sync with it"),
    (["--sync", "--refresh"], "--sync and --refresh do not go together"),
    (["--sync", "--every", "soon"], "--every takes a duration like 15m"),
])
def test_bad_sync_options_get_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("migrate", "--from", "neptune3", "-p", "ws/p", "--to", "mlflow", "--mlflow-tracking-uri",
                     f"sqlite:///{tmp_path / 'm.db'}", "--state", str(tmp_path / "s.db"), *args,
                     env={"NEPTUNE_API_TOKEN": ""})
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
