"""What neptune-query returns equals the seeded model, value for value (tables, every metric point, every
string/histogram/file series point), for the realistic demo project and for the nasty one."""

from __future__ import annotations

import math
from typing import Any

from sandbox_helpers import ok

from neptune_migration.sandbox import Attribute, FileValue, Histogram, Run, Sandbox
from neptune_migration.sandbox.world import WIRE_TYPES, Point, lineage_points


def expected_value(attr: Attribute) -> Any:
    """The table cell neptune-query should show for one model attribute."""
    v = attr.value
    if attr.is_series:
        if not v:
            # an empty series has no aggregates; the client reads the unset proto fields as their defaults
            return {"float_series": 0.0}.get(attr.type)
        v = v[-1].value
    if isinstance(v, FileValue):
        return ("file", v.path, v.size, v.mime_type)
    if isinstance(v, Histogram):
        return ("histogram", v.type, v.edges, v.values)
    return v


def same(cell: Any, want: Any) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(cell, float) and math.isnan(cell)
    if isinstance(want, int) and not isinstance(want, bool) and isinstance(cell, float):
        # pandas turns an int column with gaps into float64: exact up to 2**53 only (a client-side limit)
        return cell == float(want)
    return type(cell) is type(want) and cell == want if not isinstance(want, int) else cell == want


def check_table(table: dict[str, dict[str, Any]], runs: dict[str, Run]) -> int:
    assert set(table) == set(runs)
    compared = 0
    all_columns = {f"{a.path}:{a.type}" for r in runs.values() for a in r.attributes.values() if a.type in WIRE_TYPES}
    for label, run in runs.items():
        cells = table[label]
        assert set(cells) == all_columns, label
        for attr in run.attributes.values():
            if attr.type not in WIRE_TYPES:
                continue
            col = f"{attr.path}:{attr.type}"
            want = expected_value(attr)
            assert same(cells[col], want), (label, col, cells[col], want)
            compared += 1
        for col in all_columns - {f"{a.path}:{a.type}" for a in run.attributes.values() if a.type in WIRE_TYPES}:
            assert cells[col] is None or (isinstance(cells[col], float) and math.isnan(cells[col])), (label, col)
    return compared


def test_runs_table_equals_model(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    nasty = sandbox.projects["sandbox/nasty"]
    runs = {r.custom_run_id: r for r in nasty.runs if not r.trashed}
    assert check_table(ok(nq_results, "runs_table"), runs) > 150


def test_experiments_table_equals_model(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    demo = sandbox.projects["sandbox/demo"]
    leaders = {r.experiment_name: r for r in demo.experiment_leaders()}
    assert check_table(ok(nq_results, "exp_table"), leaders) > 100


def point_tuple(p: Point) -> tuple[Any, ...]:
    return (p.step, p.value, p.timestamp_ms, p.is_preview, p.completion_ratio)


def same_points(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> bool:
    if len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            if isinstance(b, float) and math.isnan(b):
                if not (isinstance(a, float) and math.isnan(a)):
                    return False
            elif a != b or (isinstance(b, float) and math.copysign(1, a) != math.copysign(1, b)):
                return False
    return True


def test_every_metric_point_equals_model(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    nasty = sandbox.projects["sandbox/nasty"]
    got = ok(nq_results, "metrics_runs")
    expected = {
        (run.custom_run_id, attr.path): [point_tuple(p) for p in attr.value]
        for run in nasty.runs
        if not run.trashed
        for attr in run.attributes.values()
        if attr.type == "float_series" and attr.value
    }
    assert set(got) == set(expected)
    for key, points in expected.items():
        assert same_points(got[key], points), key
    specials = [v for _, v, *_ in got[("run-0000", "nasty/special_values")]]
    assert math.isnan(specials[1]) and specials[2] == math.inf and specials[3] == -math.inf
    assert math.copysign(1, specials[4]) == -1.0, "-0.0 must keep its sign"
    assert [s for s, *_ in got[("run-0000", "nasty/fractional_steps")]] == [0.1, 0.29, 0.5, 1.25, 2.000001, 3.141592]
    assert [s for s, *_ in got[("run-0000", "nasty/huge_steps")]] == [0.0, 1e6, 2.0**40, 9.007199254740991e15]


def series_expected(run: Run, label: str, *, full: bool = False) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """Expected fetch_series points; with ``full`` a fork's inherited points come first, as the client asks."""
    out = {}
    paths: dict[str, str] = {}
    current: Run | None = run
    while current is not None:
        for attr in current.attributes.values():
            paths.setdefault(attr.path, attr.type)
        current = current.fork_parent if full else None
    for path, type_ in paths.items():
        if type_ not in ("string_series", "histogram_series", "file_series"):
            continue
        points = lineage_points(run, path, full=full)
        if points:
            out[(label, path)] = [(p.step, expected_value(Attribute(path, type_, [p])), p.timestamp_ms) for p in points]
    return out


def test_every_series_point_equals_model(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    nasty = sandbox.projects["sandbox/nasty"]
    expected: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for run in nasty.runs:
        if not run.trashed:
            expected |= {k: v for k, v in series_expected(run, run.custom_run_id).items() if k[1].startswith("nasty/")}
    assert ok(nq_results, "series_nasty") == expected

    demo = sandbox.projects["sandbox/demo"]
    expected = {}
    for run in demo.experiment_leaders():
        expected |= series_expected(run, run.experiment_name, full=True)
    assert ok(nq_results, "series_demo") == expected
    assert len(expected) >= 9
    assert ("baseline-resumed", "train/logs") in expected, "the fork inherits its parent's series"
