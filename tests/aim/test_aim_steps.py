"""Aim's integer steps: the per-series scale, its limits, and points that share a step."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import neptune_migration as nm
from neptune_migration.archive import ArchiveWriter
from neptune_migration.samples import BASE_TIME
from neptune_migration.targets.tracker_rules import exact_step, scaled_step, step_decimals
from neptune_migration.vocabulary import RunRef, step_to_decimal

from .aim_read import points, runs_by_key


def _steps(*steps: float) -> list[Decimal]:
    return [exact_step(*step_to_decimal(s)) for s in steps]


def test_step_scale_is_the_fewest_decimals_that_make_every_step_whole() -> None:
    assert step_decimals(_steps(0, 1, 2)) == 0
    assert step_decimals(_steps(0.5, 1.25, 100.0)) == 2
    assert step_decimals(_steps(0.1234567)) == 7  # beyond decimal(18, 6): the archive's exact float
    assert [scaled_step(s, 7) for s in _steps(0.1234567, 0.2)] == [(1234567, False), (2000000, False)]
    assert [scaled_step(s, 0) for s in _steps(9.007199254740991e15)] == [(9007199254740991, False)]


def test_a_scale_that_would_overflow_int64_is_lowered_and_the_steps_rounded() -> None:
    steps = _steps(9e15, 0.25)
    assert step_decimals(steps) == 2 and scaled_step(steps[1], 2) == (25, False)
    steps = _steps(9e17, 0.25)
    assert step_decimals(steps) == 1
    assert scaled_step(steps[1], 1) == (2, True)  # 2.5 rounded half to even


def test_points_sharing_a_step_keep_the_last_and_validate_with_the_approximation(tmp_path: Path) -> None:
    with ArchiveWriter(tmp_path / "archive").run(RunRef("acme/dup", "DUP-1")) as w:
        w.add_atom("sys/creation_time", "datetime", BASE_TIME)
        w.add_series("train/loss", "float_series", [0, 1, 1, 2], [BASE_TIME + timedelta(seconds=s) for s in range(4)],
                     [4.0, 3.0, 2.5, 2.0])
        w.add_series("train/huge", "float_series", [9e17, 0.25], [BASE_TIME, BASE_TIME], [1.0, 2.0])
    options = dict(to="aim", aim_repo=str(tmp_path / "aim-repo"), state=tmp_path / "state.db")
    loaded = nm.load(tmp_path / "archive", **options)
    assert loaded.ok
    assert loaded.summary.outcomes[0].result.approximations == {
        "aim_duplicate_step_kept_last": 1, "aim_step_rounded": 1, "aim_steps_scaled": 1,
        "aim_datetime_param_as_text": 1}
    (run,) = runs_by_key(tmp_path / "aim-repo")["acme/dup/DUP-1"]
    assert {s: p[0] for s, p in points(run, "train/loss").items()} == {0: 4.0, 1: 2.5, 2: 2.0}
    assert sorted(points(run, "train/huge")) == [2, 9 * 10**18]
    checked = nm.validate(tmp_path / "archive", report_dir=tmp_path / "report", **options)
    assert checked.ok, checked.to_dict()
    assert checked.summary.checks[0].approximations == loaded.summary.outcomes[0].result.approximations
