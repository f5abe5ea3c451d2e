"""Contract tests: the real neptune 1.14.0.post2 client against the sandbox's 2.x layer, compared with the model."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterator
from typing import Any

import pytest
from sandbox_helpers import client_env, ok, run_client, seeded_projects

from neptune_migration.sandbox import Project, Run, Sandbox
from neptune_migration.sandbox.api2 import TYPES_2X
from neptune_migration.sandbox.seed import big_project


@pytest.fixture(scope="module")
def sb2() -> Iterator[Sandbox]:
    with Sandbox(seeded_projects()) as sb:
        yield sb


@pytest.fixture(scope="module")
def n1_results(sb2: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    env = client_env(sb2, {"SANDBOX_TEST_DOWNLOADS": str(tmp_path_factory.mktemp("n1"))})
    start = len(sb2.request_log)
    results = run_client("sandbox_n1_calls.py", "contract_calls", env)
    results["__requests__"] = sb2.request_log[start:]
    return results


def naive_utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def table_cell(run: Run, path: str) -> Any:
    """What the 1.x client's runs table shows for one model attribute."""
    attr = run.attributes[path]
    v = attr.value
    if attr.type == "datetime":
        return naive_utc(v)
    if attr.type == "string_set":
        return ",".join(sorted(v))
    if attr.type in ("float_series", "string_series"):
        return v[-1].value if v else None
    return v


def demo(sb: Sandbox) -> Project:
    return sb.projects["sandbox/demo"]


def test_project_list_and_auth(n1_results: dict[str, Any], sb2: Sandbox) -> None:
    assert ok(n1_results, "projects") == sorted(sb2.projects)
    paths = [r.path for r in n1_results["__requests__"]]
    assert "/api/backend/v1/clients/config" in paths
    assert "/auth/realms/neptune/protocol/openid-connect/token" in paths, "the client always refreshes once"
    assert all(r.status < 400 for r in n1_results["__requests__"])


def test_runs_table_with_query_and_columns(n1_results: dict[str, Any], sb2: Sandbox) -> None:
    runs = [
        r
        for r in demo(sb2).runs
        if r.kind == "run" and not r.trashed and getattr(r.attributes.get("parameters/batch_size"), "value", None) == 64
        if "gpu" in r.attributes["sys/tags"].value
    ]
    assert runs
    columns = ["sys/id", "sys/custom_run_id", "parameters/learning_rate", "train/loss", "sys/creation_time"]
    expected = [{c: table_cell(r, c) for c in columns} for r in sorted(runs, key=lambda r: r.sys_id)]
    assert ok(n1_results, "runs_table") == expected


def test_runs_table_all_columns(n1_results: dict[str, Any], sb2: Sandbox) -> None:
    runs = sorted((r for r in demo(sb2).runs if r.kind == "run"), key=lambda r: r.sys_id)
    rows = ok(n1_results, "runs_table_all")
    assert [row["sys/id"] for row in rows] == [r.sys_id for r in runs]
    compared = 0
    for row, run in zip(rows, runs, strict=True):
        for attr in run.attributes.values():
            if attr.path == "sys/state":
                assert row[attr.path] == attr.value.capitalize()  # 2.x's experimentState, as the client shows it
            elif attr.type in ("float", "int", "string", "bool", "datetime", "string_set", "float_series"):
                if attr.type == "string" and attr.value == "":
                    continue  # pandas shows an empty string cell as missing
                assert row[attr.path] == table_cell(run, attr.path), (run.sys_id, attr.path)
                compared += 1
    assert compared > 100


def test_runs_table_by_state(n1_results: dict[str, Any], sb2: Sandbox) -> None:
    runs = sorted(r.sys_id for r in demo(sb2).runs if r.kind == "run" and not r.trashed)
    assert ok(n1_results, "runs_by_state") == {"inactive": runs, "active": []}


def test_models_table_and_registry(n1_results: dict[str, Any], sb2: Sandbox) -> None:
    models = ok(n1_results, "models_table")
    assert [m["sys/id"] for m in models] == ["DEMO-CLS"]
    assert models[0]["config/architecture"] == "resnet18" == ok(n1_results, "model_fetch")
    versions = ok(n1_results, "model_versions_table")
    assert sorted((v["sys/id"], v["sys/stage"]) for v in versions) == [
        ("DEMO-CLS-1", "staging"),
        ("DEMO-CLS-2", "production"),
    ]
    version = next(r for r in demo(sb2).runs if r.sys_id == "DEMO-CLS-2")
    weights = version.attributes["model/weights"].value
    got = ok(n1_results, "model_version")
    assert got["stage"] == "production" and got["accuracy"] == version.attributes["validation/accuracy"].value
    assert got["files"] == {weights.name: hashlib.sha256(weights.data).hexdigest()}


def nasty_run(sb: Sandbox) -> Run:
    run = sb.projects["sandbox/nasty"].run_by_sys_id("NASTY-1")
    assert run is not None
    return run


def test_structure_fetch_and_atoms(n1_results: dict[str, Any], sb2: Sandbox) -> None:
    run = nasty_run(sb2)
    visible = sorted(a.path for a in run.attributes.values() if a.type in TYPES_2X)
    assert ok(n1_results, "structure") == visible
    assert "nasty/hist" not in visible  # histogram series are 3.x only
    params = ok(n1_results, "fetch_params")
    # a namespace fetch returns the atoms; the client leaves string sets out of it
    assert params == {
        k.split("/", 1)[1]: v.value
        for k, v in run.attributes.items()
        if k.startswith("params/") and v.type != "string_set"
    }
    sys_values = ok(n1_results, "fetch_sys")
    assert sys_values["tags"] == run.attributes["sys/tags"].value and sys_values["id"] == "NASTY-1"
    atoms = ok(n1_results, "fetch_atoms")
    assert atoms["nasty/int_max"] == 2**63 - 1
    assert atoms["nasty/float_nan"] is None  # 2.x could not hold NaN; documented in docs/sandbox.md
    assert atoms["nasty/old_datetime"] == run.attributes["nasty/old_datetime"].value


def test_series_values_and_last(n1_results: dict[str, Any], sb2: Sandbox) -> None:
    run = nasty_run(sb2)

    def model_points(path: str) -> list[tuple[float, Any, int]]:
        return [
            (p.step, p.value, p.timestamp_ms)
            for p in run.attributes[path].value
            if not (isinstance(p.value, float) and not math.isfinite(p.value))
        ]

    assert ok(n1_results, "values_m0") == model_points("metrics/m0")
    assert ok(n1_results, "values_strings") == model_points("nasty/strings")
    special = ok(n1_results, "values_special")
    assert special == model_points("nasty/special_values")
    assert [s for s, *_ in special] == [0.0, 4.0, 5.0, 6.0]  # NaN and the infinities never reached 2.x
    assert math.copysign(1, special[1][1]) == -1.0
    assert ok(n1_results, "last_m1") == run.attributes["metrics/m1"].value[-1].value
    assert ok(n1_results, "last_strings") == run.attributes["nasty/strings"].value[-1].value


def test_downloads(n1_results: dict[str, Any], sb2: Sandbox) -> None:
    run = nasty_run(sb2)

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    f0 = run.attributes["files/f0"].value
    weird = run.attributes["nasty/file with spaces & ünïcode.txt"].value
    assert ok(n1_results, "download_file") == {f0.name: sha(f0.data), "weird.txt": sha(weird.data)}
    images = run.attributes["nasty/images"].value
    # the 1.x client names file series elements by index and content type, with no steps
    assert ok(n1_results, "download_series") == {f"{i}.png": sha(p.value.data) for i, p in enumerate(images)}

    first = demo(sb2).run_by_custom_id("baseline-1")
    assert first is not None
    file_set = first.attributes["source_code/files"].value
    assert ok(n1_results, "download_file_set") == {k: sha(v) for k, v in file_set.items()}
    assert ok(n1_results, "list_file_set") == [
        ("README.md", len(file_set["README.md"]), "file"),
        ("train.py", len(file_set["train.py"]), "file"),
        ("utils", 0, "directory"),
    ]
    assert ok(n1_results, "list_file_set_sub") == [("data.py", len(file_set["utils/data.py"]))]
    artifact = first.attributes["datasets/train"].value
    assert ok(n1_results, "artifact_hash") == artifact.hash
    assert ok(n1_results, "artifact_files") == [
        (f.file_path, f.file_hash, f.type, f.size, dict(f.metadata)) for f in artifact.files
    ]


def test_runs_table_past_ten_thousand(tmp_path: Any) -> None:
    project = big_project()
    with Sandbox([project]) as sb:
        env = client_env(sb, {"NEPTUNE_FETCH_TABLE_STEP_SIZE": "1000"})
        result = run_client("sandbox_n1_calls.py", "big_table_calls", env, timeout=300)
        searches = [r for r in sb.request_log if r.path.endswith("/entries/search/")]
    ids = result["ids"]
    assert len(ids) == len(project.runs) == 10_050
    assert ids == [r.sys_id for r in project.runs]  # ascending creation time, nothing lost or doubled
    offsets = [r.body["pagination"]["offset"] for r in searches]
    assert offsets[0] == 0 and searches[0].body["pagination"]["limit"] == 0, "the count call comes first"
    assert max(offsets) <= 10_000
    continued = [r for r in searches if "`sys/creation_time`:datetime >" in r.body["query"]["query"]]
    assert continued, "past 10,000 the client must continue with a 'sort column > last value' query"


def test_client_survives_faults() -> None:
    with Sandbox(seeded_projects()) as sb:
        f429 = sb.faults.add(r"/api/leaderboard/v1/attributes$", "429", nth=1, retry_after=1)
        f500 = sb.faults.add(r"/attributes/series/float$", "500", nth=1)
        f503 = sb.faults.add(r"/attributes/float$", "503", nth=1, retry_after=None)
        fdrop = sb.faults.add(r"/api/leaderboard/v1/experiments$", "drop", nth=1)
        result = run_client("sandbox_n1_calls.py", "fault_calls", client_env(sb))
        log = list(sb.request_log)
    run = demo(sb).run_by_sys_id("DEMO-2")
    assert run is not None
    assert result["lr"] == run.attributes["parameters/learning_rate"].value
    assert result["loss"] == [(p.step, p.value, p.timestamp_ms) for p in run.attributes["train/loss"].value]
    assert (f429.served, f500.served, f503.served, fdrop.served) == (1, 1, 1, 1)
    for path, status in (
        ("/api/leaderboard/v1/experiments", 0),
        ("/api/leaderboard/v1/attributes", 429),
        ("/api/leaderboard/v1/attributes/series/float", 500),
        ("/api/leaderboard/v1/attributes/float", 503),
    ):
        statuses = [r.status for r in log if r.path == path]
        assert statuses[0] == status and 200 in statuses[1:], (path, statuses)
