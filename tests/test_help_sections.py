"""`--help` in sections (cloup option groups): selection, source, the target, one section per target plug-in, run
control and output; each plug-in's options under its own heading; every line within 80 columns in a pipe."""

from __future__ import annotations

import pytest

from .conftest import run_cli

# What `migrate --help` shows, in this order.
MIGRATE_SECTIONS = ["Source", "Selection", "Target", "Target: mlflow", "Target: wandb, wandb-offline", "Run control",
                    "Output"]


def sections(help_text: str) -> dict[str, list[str]]:
    """Heading -> the options listed under it (their first flag, in order)."""
    found: dict[str, list[str]] = {}
    current = None
    for line in help_text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":") and not line.startswith("Usage"):
            current = found.setdefault(line[:-1], [])
        elif current is not None and line.startswith("  -"):
            flags = [w.rstrip(",") for w in line.split() if w.startswith("-")]
            current.append(next((f for f in flags if f.startswith("--")), flags[0]))
    return found


def _help(*command: str) -> str:
    result = run_cli(*command, "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    long = [line for line in result.stdout.splitlines() if len(line) > 80]
    assert not long, long
    return result.stdout


def test_migrate_help_is_in_sections_with_each_target_under_its_heading() -> None:
    found = sections(_help("migrate"))
    assert [s for s in found if s != "Other options"] == MIGRATE_SECTIONS
    assert found["Target: mlflow"][:3] == ["--mlflow-tracking-uri", "--experiment-by", "--experiment-prefix"]
    assert {"--mlflow-bulk", "--mlflow-bulk-allow-writers"} <= set(found["Target: mlflow"])
    assert set(found["Target: wandb, wandb-offline"]) == {"--wandb-entity", "--wandb-project",
                                                          "--wandb-project-prefix", "--wandb-dir"}
    assert not [f for name, flags in found.items() if not name.startswith("Target: wandb") for f in flags
                if f.startswith("--wandb")]
    assert not [f for name, flags in found.items() if name != "Target: mlflow" for f in flags
                if f.startswith("--mlflow") or f.startswith("--experiment-")]
    assert found["Source"][0] == "--from" and {"--api-token-file", "--lineage", "--query"} <= set(found["Source"])
    assert found["Selection"][0] == "--project" and {"--runs", "--exclude", "--file-pattern"} <= set(
        found["Selection"])
    # Both ends take --timeout and --retry-budget (one value for each): run control, not one plug-in's section.
    assert {"--workers", "--state", "--cluster", "--sync", "--every", "--timeout", "--retry-budget"} <= set(
        found["Run control"])
    assert {"--report-dir", "--no-progress", "--verbose", "--log-file"} == set(found["Output"])
    listed = [f for flags in found.values() for f in flags]
    assert len(listed) == len(set(listed)), "each option once"


@pytest.mark.parametrize("command,expected", [
    ("load", ["Source", "Selection", "Target", "Target: mlflow", "Target: wandb, wandb-offline", "Run control",
              "Output"]),
    ("export", ["Source", "Selection", "Target", "Run control", "Output"]),
    ("discover", ["Source", "Selection", "Run control", "Output"]),
    ("validate", ["Source", "Selection", "Target", "Target: mlflow", "Target: wandb, wandb-offline", "Run control",
                  "Output"]),
])
def test_every_command_has_the_same_sections(command: str, expected: list[str]) -> None:
    found = sections(_help(command))
    assert [s for s in found if s != "Other options"] == expected
    assert found.get("Other options", ["--help"]) == ["--help"]


def test_a_field_may_name_its_section() -> None:
    from dataclasses import dataclass

    from neptune_migration.cli.options import _sectioned
    from neptune_migration.options import option

    @dataclass
    class CometOptions:
        comet_workspace: str | None = option(help="Comet workspace.")
        comet_batch: int = option(100, help="Points per request.", panel="Run control")

    assert [(spec.flag, title) for spec, title in _sectioned([(CometOptions, "Target: comet")])] == [
        ("--comet-workspace", "Target: comet"), ("--comet-batch", "Run control")]
