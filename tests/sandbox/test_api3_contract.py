"""Contract tests: the real neptune-query 1.14.1 against the sandbox, with batch sizes small enough to page."""

from __future__ import annotations

from typing import Any

from sandbox_helpers import ok

from neptune_migration.sandbox import Sandbox
from neptune_migration.sandbox.world import WIRE_TYPES


def test_list_experiments(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    demo = sandbox.projects["sandbox/demo"]
    assert ok(nq_results, "experiments_all") == sorted(r.experiment_name for r in demo.experiment_leaders())
    assert ok(nq_results, "experiments_regex") == ["baseline", "baseline-resumed"]
    assert ok(nq_results, "experiments_names") == ["baseline", "lr-sweep"]
    # batch 64 and tag "gpu": wider-net and lr-sweep only
    assert ok(nq_results, "experiments_filter") == ["lr-sweep", "wider-net"]
    expected = sorted(
        r.experiment_name for r in demo.experiment_leaders() if r.attributes["train/loss"].value[-1].value < 0.2
    )
    assert expected, "the seed must give the metric filter something to find"
    assert ok(nq_results, "experiments_metric_filter") == expected


def test_list_runs(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    nasty = sandbox.projects["sandbox/nasty"]
    live = sorted(r.custom_run_id for r in nasty.runs if not r.trashed)
    assert ok(nq_results, "runs_all") == live
    assert "run-0001" not in live  # the trashed one
    assert ok(nq_results, "runs_regex") == ["lr-sweep-1", "lr-sweep-2"]
    assert ok(nq_results, "runs_filter") == ["run-0000", "run-0002", "run-0004"]
    assert ok(nq_results, "runs_exists") == ["run-0000"]


def test_list_attributes(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    demo = sandbox.projects["sandbox/demo"]
    leader = next(r for r in demo.experiment_leaders() if r.experiment_name == "baseline")
    # file sets and artifacts are 2.x-only kinds: neptune-query never sees them
    assert ok(nq_results, "attributes_exp") == sorted(
        a.path for a in leader.attributes.values() if a.type in WIRE_TYPES
    )
    assert ok(nq_results, "attributes_regex") == [
        "parameters/augment",
        "parameters/batch_size",
        "parameters/learning_rate",
        "parameters/optimizer",
    ]
    nasty = sandbox.projects["sandbox/nasty"]
    typed = sorted(
        {
            a.path
            for r in nasty.runs
            if not r.trashed
            for a in r.attributes.values()
            if a.path.startswith("nasty/") and a.type in ("float_series", "file")
        }
    )
    assert ok(nq_results, "attributes_typed") == typed


def test_tables_cover_all_eleven_types(nq_results: dict[str, Any]) -> None:
    seen = set()
    for name in ("exp_table", "runs_table"):
        for cells in ok(nq_results, name).values():
            seen |= {col.rsplit(":", 1)[1] for col, v in cells.items() if v is not None}
    assert seen >= {
        "float",
        "int",
        "string",
        "bool",
        "datetime",
        "string_set",
        "float_series",
        "string_series",
        "histogram_series",
        "file",
        "file_series",
    }


def test_runs_table_sort(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    nasty = sandbox.projects["sandbox/nasty"]
    live = [r for r in nasty.runs if not r.trashed]
    expected = [r.custom_run_id for r in sorted(live, key=lambda r: r.attributes["params/lr"].value)]
    assert ok(nq_results, "runs_table_sorted") == expected


def test_every_paging_path_ran(nq_results: dict[str, Any]) -> None:
    requests = nq_results["__requests__"]

    def bodies(path_part: str) -> list[Any]:
        return [r.body for r in requests if path_part in r.path and r.body is not None]

    search = bodies("/entries/search")
    assert any(b["pagination"].get("offset", 0) > 0 for b in search), "entries search never paged by offset"
    assert any(b.get("experimentLeader") for b in search) and any(not b.get("experimentLeader") for b in search)
    assert any(b["nextPage"].get("nextPageToken") for b in bodies("/attributes/definitions/query"))
    # the client splits value requests to fit its batch size, so it never needs the page token (tested directly
    # in test_sandbox_basics); here the split itself must have happened
    values = bodies("/proto/leaderboard/attributes/query")
    assert len(values) > 10 and all(b["nextPage"]["limit"] == 5 for b in values)
    series = bodies("/proto/attributes/series")
    assert any(req.get("searchAfter", {}).get("token") for b in series for req in b["requests"])
    assert all(r.status == 200 for r in requests), [r for r in requests if r.status != 200]
    tokens = [r for r in requests if r.path.endswith("/oauth-token")]
    assert len(tokens) == 1, "the client should exchange its API token once"


def test_metric_previews_and_lineage(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    nasty = sandbox.projects["sandbox/nasty"]
    first = nasty.run_by_custom_id("run-0000")
    assert first is not None
    with_preview = ok(nq_results, "metrics_runs")[("run-0000", "nasty/with_preview")]
    assert [(s, p, c) for s, _, _, p, c in with_preview] == [
        (p.step, p.is_preview, p.completion_ratio) for p in first.attributes["nasty/with_preview"].value
    ]
    committed = ok(nq_results, "metrics_no_preview")[("run-0000", "nasty/with_preview")]
    assert [s for s, *_ in committed] == [0.0, 1.0, 2.0]

    fork = nasty.run_by_custom_id("run-fork")
    assert fork is not None and fork.fork_parent is not None
    full = ok(nq_results, "metrics_lineage")[("run-fork", "metrics/m0")]
    parent_points = [p for p in fork.fork_parent.attributes["metrics/m0"].value if p.step <= fork.fork_step]
    expected = [(p.step, p.value, p.timestamp_ms) for p in parent_points + fork.attributes["metrics/m0"].value]
    assert [(s, v, t) for s, v, t, _, _ in full] == expected
    # without lineage the fork holds only its own points
    own = ok(nq_results, "metrics_runs")[("run-fork", "metrics/m0")]
    assert [s for s, *_ in own] == [p.step for p in fork.attributes["metrics/m0"].value]


def test_metrics_step_range_and_tail(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    got = ok(nq_results, "metrics_experiments")
    demo = sandbox.projects["sandbox/demo"]
    leader = next(r for r in demo.experiment_leaders() if r.experiment_name == "baseline")
    points = [p for p in leader.attributes["train/loss"].value if 10 <= p.step <= 60][-30:]
    assert got[("baseline", "train/loss")] == [(p.step, p.value, p.timestamp_ms, False, 1.0) for p in points]


def test_series_tail_limit(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    demo = sandbox.projects["sandbox/demo"]
    leader = next(r for r in demo.experiment_leaders() if r.experiment_name == "baseline")
    expected = [(p.step, p.value, p.timestamp_ms) for p in leader.attributes["train/logs"].value[-4:]]
    assert ok(nq_results, "series_tail")[("baseline", "train/logs")] == expected


def test_downloads_from_table_and_series(nq_results: dict[str, Any], sandbox: Sandbox) -> None:
    import hashlib

    demo = sandbox.projects["sandbox/demo"]
    leaders = {r.experiment_name: r for r in demo.experiment_leaders()}
    table = ok(nq_results, "download_table")
    expected_table = {
        (name, None, "model/checkpoint"): hashlib.sha256(run.attributes["model/checkpoint"].value.data).hexdigest()
        for name, run in leaders.items()
        if "model/checkpoint" in run.attributes
    }
    assert {k: v for k, v in table.items() if v is not None} == expected_table
    series = ok(nq_results, "download_series")
    expected_series = {
        ("wider-net", p.step, "eval/predictions"): hashlib.sha256(p.value.data).hexdigest()
        for p in leaders["wider-net"].attributes["eval/predictions"].value
    }
    assert series == expected_series
