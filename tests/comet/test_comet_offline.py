"""`--to comet-offline`: the nasty archive into comet_ml offline archives, checked against comet_ml's own message
schemas and its `comet offline` tool, read back by the verifier; reruns, leftovers of a killed attempt, tampering.
(A SIGKILL in the middle of a load is the conformance suite's case, tests/conformance, run for this target too.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import neptune_migration as nm
from neptune_migration.samples import write_nasty_archive

VENV_BIN = Path(sys.executable).parent
NASTY = "nasty/ünïcode-proj/NASTY-1"
# comet_ml's validators of each message type, as `comet upload` (OfflineSender) applies them to a payload.
VALIDATORS = {"log_other": "get_log_other_msg_validator", "parameter_msg": "get_parameter_msg_validator",
              "metric_msg": "get_metric_msg_validator", "file_upload": "get_upload_msg_validator"}


def _options(root: Path) -> dict:
    return dict(to="comet-offline", comet_dir=str(root / "comet"), state=root / "state.db", progress=False, workers=2)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("comet")
    archive = write_nasty_archive(root / "archive")
    result = nm.load(archive, **_options(root))
    assert result.ok, result.to_dict()
    checked = nm.validate(archive, report_dir=root / "report", **_options(root))
    return {"root": root, "archive": archive, "load": result, "validate": checked}


def _zips(root: Path) -> list[Path]:
    return sorted((root / "comet").glob("*.zip"))


def _messages(path: Path) -> list[dict]:
    with zipfile.ZipFile(path) as z:
        return [json.loads(line) for line in z.read("messages.json").splitlines()]


def test_nasty_archive_validates_clean(loaded: dict) -> None:
    checked = loaded["validate"]
    assert checked.ok, checked.to_dict()
    nasty = {c.ref.key: c for c in checked.summary.checks}[NASTY]
    assert nasty.checked == {"metadata": 9, "params": 26, "series": 2526, "files": 3, "images": 3}
    assert nasty.approximations == {"comet_failed_as_error_status": 1, "comet_string_set_as_json_text": 3,
                                    "comet_datetime_as_text": 3, "comet_steps_scaled": 4,
                                    "comet_histogram_rebinned": 2}
    assert loaded["load"].summary.outcomes[0].result.approximations == nasty.approximations
    assert len(_zips(loaded["root"])) == 2 and not list((loaded["root"] / "comet").glob(".tmp-*"))


def test_every_message_passes_comet_ml_schemas(loaded: dict) -> None:
    from comet_ml import schemas

    experiment = schemas.get_experiment_file_validator()
    validators = {kind: getattr(schemas, name)() for kind, name in VALIDATORS.items()}
    for path in _zips(loaded["root"]):
        with zipfile.ZipFile(path) as z:
            experiment.validate(json.loads(z.read("experiment.json")))
            names = set(z.namelist())
        for message in _messages(path):
            validators[message["type"]].validate(message["payload"])
            if message["type"] == "file_upload":
                assert message["payload"]["file_path"] in names


def test_the_nasty_run_as_comet_holds_it(loaded: dict) -> None:
    (nasty,) = [p for p in _zips(loaded["root"]) if any(m["payload"].get("value") == NASTY
                                                        for m in _messages(p))]
    with zipfile.ZipFile(nasty) as z:
        meta = json.loads(z.read("experiment.json"))
    assert meta["start_time"] == 1709251199123 and meta["stop_time"] == 1709251199123 + 90 * 60_000
    assert meta["customer_error_reported"] is True and meta["project_name"] == "nasty-n-code-proj"
    assert sorted(meta["tags"]) == ["a,b", "neptune-run:" + NASTY, "tag with space", "ünï"]
    metrics: dict[str, list] = {}
    for m in _messages(nasty):
        if m["type"] == "metric_msg":
            metrics.setdefault(m["payload"]["metric"]["metricName"], []).append(m["payload"]["metric"])
    special = [p["metricValue"] for p in sorted(metrics["metrics/special"], key=lambda p: p["step"])]
    assert special[:3] == ["NaN", "Infinity", "-Infinity"] and special[5] == 5e-324
    assert repr(special[4]) == "-0.0"
    assert sorted(p["step"] for p in metrics["metrics/fractional"]) == [290000, 500000, 1000000, 1250000, 2000001]
    assert all(p["epoch"] is None for p in metrics["metrics/loss"]) and len(metrics["metrics/loss"]) == 2500


def test_comet_offline_opens_every_archive(loaded: dict) -> None:
    """comet_ml's own tool summarises each archive, its metrics included. It stops summarising where a metric holds
    a number after NaN/inf (its min/max cannot unpack comet_ml's string for them): the same for archives comet_ml
    writes itself (next test), so what comes from there on is left out of what it must list."""
    for path in _zips(loaded["root"]):
        done = subprocess.run([str(VENV_BIN / "comet"), "offline", str(path)], capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, COMET_DISABLE_AUTO_LOGGING="1"))
        assert done.returncode == 0, done.stderr
        assert "Comet Offline Experiment Summary" in done.stdout
        names: list[str] = []
        last: dict[str, object] = {}
        for m in _messages(path):
            if m["type"] == "metric_msg":
                value = m["payload"]["metric"]["metricValue"]
                name = m["payload"]["metric"]["metricName"]
                if isinstance(last.get(name), str) and not isinstance(value, str):
                    break  # where comet offline stops
                last[name] = value
                if name not in names:
                    names.append(name)
        assert names and all(f"    {n} [" in done.stdout for n in names), (names, done.stdout)


def test_comet_offline_stops_the_same_on_comet_mls_own_archive(tmp_path: Path) -> None:
    code = ("from comet_ml import OfflineExperiment\n"
            f"e = OfflineExperiment(offline_directory={str(tmp_path)!r}, log_code=False, log_graph=False, "
            "auto_param_logging=False, auto_metric_logging=False, parse_args=False, auto_output_logging=None, "
            "log_env_details=False, log_git_metadata=False, log_git_patch=False, display_summary_level=0)\n"
            "e.log_metric('m', float('inf'), step=0); e.log_metric('m', 1.0, step=1); e.end()\n")
    env = dict(os.environ, COMET_DISABLE_AUTO_LOGGING="1")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120, env=env)
    (archive,) = tmp_path.glob("*.zip")
    assert '"metricValue":"Infinity"' in zipfile.ZipFile(archive).read("messages.json").decode()
    done = subprocess.run([str(VENV_BIN / "comet"), "offline", str(archive)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0 and "Error in processing messages" in done.stdout + done.stderr


def test_a_killed_attempts_leftovers_are_replaced_exactly(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    assert nm.load(archive, **_options(tmp_path)).ok
    (first, second) = _zips(tmp_path)
    # What a SIGKILL leaves: a staging folder and a half-written zip, beside a complete archive.
    staging = tmp_path / "comet" / f".tmp-{first.stem}"
    staging.mkdir()
    (staging / "messages.json").write_text('{"payload": {"key": "half')
    (tmp_path / "comet" / f".tmp-{first.stem}.zip").write_bytes(b"PK\x03\x04half")
    first.unlink()
    (tmp_path / "state.db").unlink()  # the ledger forgets the load: both runs are written again
    assert nm.load(archive, **_options(tmp_path)).ok
    assert sorted(p.name for p in (tmp_path / "comet").iterdir()) == sorted([first.name, second.name])
    assert nm.validate(archive, report_dir=tmp_path / "report", **_options(tmp_path)).ok


def test_a_changed_value_is_found(loaded: dict, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    (root / "comet").mkdir(parents=True)
    for path in _zips(loaded["root"]):
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(root / "comet" / path.name, "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename == "messages.json":
                    data = data.replace(b'"metricValue":0.5,', b'"metricValue":0.50000001,', 1)
                dst.writestr(item, data)
    checked = nm.validate(loaded["archive"], report_dir=root / "report", **_options(root))
    assert not checked.ok
    assert any("metrics/loss" in c.summary_line() for c in checked.summary.checks if c.status != "validated")


def test_a_wider_selection_after_a_narrower_load_is_completed_by_retry(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    assert nm.load(archive, exclude=["files"], **_options(tmp_path)).ok
    names = sorted(p.name for p in _zips(tmp_path))
    wide = nm.validate(archive, report_dir=tmp_path / "r1", **_options(tmp_path))
    assert not wide.ok  # the files the narrower load left out are named missing
    assert nm.retry(archive, report_dir=tmp_path / "r2", **_options(tmp_path)).ok
    assert nm.validate(archive, report_dir=tmp_path / "r3", **_options(tmp_path)).ok
    assert sorted(p.name for p in _zips(tmp_path)) == names  # the same archives, written again whole
