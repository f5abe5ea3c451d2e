"""Validation without a server: series comparison, the source check, ledger records and the retry set."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.samples import write_nasty_archive
from neptune_migration.selection import Selection
from neptune_migration.stages.validate import (
    VALIDATE,
    RunCheck,
    SourceCounts,
    archive_counts,
    check_source,
    record_problem,
    runs_to_retry,
    stored_checks,
)
from neptune_migration.targets.mlflow.verify import MAX_DOUBLE, Series, compare_series, normalise_values
from neptune_migration.vocabulary import RunRef


def _series(points: list[tuple[int, int, float]]) -> Series:
    steps, ts, values = zip(*points, strict=True) if points else ((), (), ())
    return Series.build(np.array(steps, np.int64), np.array(ts, np.int64), np.array(values, np.float64))


def test_values_normalise_like_mlflow_stores_them() -> None:
    bits = normalise_values(np.array([math.inf, -math.inf, -0.0, math.nan, -math.nan, 5e-324]))
    as_float = bits.view(np.float64)
    assert as_float[0] == MAX_DOUBLE and as_float[1] == -MAX_DOUBLE
    assert bits[2] == np.array([0.0]).view(np.uint64)[0]  # -0.0 becomes +0.0
    assert bits[3] == bits[4]  # every NaN is one NaN
    assert as_float[5] == 5e-324


def test_equal_series_and_nan_aware_digest() -> None:
    a = _series([(0, 10, 1.0), (1, 11, math.nan), (2, 12, math.inf)])
    b = _series([(2, 12, MAX_DOUBLE), (0, 10, 1.0), (1, 11, float("nan"))])
    assert a.equals(b) and a.digest() == b.digest()
    assert not a.equals(_series([(0, 10, 1.0), (1, 11, 0.0), (2, 12, math.inf)]))


def test_compare_series_names_each_kind_of_difference() -> None:
    want = _series([(s, 1000 + s, s / 10) for s in range(20)])
    got_points = [(s, 1000 + s, s / 10) for s in range(20) if s != 3]  # step 3 deleted
    got_points[5] = (6, 1000 + 6, 99.0)  # value changed at step 6
    got_points[8] = (9, 5, 0.9)  # timestamp changed at step 9
    got_points += [(12, 1012, 1.2), (25, 1025, 2.5)]  # a repeat of step 12 and an unknown step 25
    check = RunCheck(RunRef("p", "r"))
    compare_series(check, "train/loss", "train/loss", 1, want, _series(got_points))
    kinds = {m.kind: m for m in check.mismatches}
    assert set(kinds) == {"missing_points", "extra_points", "point_count", "value", "timestamp"}
    assert all(m.attribute == "train/loss" for m in check.mismatches)
    assert "step(s) 3" in kinds["missing_points"].detail and "25" in kinds["extra_points"].detail
    assert "step 12 has 2 point(s), 1 expected" in kinds["point_count"].detail
    assert kinds["value"].expected == 0.6 and kinds["value"].actual == 99.0
    assert (kinds["timestamp"].expected, kinds["timestamp"].actual) == (1009, 5)


def test_compare_series_shows_neptune_steps_for_scaled_series() -> None:
    check = RunCheck(RunRef("p", "r"))
    compare_series(check, "m", "m", 100, _series([(29, 1, 1.0), (50, 2, 2.0)]), _series([(50, 2, 2.0)]))
    assert check.mismatches[0].detail.endswith("29 (Neptune step 0.29)")


def test_source_check_finds_missing_runs_and_differing_counts(tmp_path: Path) -> None:
    archive = Archive(write_nasty_archive(tmp_path / "a"))
    runs = {r.ref: r for r in archive.scan().runs}
    one, two = sorted(runs)
    counts = archive_counts(runs[one])
    assert counts.files == 6  # 3 files + a file series of 3 steps
    assert counts.points == sum(1 for _ in runs[one].table(
        ["float_series", "string_series", "histogram_series"], ["attribute_path"]).to_pylist())
    listed = {
        one: SourceCounts(counts.attributes, counts.points, counts.files),
        two: SourceCounts(points=3),  # the archive holds 2: one point was lost on export
        RunRef("nasty/ünïcode-proj", "NASTY-3"): SourceCounts(),  # listed, never exported
    }
    result = check_source(listed, archive)
    assert not result.ok
    assert result.missing == [RunRef("nasty/ünïcode-proj", "NASTY-3")]
    assert [(r, m.kind, m.expected, m.actual) for m, r in zip(result.differences, result.differing_runs,
                                                               strict=True)] == [(two, "source_points", 3, 2)]
    assert result.to_dict()["differences"][0]["run"] == two.key
    assert check_source({one: counts, two: SourceCounts(points=2)}, archive).ok
    # attributes left out by the selection are not expected either
    only_params = Selection.from_options(include=["params"])
    assert archive_counts(runs[one], only_params).points == 0


def test_ledger_keeps_mismatch_details_and_the_retry_set(tmp_path: Path) -> None:
    target = "mlflow:http://x"
    with Ledger(tmp_path / "s.db") as ledger:
        bad = RunCheck(RunRef("p", "A"), "id-a")
        bad.mismatch("params/lr", "param_value", "param 'params/lr' is '0.5' in MLflow, '0.1' expected")
        ledger.start(bad.ref, VALIDATE, target)
        record_problem(ledger, bad.ref, target, bad)
        broken = RunCheck(RunRef("p", "B"), error="ConnectionError: refused")
        ledger.start(broken.ref, VALIDATE, target)
        record_problem(ledger, broken.ref, target, broken)
        ledger.start(RunRef("p", "C"), "load", target)
        ledger.fail(RunRef("p", "C"), "load", target, "HTTP 500")
        ledger.start(RunRef("p", "D"), "load", "mlflow:http://elsewhere")
        ledger.fail(RunRef("p", "D"), "load", "mlflow:http://elsewhere", "HTTP 500")
        entry = ledger.get(bad.ref, VALIDATE, target)
        assert entry is not None and entry.status == "mismatch" and "params/lr" in (entry.last_error or "")
        assert entry.details["mismatches"][0]["attribute"] == "params/lr"
        assert ledger.get(broken.ref, VALIDATE, target).status == "failed"
        reload, recheck = runs_to_retry(ledger, target)
        assert reload == {RunRef("p", "A"), RunRef("p", "C")}
        assert recheck == {RunRef("p", "A"), RunRef("p", "B"), RunRef("p", "C")}
        stored = {c.ref.run_id: c for c in stored_checks(ledger, target)}
        assert stored["A"].mismatch_count == 1 and stored["A"].status == "mismatch"
        assert stored["B"].status == "error"
