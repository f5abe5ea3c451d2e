"""Errors a user can act on. The CLI prints their message on one line and exits non-zero; no traceback."""

from __future__ import annotations


class MigrationError(Exception):
    """Base class: the message is complete, safe to print (never holds a secret) and fits one line."""

    exit_code = 1


class UsageError(MigrationError):
    """The command line asked for something impossible (bad regex, unknown project, ...)."""

    exit_code = 2


class ArchiveError(MigrationError):
    """The archive is missing, unreadable, corrupt or hostile."""


class UnsafePathError(ArchiveError):
    """A path taken from an archive or a server would land outside its root."""


class TargetError(MigrationError):
    """The target refused, could not be reached, or answered something we cannot trust."""


class LedgerBusyError(MigrationError):
    """Another process holds the ledger."""


class Interrupted(MigrationError):
    """A stop was asked for (Ctrl-C, SIGTERM): what finished is kept, what did not is `interrupted` in the
    ledger and continues on the next call. `done`, `failed` and `interrupted` count the stage's runs."""

    exit_code = 130

    def __init__(self, stage: str, done: int, interrupted: int, failed: int = 0) -> None:
        self.stage, self.done, self.interrupted, self.failed = stage, done, interrupted, failed
        failed_part = f", {failed} failed" if failed else ""
        super().__init__(f"interrupted: {done} runs done{failed_part}, {interrupted} interrupted; "
                         "rerun the same command to continue")


def describe(exc: BaseException) -> str:
    """One line naming what went wrong: our own errors as they are, anything else with its type.

    Not redacted: callers redact (secrets.redact) before the text is stored or shown."""
    if isinstance(exc, MigrationError):
        return str(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def require(module: str, extra: str, what: str) -> None:
    """Refuse, in one line naming the extra to install, a source or target whose client library is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UsageError(f"{what} needs {module}: pip install 'neptune-migration[{extra}]'")
