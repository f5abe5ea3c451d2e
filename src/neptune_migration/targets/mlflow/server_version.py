"""Which MLflow tracking server we write to, and whether its version is one the tests run.

Every server since 2.x answers `GET /version` with its version as plain text. The supported range is the versions
tests/test_mlflow_server_versions.py loads into (docs/mlflow.md, "Server versions"); a server below its minimum is
refused before anything is written, one outside it otherwise is written to with a warning.
"""

from __future__ import annotations

import re

from neptune_migration.errors import TargetError

# The oldest server tested: 2.9-2.15 reject `:` in param and metric names (2.13-2.15 per MLflow issue #12940) and
# raise on long values that 2.16 truncates.
MINIMUM = (2, 16)
# The newest server tested (the minor version: its patch releases are taken as tested too).
NEWEST_TESTED = (3, 18)
# Servers before MLflow PR #24683 fail a batch holding a NaN point they already hold (a UNIQUE constraint error).
NAN_REPEAT_SAFE = (3, 11)
# DeleteExperimentTag answers 404 up to 3.0.0.
DELETES_EXPERIMENT_TAGS = (3, 1)

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse(text: str) -> tuple[int, int, int] | None:
    """`3.10.1` -> (3, 10, 1); `2.16.2.dev0` and `3.18.0rc1` keep their numbers; anything else None."""
    match = _VERSION.match(text.strip())
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def supported_range() -> str:
    return f"{MINIMUM[0]}.{MINIMUM[1]} to {NEWEST_TESTED[0]}.{NEWEST_TESTED[1]}.x"


def read(base_url: str, timeout: float) -> str | None:
    """The server's answer to `GET /version`, or None when it gives none (a proxy in front, Databricks)."""
    import requests

    try:
        response = requests.get(base_url.rstrip("/") + "/version", timeout=timeout)
    except requests.RequestException:
        return None
    text = response.text.strip()
    if response.status_code != 200 or parse(text) is None or len(text) > 40:
        return None
    return text


def judge(version: str | None, where: str) -> str | None:
    """A warning for a version outside the tested range (or unknown); a TargetError below the minimum."""
    parsed = parse(version) if version else None
    if parsed is None:
        return (f"the MLflow server at {where} did not say its version (GET /version); tested servers: "
                f"{supported_range()}")
    if parsed[:2] < MINIMUM:
        raise TargetError(
            f"the MLflow server at {where} is version {version}; this tool writes to servers "
            f"{supported_range()} (older ones reject names and values the mapping sends): upgrade the server, or "
            "load into a local store (--mlflow-tracking-uri sqlite:///PATH) and move it later"
        )
    if parsed[:2] > NEWEST_TESTED:
        return (f"the MLflow server at {where} is version {version}, newer than the newest tested "
                f"({supported_range()}); loading anyway, validate the result")
    return None


def at_least(version: str | None, wanted: tuple[int, int]) -> bool:
    """Whether `version` is `wanted` or newer; an unknown version is taken as new (a current server)."""
    parsed = parse(version) if version else None
    return parsed is None or parsed[:2] >= wanted

