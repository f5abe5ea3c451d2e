"""neptune-query survives injected 429s, 5xx and dropped connections through its own retries, and pages
float series with afterStep; the request log proves what was served."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_helpers import client_env, run_client, seeded_projects

from neptune_migration.sandbox import Sandbox


@pytest.fixture()
def fresh_sandbox() -> Iterator[Sandbox]:
    with Sandbox(seeded_projects()) as sb:
        yield sb


def model_loss(sb: Sandbox) -> list[tuple[float, float, int, bool, float]]:
    run = sb.projects["sandbox/demo"].run_by_custom_id("baseline-1")
    assert run is not None
    return [(p.step, p.value, p.timestamp_ms, False, 1.0) for p in run.attributes["train/loss"].value]


def test_client_survives_faults(fresh_sandbox: Sandbox) -> None:
    sb = fresh_sandbox
    f429 = sb.faults.add(r"/entries/search/?$", "429", nth=1, retry_after=0.3)
    f500 = sb.faults.add(r"/proto/leaderboard/attributes/query$", "500", every=1, times=2)
    f503 = sb.faults.add(r"/proto/attributes/series/float$", "503", nth=1, retry_after=None)
    fdrop = sb.faults.add(r"/attributes/definitions/query$", "drop", nth=2)
    result = run_client("sandbox_nq_calls.py", "fault_calls", client_env(sb))

    assert result["experiments"] == ["baseline", "baseline-resumed", "lr-sweep", "wider-net"]
    demo = sb.projects["sandbox/demo"]
    expected_params = {
        r.custom_run_id: {a.path: a.value for a in r.attributes.values() if a.path.startswith("parameters/")}
        for r in demo.runs
        if r.kind == "run"
    }
    got_params = {
        label: {k: v for k, v in cells.items() if not (isinstance(v, float) and math.isnan(v))}
        for label, cells in result["table"].items()
    }
    assert got_params == expected_params
    assert result["metrics"][("baseline-1", "train/loss")] == model_loss(sb)

    assert (f429.served, f500.served, f503.served, fdrop.served) == (1, 2, 1, 1)
    log = sb.request_log
    statuses = [(r.path, r.status) for r in log]
    first_search = next(i for i, r in enumerate(log) if "/entries/search" in r.path)
    assert log[first_search].status == 429 and log[first_search + 1 :][0].status in (200, 429, 500, 503, 0)
    assert sum(1 for _, s in statuses if s == 500) == 2
    assert sum(1 for _, s in statuses if s == 503) == 1
    assert sum(1 for _, s in statuses if s == 0) == 1
    # every faulted route was eventually answered
    for pattern in ("/entries/search", "/proto/leaderboard/attributes/query", "/series/float", "/definitions/query"):
        assert any(pattern in p and s == 200 for p, s in statuses), pattern
    # the retried request is the same request: the 429'd search was repeated with the same body
    retried = next(r for r in log[first_search + 1 :] if "/entries/search" in r.path)
    assert retried.body == log[first_search].body


def test_retry_after_is_sent(fresh_sandbox: Sandbox) -> None:
    import urllib.error
    import urllib.request

    fresh_sandbox.faults.add(r"oauth-token", "429", nth=1, retry_after=2.5)
    req = urllib.request.Request(
        fresh_sandbox.url + "/api/backend/v1/authorization/oauth-token",
        headers={"X-Neptune-Api-Token": fresh_sandbox.api_token},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)
    assert caught.value.code == 429 and caught.value.headers["Retry-After"] == "2.5"
    with urllib.request.urlopen(req, timeout=5) as reply:
        assert reply.status == 200


def test_float_series_page_with_after_step(fresh_sandbox: Sandbox) -> None:
    sb = fresh_sandbox
    result: dict[str, Any] = run_client("sandbox_nq_calls.py", "paging_calls", client_env(sb))
    assert result["metrics"][("baseline-1", "train/loss")] == model_loss(sb)
    bodies = [r.body for r in sb.request_log if r.path.endswith("/series/float")]
    after_steps = [req["afterStep"] for b in bodies for req in b["requests"] if "afterStep" in req]
    assert len(bodies) >= 100 // 7 and after_steps == sorted(after_steps, reverse=True)
