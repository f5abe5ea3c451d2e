"""The NQL evaluator on the filters both clients send (text taken from what they actually build)."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from neptune_migration.sandbox import Project, nql

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def runs() -> dict[str, object]:
    p = Project("ws", "proj", key="P")
    a = p.new_run("a", experiment_name="exp-a", creation_time=T0, tags={"cpu", "x"})
    a.set("params/lr", 0.1)
    a.set("params/n", 3)
    a.set("params/name", 'he said "hi"\\')
    a.set("params/on", True)
    for step, v in enumerate([3.0, 1.0, 2.0]):
        a.log("loss", "float_series", step, v, T0)
    b = p.new_run("b", experiment_name="exp-b", creation_time=T0 + dt.timedelta(hours=1), tags={"gpu"})
    b.set("params/lr", 0.01)
    b.set("params/on", False)
    b.set("sys/archived", True)
    b.log("loss", "float_series", 0, math.nan, T0)
    return {"a": a, "b": b}


def pick(query: str, runs: dict[str, object]) -> list[str]:
    return sorted(name for name, run in runs.items() if nql.matches(nql.parse(query), run))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('(`sys/name`:string MATCHES "^exp-b$")', ["b"]),
        ('`sys/name`:string NOT MATCHES "^exp-b$"', ["a"]),
        ('(`params/lr`:float > "0.05") AND ((`sys/tags`:stringSet CONTAINS "cpu"))', ["a"]),
        ('`sys/tags`:stringSet NOT CONTAINS "cpu"', ["b"]),
        ('((`sys/trashed`:bool = false) AND (`sys/id`:string = "P-1"))', ["a"]),
        ("`sys/archived`:bool != true", ["a"]),
        ("`params/on`:bool = False", ["b"]),
        ("params/lr:float >= 0.01", ["a", "b"]),
        ("`params/n`:int EXISTS", ["a"]),
        ("NOT (`params/n`:int EXISTS)", ["b"]),
        ('`params/n`:float == "3"', ["a"]),  # int and float columns are interchangeable
        ('`params/n`:string == "3"', []),  # any other type mismatch hides the attribute
        ('last(`loss`:floatSeries) < "2.5"', ["a"]),  # last is 2.0; NaN compares false
        ('min(`loss`:floatSeries) = "1"', ["a"]),
        ('`loss`:floatSeries > "1.5"', ["a"]),
        ('`params/name`:string == "he said \\"hi\\"\\\\"', ["a"]),
        ('`sys/creation_time`:datetime > "2025-01-01T00:30:00+00:00"', ["b"]),
        ('`sys/creation_time`:datetime < "2025-01-01T01:00:00Z"', ["a"]),
        ('(`params/lr`:float = "0.1") OR (`sys/tags`:stringSet CONTAINS "gpu")', ["a", "b"]),
        ('`missing`:float != "1"', []),
        ("", ["a", "b"]),
        ("(`sys/state`:experimentState = idle)", ["a", "b"]),  # 1.x says idle/running for inactive/active
        ('(`sys/state`:experimentState = "running")', []),
    ],
)
def test_filters(query: str, expected: list[str], runs: dict[str, object]) -> None:
    assert pick(query, runs) == expected


def test_bad_query_is_an_error() -> None:
    for text in ("`x`:float >", '(`x`:float > "1"', '`x` LIKE "a"', '`x` = "unterminated'):
        with pytest.raises(nql.NqlError):
            nql.parse(text)


def test_sort_key_orders_missing_first_and_nan_low(runs: dict[str, object]) -> None:
    col = nql.column_of("loss", "floatSeries", "last")
    assert nql.sort_key(runs["b"], col) < nql.sort_key(runs["a"], col)  # type: ignore[arg-type]
    missing = nql.column_of("nope", None, None)
    assert nql.sort_key(runs["a"], missing) == (0, 0)  # type: ignore[arg-type]
