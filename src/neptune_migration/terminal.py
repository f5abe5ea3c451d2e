"""Text for a terminal of any width, or a pipe: a path, URI or command is never split in the middle of a word.

A table cell or title too long for its line is shortened in the middle (its start and its file name stay); prose
and commands are wrapped at spaces only, a command with shell continuations so it can still be pasted whole.
"""

from __future__ import annotations

import re
import textwrap

# A shell word: runs of quoted strings and non-space characters ('a b' stays one word).
_WORD = re.compile(r"""(?:'[^']*'|"[^"]*"|\S)+""")
# Commands whose next word belongs with them on a line (their subcommand, or cd's folder).
_PROGRAMS = ("cd", "mlflow", "wandb", "neptune-migrate")


def shorten(text: str, width: int) -> str:
    """`text` in at most `width` characters, its middle replaced by an ellipsis."""
    if len(text) <= width:
        return text
    if width < 5:
        return text[:width]
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail:]


def word_lines(text: str, width: int, indent: str = "") -> list[str]:
    """Prose wrapped at spaces only: a word longer than a line (a long path) stays whole on a line of its own."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        lines += textwrap.wrap(paragraph, width, initial_indent=indent, subsequent_indent=indent,
                               break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]
    return lines


def shell_lines(command: str, width: int) -> list[str]:
    """A command wrapped at its words with ` \\` continuations, so pasting the lines runs the same command; an
    option stays on the line of its value where both fit."""
    if len(command) <= width:
        return [command]
    lines: list[str] = []
    current = ""
    for unit in _units(_WORD.findall(command), width):
        candidate = f"{current} {unit}" if current else unit
        if current and len(candidate) + 2 > width:
            lines.append(current + " \\")
            current = "  " + unit
        else:
            current = candidate
    return [*lines, current]


def _units(words: list[str], width: int) -> list[str]:
    """Words that read as one stay on one line: `--option value`, `cd FOLDER`, a program with its subcommand
    (`wandb sync`, `mlflow ui`) and `&&` with the command after it, each when it fits a continuation line."""
    units: list[str] = []
    for word in words:
        last = units[-1].split()[-1] if units else ""
        glue = last == "&&" or last.rsplit("/", 1)[-1] in _PROGRAMS or (
            last.startswith("-") and not word.startswith("-") and last == units[-1])
        if glue and len(units[-1]) + 1 + len(word) + 4 <= width:
            units[-1] += " " + word
        else:
            units.append(word)
    return units
