"""Every command line in the README and docs/ parses against the real CLI: no option in the docs that the
command does not have, no missing required option, no bad choice."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from neptune_migration.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def command_lines(page: Path) -> list[str]:
    """`neptune-migrate ...` lines inside fenced code blocks, continuation lines joined."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            match = re.search(r"(?:^|\s|/)neptune-migrate\s+(.*)$", line)
            if match and not line.lstrip().startswith("#"):
                found.append(match.group(1))
    return found


CASES = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in command_lines(page)]


def test_the_docs_show_command_lines() -> None:
    assert len(CASES) > 10


@pytest.mark.parametrize("page,line", CASES)
def test_documented_command_line_parses(page: str, line: str) -> None:
    args = shlex.split(line, comments=True)
    args = [a for a in args if a not in ("|", "&&")]
    name, rest = args[0], args[1:]
    command = app.commands.get(name)
    assert command is not None, f"{page}: unknown command {name!r} in: neptune-migrate {line}"
    if isinstance(command, click.Group):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"{page}: unknown sub-command in: neptune-migrate {line}"
        command, rest = sub, rest[1:]
    try:
        command.make_context(name, list(rest))
    except click.exceptions.Exit:
        pass  # --help
    except click.ClickException as exc:
        pytest.fail(f"{page}: `neptune-migrate {line}` does not parse: {exc.format_message()}")
