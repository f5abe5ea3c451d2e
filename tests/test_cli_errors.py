"""Bad input gets one clear line on stderr and a non-zero exit: never a traceback, never a partial success."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from neptune_migration.samples import write_nasty_archive

from .conftest import free_port, run_cli


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_missing_archive(tmp_path: Path) -> None:
    result = run_cli("load", "--archive", str(tmp_path / "nope"), "--state", str(tmp_path / "s.db"))
    _assert_one_line_error(result, "archive not found")


def test_corrupt_parquet_fails_that_run_alone(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "a")
    part = next((archive / "data").rglob("*_part_0.parquet"))
    part.write_bytes(b"PAR1 this is not parquet")
    result = run_cli("load", "--archive", str(archive), "--state", str(tmp_path / "s.db"),
                     "--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr
    text = " ".join(result.stdout.split())
    assert "corrupt or unreadable parquet" in text and "failed " in text, result.stdout
    loaded = int(re.search(r"runs loaded (\d+)", text).group(1))  # type: ignore[union-attr]
    assert loaded > 0, result.stdout  # the good runs of the archive still load


def test_unreachable_tracking_server(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "a")
    result = run_cli("load", "--archive", str(archive), "--state", str(tmp_path / "s.db"),
                     "--mlflow-tracking-uri", f"http://127.0.0.1:{free_port()}", timeout=60)
    _assert_one_line_error(result, "cannot reach the MLflow tracking server", "connection refused")


def test_unknown_project_filter(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "a")
    result = run_cli("load", "--archive", str(archive), "-p", "nasty/typo", "--state", str(tmp_path / "s.db"),
                     "--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    _assert_one_line_error(result, "project 'nasty/typo' is not in the archive", "nasty/ünïcode-proj")


@pytest.mark.parametrize("option,value,needle", [
    ("--runs", "([", "--runs: invalid regular expression"),
    ("--since", "yesterday", "--since: expected a date"),
    ("--max-file-size", "lots", "--max-file-size: expected a size"),
    ("--include", "weights", "--include: unknown class 'weights'"),
])
def test_bad_selection_options(tmp_path: Path, option: str, value: str, needle: str) -> None:
    archive = write_nasty_archive(tmp_path / "a")
    result = run_cli("load", "--archive", str(archive), option, value, "--state", str(tmp_path / "s.db"),
                     "--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    _assert_one_line_error(result, needle)


def test_unknown_target(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "a")
    result = run_cli("load", "--archive", str(archive), "--to", "comet", "--state", str(tmp_path / "s.db"))
    _assert_one_line_error(result, "unknown target 'comet'")


def test_status_without_ledger(tmp_path: Path) -> None:
    result = run_cli("status", "--state", str(tmp_path / "none.db"))
    _assert_one_line_error(result, "no ledger")


def test_second_process_on_one_ledger_is_refused(tmp_path: Path) -> None:
    from neptune_migration.ledger import Ledger

    archive = write_nasty_archive(tmp_path / "a")
    with Ledger(tmp_path / "s.db"):
        result = run_cli("load", "--archive", str(archive), "--state", str(tmp_path / "s.db"),
                         "--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    _assert_one_line_error(result, "another neptune-migrate process is using")


def test_a_run_that_fails_makes_the_command_fail(tmp_path: Path) -> None:
    """A partial result is never reported as success: one failed run means a non-zero exit and its error shown."""
    archive = write_nasty_archive(tmp_path / "a")
    victim = next((archive / "files").rglob("model.bin"))
    victim.unlink()
    result = run_cli("load", "--archive", str(archive), "--state", str(tmp_path / "s.db"),
                     "--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--no-progress")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed nasty/ünïcode-proj/NASTY-1" in result.stdout and "missing from the archive" in result.stdout
    assert "runs loaded" in result.stdout and "Traceback" not in result.stderr


def test_usage_errors_are_clicks_own_with_suggestions(tmp_path: Path) -> None:
    typo = run_cli("load", "--archiv", str(tmp_path))
    assert typo.returncode == 2 and "No such option '--archiv'" in typo.stderr and "--archive" in typo.stderr
    assert "Traceback" not in typo.stderr and "rerun with -v" not in typo.stderr
    zero = run_cli("load", "--archive", str(tmp_path), "--workers", "0")
    assert zero.returncode == 2 and "'--workers'" in zero.stderr, zero.stderr
    command = run_cli("loda")
    assert command.returncode == 2 and "Did you mean 'load'?" in command.stderr, command.stderr
    stage = run_cli("status", "--stage", "bogus", "--state", str(tmp_path / "s.db"))
    assert stage.returncode == 2 and "'--stage'" in stage.stderr, stage.stderr


def test_report_dir_that_is_a_file_is_refused_before_any_work(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "a")
    (tmp_path / "report").write_text("not a folder")
    result = run_cli("validate", "--archive", str(archive), "--state", str(tmp_path / "s.db"),
                     "--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
                     "--report-dir", str(tmp_path / "report"))
    _assert_one_line_error(result, "--report-dir", "is a file")
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "s.db").exists()


def test_a_selection_that_matches_nothing_says_so(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "a")
    result = run_cli("load", "--archive", str(archive), "--runs", "^no-such-run$", "--state", str(tmp_path / "s.db"),
                     "--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "the selection matches none of the" in " ".join(result.stdout.split()), result.stdout


def test_sandbox_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run_cli("sandbox", "serve", "--port", str(busy.getsockname()[1]), timeout=60)
    _assert_one_line_error(result, "cannot serve on 127.0.0.1", "--port")
