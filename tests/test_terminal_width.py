"""At 80 columns or in a pipe, what the commands print fits the line, and no path, URI or command is cut in two:
a long title is shortened in its middle, a path too long for a table goes under it, a command is wrapped with
shell continuations that paste back into the same command. Everything real: the CLI in a subprocess, an MLflow
SQLite store, the nasty sample archive."""

from __future__ import annotations

import itertools
import shlex
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from neptune_migration.samples import write_nasty_archive
from neptune_migration.terminal import shell_lines, shorten

from .conftest import run_cli


@pytest.fixture
def deep() -> Iterator[Path]:
    """A folder whose paths are long enough (50-74 characters) to overflow any table cell, but not a line."""
    with tempfile.TemporaryDirectory(prefix="nm-") as tmp:
        folder = Path(tmp) / "long-folder" / "names-for-width"
        folder.mkdir(parents=True)
        yield folder


def _split_across_lines(text: str, whole: str) -> bool:
    """Whether `whole` ends one line and goes on at the start of the next (after indentation)."""
    lines = [line.rstrip(" \\") for line in text.splitlines()]
    for above, below in itertools.pairwise(lines):
        below = below.lstrip()
        for cut in range(1, len(whole)):
            if above.endswith(whole[:cut]) and below.startswith(whole[cut:cut + 8] or whole[cut:]):
                return True
    return False


def _check(text: str, paths: list[str]) -> None:
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long
    for path in paths:
        assert 50 <= len(path) <= 74, path  # the fixture's promise: longer than a cell, fits a line
        assert not _split_across_lines(text, path), f"{path} is split across lines:\n{text}"


@pytest.mark.parametrize("columns", ["80", None], ids=["COLUMNS=80", "pipe"])
def test_load_validate_status_fit_80_columns(deep: Path, columns: str | None) -> None:
    archive = write_nasty_archive(deep / "archive")
    store = f"sqlite:///{deep}/store/mlflow.db"
    state, report = deep / "state.db", deep / "report-dir"
    env = {"COLUMNS": columns} if columns else {}
    if not columns:
        env["COLUMNS"] = ""  # unset: rich falls back to 80 in a pipe
    common = ["--archive", str(archive), "--mlflow-tracking-uri", store, "--state", str(state), "--no-progress"]
    paths = [str(archive), store, str(state), str(report / "report.html")]

    loaded = run_cli("load", *common, env=env)
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    _check(loaded.stdout, paths)
    title = next(line for line in loaded.stdout.splitlines() if line.startswith("Load into"))
    assert title.endswith("store/mlflow.db") and ("…" in title or store in title), title

    # A param changed in the store: validation names the mismatch and prints the command that repairs it.
    with sqlite3.connect(f"{deep}/store/mlflow.db") as db:
        db.execute("UPDATE params SET value='changed' WHERE rowid IN (SELECT rowid FROM params LIMIT 2)")
    checked = run_cli("validate", *common, "--report-dir", str(report), env=env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    _check(checked.stdout, paths)
    assert str(report / "report.html") in checked.stdout.splitlines() or any(
        str(report / "report.html") in line for line in checked.stdout.splitlines())
    lines = checked.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("neptune-migrate retry"))
    command = [lines[start]]
    while command[-1].endswith(" \\"):
        command.append(lines[start + len(command)])
    pasted = shlex.split(" ".join(line.removesuffix(" \\") for line in command))
    assert pasted[:2] == ["neptune-migrate", "retry"]
    assert pasted[pasted.index("--mlflow-tracking-uri") + 1] == store
    assert pasted[pasted.index("--archive") + 1] == str(archive)

    shown = run_cli("status", "--state", str(state), env=env)
    assert shown.returncode == 0, shown.stderr
    _check(shown.stdout, paths)
    assert any(line.startswith("stage") and "done" in line for line in shown.stdout.splitlines())


def test_shell_lines_paste_back_into_the_same_command() -> None:
    command = ("neptune-migrate retry --archive /srv/a/very/long/archive/folder/name/that/goes/on --to mlflow "
               "--mlflow-tracking-uri 'sqlite:////srv/with space/mlflow.db' --tag 'two words' --all-tags "
               "--state /srv/state.db")
    lines = shell_lines(command, 60)
    assert all(len(line) <= 60 for line in lines), lines
    assert shlex.split(" ".join(line.removesuffix(" \\") for line in lines)) == shlex.split(command)
    assert shell_lines("short", 60) == ["short"]
    upload = "cd /srv/out/wandb-offline && wandb sync wandb/offline-run-20240101_000000-abc wandb/offline-run-2"
    lines = shell_lines(upload, 50)
    assert lines[0] == "cd /srv/out/wandb-offline && wandb sync \\" and all(len(x) <= 50 for x in lines), lines
    assert shlex.split(" ".join(line.removesuffix(" \\") for line in lines)) == shlex.split(upload)


def test_shorten_keeps_both_ends() -> None:
    uri = "mlflow:http://tracking.example.internal:5000/a/very/long/path/experiments"
    short = shorten(uri, 40)
    assert len(short) == 40 and short.startswith("mlflow:http://") and short.endswith("experiments")
    assert shorten("short", 40) == "short"




def test_discover_fits_80_columns_with_the_project_whole() -> None:
    from neptune_migration.sandbox import Sandbox, generate_project

    name = "a-longer-project-name-for-width-checks"
    with Sandbox([generate_project(name, runs=3)]) as sandbox:
        found = run_cli("discover", "--from", "neptune3", "-p", f"sandbox/{name}", "--no-progress",
                        env=sandbox.env() | {"COLUMNS": "80"})
    assert found.returncode == 0, found.stdout + found.stderr
    _check(found.stdout, [])
    lines = found.stdout.splitlines()
    assert f"sandbox/{name}" in lines, found.stdout  # whole, on a line of its own under the table
    assert any(line.startswith("  by type: ") for line in lines), found.stdout
    assert not _split_across_lines(found.stdout, f"sandbox/{name}")
