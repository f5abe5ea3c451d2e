"""`migrate --to aim` from the Neptune API sandbox: export, load and read-back overlapping run by run (the verifier
reads runs while the loader still writes others into the same repository)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import neptune_migration as nm
from neptune_migration.sandbox import Sandbox, generate_project

from .aim_read import runs_by_key


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    with Sandbox([generate_project("nasty", runs=6, points=40, files=2)]) as sb:
        yield sb


def test_migrate_from_neptune3_into_aim(sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)
    result = nm.migrate("neptune3", project=["sandbox/nasty"], to="aim", aim_repo=str(tmp_path / "aim-repo"),
                        archive=tmp_path / "archive", state=tmp_path / "state.db", report_dir=tmp_path / "report",
                        workers=3)
    assert result.ok, result.to_dict()
    totals = result.validation.report["totals"]
    assert totals["runs_validated"] == totals["runs_selected"] >= 4 and totals["points"] > 0 and totals["files"] > 0
    runs = runs_by_key(tmp_path / "aim-repo")
    assert len(runs) == totals["runs_validated"] and all(len(v) == 1 for v in runs.values())
