"""The rules that differ between MLflow servers, without starting one: the version judgement, the points a run
found again already holds (read from a real MLflow store), a released claim read as free, and the report's line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from neptune_migration.errors import TargetError
from neptune_migration.report import build_report, render_html, render_markdown
from neptune_migration.stages.validate import ValidationSummary
from neptune_migration.targets.mlflow import server_version as versions
from neptune_migration.targets.mlflow.held import HeldPoints
from neptune_migration.targets.mlflow.lease import LEASE_TAG, ExperimentLeases


def test_versions_below_the_minimum_are_refused_and_past_the_newest_warned() -> None:
    assert versions.parse("3.10.1") == (3, 10, 1) and versions.parse("2.16.2.dev0") == (2, 16, 2)
    assert versions.parse("<html>") is None
    with pytest.raises(TargetError, match=r"version 2\.9\.2; .* 2\.16 to 3\.18\.x"):
        versions.judge("2.9.2", "http://h")
    assert versions.judge("2.16.2", "http://h") is None and versions.judge("3.18.0", "http://h") is None
    assert "newer than the newest tested" in (versions.judge("3.19.0", "http://h") or "")
    assert "did not say its version" in (versions.judge(None, "http://h") or "")
    assert not versions.at_least("3.0.0", versions.DELETES_EXPERIMENT_TAGS)
    assert versions.at_least("3.10.1", versions.DELETES_EXPERIMENT_TAGS) and versions.at_least(None, (9, 9))


def _point(key: str, step: int, value: float) -> dict:
    return {"key": key, "value": value, "timestamp": 1000 + step, "step": step}


def test_only_the_points_a_run_lacks_are_sent_again(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("held", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(exp).info.run_id
    sent = [_point("m", 0, math.nan), _point("m", 1, math.inf), _point("m", 2, -0.0), _point("m", 3, 1.5)]
    client.log_batch(run_id, metrics=[Metric(p["key"], p["value"], p["timestamp"], p["step"]) for p in sent])
    held = HeldPoints.of(client, run_id, lambda call: call())
    batch = [*sent, _point("m", 4, math.nan), _point("m", 3, 1.25), _point("other", 0, 1.0)]
    assert held.missing(batch) == batch[4:], "NaN, inf and -0.0 held are recognised; new points and keys kept"
    assert held.skipped == 4


def test_a_released_claim_is_free_for_another_host(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("claimed", artifact_location=(tmp_path / "a").as_uri())
    first = ExperimentLeases(client, lambda call: call())
    first.claim(exp, "claimed")
    first.deletes_tags = False  # as on a server without DeleteExperimentTag
    first.release()
    assert json.loads(client.get_experiment(exp).tags[LEASE_TAG])["released"] is True
    other = ExperimentLeases(client, lambda call: call())
    other.me["host"] = "another-host"
    other.claim(exp, "claimed")  # would be refused for 90 s if the released value were read as a live claim
    other.release()
    assert LEASE_TAG not in client.get_experiment(exp).tags


def test_the_report_names_the_server() -> None:
    report = build_report(ValidationSummary("mlflow:http://h", checks=[], seconds=0.1))
    report["target_server"] = "MLflow server 3.10.1"  # as api.validate adds it from the target
    assert "Target `mlflow:http://h` (MLflow server 3.10.1)" in render_markdown(report)
    assert "<code>mlflow:http://h</code> (MLflow server 3.10.1)" in render_html(report)
