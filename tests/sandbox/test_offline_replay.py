"""Seeding from data the real clients wrote offline: neptune-scale 0.30 and neptune 1.x write, their own
readers read, the replay builds model runs, and neptune-query reads them back through the sandbox."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import client_env, ok, run_client

from neptune_migration.sandbox import Project, Run, Sandbox
from neptune_migration.sandbox import offline_writers as w
from neptune_migration.sandbox.replay import replay_offline_tree


@pytest.fixture(scope="module")
def offline_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("offline")
    w.write_in_subprocess("scale", root / "scale")
    w.write_in_subprocess("neptune1", root / "n1")
    return {"scale": root / "scale", "n1": root / "n1"}


@pytest.fixture(scope="module")
def scale_project(offline_dirs: dict[str, Path]) -> Project:
    project = Project("offline-ws", "scale-proj", key="SCALE")
    replays = replay_offline_tree(project, offline_dirs["scale"])
    assert [r.skipped for r in replays] == [[], []]
    return project


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_scale_replay_matches_what_was_logged(scale_project: Project) -> None:
    run = scale_project.run_by_custom_id(w.SCALE_RUN)
    assert run is not None
    assert run.experiment_name == w.SCALE_EXPERIMENT and run.creation_time == w.T0
    for key, value in w.SCALE_CONFIGS.items():
        assert run.attributes[key].value == value, key
    assert run.attributes["params/batch"].type == "int" and run.attributes["params/lr"].type == "float"
    assert run.attributes["sys/tags"].value == w.SCALE_TAGS
    loss = run.attributes["train/loss"].value
    assert [p.step for p in loss] == [s for s, _ in w.SCALE_LOSS] + [w.SCALE_PREVIEW[0]]
    assert all(same_float(p.value, v) for p, (_, v) in zip(loss, w.SCALE_LOSS, strict=False))
    assert (loss[-1].is_preview, loss[-1].completion_ratio) == (True, w.SCALE_PREVIEW[2])
    assert not any(p.is_preview for p in loss[:-1])
    assert [(p.step, p.value) for p in run.attributes["train/logs"].value] == w.SCALE_LOGS
    hist = run.attributes["train/hist"].value[0]
    assert (hist.step, hist.value.edges, hist.value.values) == (1.0, [0.0, 1.0, 2.0], [3.0, 4.0])
    config = run.attributes["files/config"].value
    assert (config.data, config.name) == (b"lr: 0.125\n", "config.yaml")
    assert config.path.startswith(f"{w.SCALE_RUN}-") and config.path.endswith("/config.yaml")  # the client's own key
    image = run.attributes["images/sample"].value[0]
    assert image.step == 1.0 and image.value.data.startswith(b"\x89PNG") and image.value.mime_type == "image/png"

    fork = scale_project.run_by_custom_id(w.SCALE_FORK)
    assert fork is not None and fork.fork_parent is run and fork.fork_step == w.SCALE_FORK_STEP
    assert [(p.step, p.value) for p in fork.attributes["train/loss"].value] == w.SCALE_FORK_LOSS


@pytest.fixture(scope="module")
def n1_project(offline_dirs: dict[str, Path]) -> Project:
    project = Project("offline-ws", "n1-proj", key="NONE")
    replay_offline_tree(project, offline_dirs["n1"])
    return project


def test_neptune1_runs_served_to_the_1x_client(n1_project: Project) -> None:
    with Sandbox([n1_project]) as sb:
        result: dict[str, Any] = run_client("sandbox_n1_calls.py", "offline_n1_calls", client_env(sb))
    run = n1_project.runs[0]
    assert result["params"] == {
        k.split("/", 1)[1]: a.value
        for k, a in run.attributes.items()
        if k.startswith("params/") and a.type != "string_set"
    }
    assert result["loss"] == [(p.step, p.value, p.timestamp_ms) for p in run.attributes["train/loss"].value]
    assert result["logs"] == w.N1_LOGS and result["name"] == "n1 display name"


def test_neptune1_replay_matches_what_was_logged(offline_dirs: dict[str, Path]) -> None:
    project = Project("offline-ws", "n1-proj", key="NONE")
    (replay,) = replay_offline_tree(project, offline_dirs["n1"])
    run: Run = replay.run
    assert replay.skipped == ["UploadFileSet source_code/files"]  # file sets are not one of the 11 types
    for key, value in w.N1_ATOMS.items():
        assert run.attributes[key].value == value, key
    assert run.attributes["sys/name"].value == "n1 display name" and run.experiment_name == ""
    assert run.attributes["params/started"].value == w.T0
    assert run.attributes["params/set"].value == {"x", "y"}
    assert run.attributes["sys/tags"].value == {"offline", "n1"}
    assert [(p.step, p.value) for p in run.attributes["train/loss"].value] == [(float(s), v) for s, v in w.N1_LOSS]
    assert [p.timestamp_ms for p in run.attributes["train/loss"].value] == [
        round((w.T0.timestamp() + i) * 1000) for i in range(len(w.N1_LOSS))
    ]
    assert [p.value for p in run.attributes["train/logs"].value] == w.N1_LOGS
    assert run.attributes["files/weights"].value.data == bytes(range(256))
    assert run.attributes["files/inline"].value.data == b"inline content"
    image = run.attributes["images/sample"].value[0].value
    assert image.data.startswith(b"\x89PNG") and image.mime_type == "image/png"


def test_offline_runs_served_to_neptune_query(scale_project: Project) -> None:
    with Sandbox([scale_project]) as sb:
        result: dict[str, Any] = run_client("sandbox_nq_calls.py", "offline_calls", client_env(sb))
    run = scale_project.run_by_custom_id(w.SCALE_RUN)
    fork = scale_project.run_by_custom_id(w.SCALE_FORK)
    assert run is not None and fork is not None
    table = ok(result, "table")
    assert table[w.SCALE_RUN]["params/name:string"] == w.SCALE_CONFIGS["params/name"]
    assert table[w.SCALE_RUN]["params/batch:int"] == 32
    assert table[w.SCALE_RUN]["files/config:file"][2] == len(b"lr: 0.125\n")
    metrics = ok(result, "metrics")
    got = metrics[(w.SCALE_RUN, "train/loss")]
    want = [
        (p.step, p.value, p.timestamp_ms, p.is_preview, p.completion_ratio) for p in run.attributes["train/loss"].value
    ]
    assert len(got) == len(want)
    assert all(same_float(g[1], x[1]) and g[0] == x[0] and g[2:] == x[2:] for g, x in zip(got, want, strict=True))
    # the fork's full lineage: the parent's final points up to the fork step, then its own
    lineage = [s for s, *_ in metrics[(w.SCALE_FORK, "train/loss")]]
    assert lineage == [0.0, 0.5, 1.0, 2.0, 3.0, 4.0]
    series = ok(result, "series")
    assert [v for _, v, _ in series[(w.SCALE_RUN, "train/logs")]] == [line for _, line in w.SCALE_LOGS]
