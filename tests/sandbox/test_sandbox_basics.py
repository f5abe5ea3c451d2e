"""The sandbox's own surface: tokens and env, routing, auth, paging tokens the clients never reach, faults."""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from neptune_api.proto.neptune_pb.api.v1.model import attributes_pb2

from neptune_migration.sandbox import Sandbox, demo_project
from neptune_migration.sandbox.faults import Faults
from neptune_migration.sandbox.world import WIRE_TYPES


@pytest.fixture(scope="module")
def sb() -> Any:
    with Sandbox([demo_project()]) as sandbox:
        yield sandbox


def call(sb: Sandbox, method: str, path: str, body: Any = None, bearer: bool = True) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if bearer:
        with urllib.request.urlopen(
            urllib.request.Request(
                sb.url + "/api/backend/v1/authorization/oauth-token", headers={"X-Neptune-Api-Token": sb.api_token}
            )
        ) as r:
            headers["Authorization"] = "Bearer " + json.loads(r.read())["accessToken"]
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(sb.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_token_and_env(sb: Sandbox) -> None:
    token = json.loads(base64.b64decode(sb.api_token))
    assert token["api_address"] == token["api_url"] == sb.url and token["api_key"]
    env = sb.env()
    assert env["NEPTUNE_API_TOKEN"] == sb.api_token
    assert env["OAUTHLIB_INSECURE_TRANSPORT"] == "1"
    assert env["NEPTUNE_PROJECT"] == "sandbox/demo"
    assert sb.url.startswith("http://127.0.0.1:") and sb.port > 0


def test_wrong_api_token_and_missing_bearer_are_refused(sb: Sandbox) -> None:
    req = urllib.request.Request(
        sb.url + "/api/backend/v1/authorization/oauth-token", headers={"X-Neptune-Api-Token": "nope"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(req, timeout=5)
    assert caught.value.code == 401
    status, _ = call(sb, "POST", "/api/leaderboard/v1/leaderboard/attributes/definitions/query", {}, bearer=False)
    assert status == 401


def test_unknown_route_is_404_and_logged(sb: Sandbox) -> None:
    status, body = call(sb, "GET", "/api/nothing/here?x=1")
    assert status == 404 and b"no route" in body
    last = sb.request_log[-1]
    assert (last.method, last.path, last.query, last.status) == ("GET", "/api/nothing/here", {"x": "1"}, 404)


def test_attribute_values_page_token(sb: Sandbox) -> None:
    demo = sb.projects["sandbox/demo"]
    run = demo.runs[0]
    names = sorted(a.path for a in run.attributes.values() if a.type in WIRE_TYPES)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        body: dict[str, Any] = {
            "experimentIdsFilter": [f"sandbox/demo/{run.sys_id}"],
            "attributeNamesFilter": names,
            "nextPage": {"limit": 4} | ({"nextPageToken": token} if token else {}),
        }
        status, raw = call(
            sb, "POST", "/api/leaderboard/v1/proto/leaderboard/attributes/query?projectIdentifier=sandbox/demo", body
        )
        assert status == 200
        dto = attributes_pb2.ProtoQueryAttributesResultDTO.FromString(raw)
        page = [a.name for e in dto.entries for a in e.attributes]
        assert len(page) <= 4
        seen += page
        pages += 1
        token = dto.nextPage.nextPageToken
        if not token:
            break
    assert sorted(seen) == names and pages == -(-len(names) // 4)


def test_blob_missing_is_404(sb: Sandbox) -> None:
    status, _ = call(sb, "GET", "/sandbox/blob/sandbox/demo/nope", bearer=False)
    assert status == 404


def test_fault_rate_is_deterministic_per_seed() -> None:
    def fired(seed: int) -> list[bool]:
        faults = Faults(seed=seed)
        faults.add("x", "500", rate=0.5)
        return [faults.pick("GET", "/x") is not None for _ in range(40)]

    assert fired(1) == fired(1)
    assert 5 < sum(fired(1)) < 35
    faults = Faults()
    f = faults.add("^/a", "503", nth=3)
    assert [faults.pick("GET", "/a") is not None for _ in range(5)] == [False, False, True, False, False]
    assert f.seen == 5 and f.served == 1
    with pytest.raises(ValueError):
        faults.add("x", "418")


def test_rows_and_add_project() -> None:
    from neptune_migration.sandbox import generate_project

    project = generate_project("rows", runs=2, series=1, points=3, files=1, nasty=False)
    run = project.runs[0]
    rows = list(run.rows())
    series = [r for r in rows if r[0] == "metrics/m0"]
    assert [(r[1], r[2]) for r in series] == [("float_series", 0.0), ("float_series", 1.0), ("float_series", 2.0)]
    assert all(r[3] is not None for r in series)
    atoms = {r[0]: r for r in rows if r[2] is None}
    assert atoms["sys/custom_run_id"] == ("sys/custom_run_id", "string", None, None, "run-0000")
    assert len(rows) == len(run.attributes) - 1 + 3  # the series expands into its points

    with Sandbox([demo_project()]) as sb:
        sb.add_project(project)
        path = run.attributes["files/f0"].value.path
        assert path in sb.store.files
        status, body = call(sb, "GET", "/sandbox/blob/" + path, bearer=False)
        assert status == 200 and body == run.attributes["files/f0"].value.data
        with pytest.raises(ValueError):
            sb.add_project(project)


def test_file_names_beyond_latin1_download_over_2x() -> None:
    from neptune_migration.sandbox import FileValue, Project

    project = Project("ws", "names", key="NM")
    run = project.new_run("r", creation_time=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    run.set("files/cjk", FileValue(b"data", '名前 "x".txt'))
    with Sandbox([project]) as sb:
        status, body = call(
            sb, "GET", "/api/leaderboard/v1/attributes/download?experimentId=ws/names/NM-1&attribute=files/cjk"
        )
        assert status == 200 and body == b"data"
        req = urllib.request.Request(
            sb.url + "/api/leaderboard/v1/attributes/download?experimentId=ws/names/NM-1&attribute=files/cjk",
            headers={"Authorization": "Bearer " + _token(sb)},
        )
        with urllib.request.urlopen(req, timeout=5) as reply:
            assert reply.headers["Content-Disposition"] == 'attachment; filename="%E5%90%8D%E5%89%8D %22x%22.txt"'


def _token(sb: Sandbox) -> str:
    req = urllib.request.Request(
        sb.url + "/api/backend/v1/authorization/oauth-token", headers={"X-Neptune-Api-Token": sb.api_token}
    )
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())["accessToken"]
