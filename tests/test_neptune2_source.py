"""The Neptune 2.x source against the sandbox, through the real neptune 1.x client (in subprocesses: the client
caches HTTP clients per process and reads its environment at call time)."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.archive import Archive
from neptune_migration.sandbox import Sandbox, demo_project, generate_project

from .archive_compare import archive_digest, exported_runs
from .conftest import VENV_BIN, run_cli

DEMO, NASTY = "sandbox/demo", "sandbox/nasty"


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with Sandbox([demo_project(), generate_project("nasty", runs=6, points=30, files=2),
                  generate_project("other", runs=2, points=5, files=0, nasty=False)]) as sb:
        yield sb


def _export(sandbox: Any, root: Path, *args: str) -> Any:
    result = run_cli("export", "--from", "neptune2", "--archive", str(root), "--state", str(root) + ".db",
                     "--no-progress", *args, env=sandbox.env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Neptune 2.x deprecated its model registry; a user migrating away needs no warning about it on every export.
    assert "NeptuneDeprecationWarning" not in result.stderr, result.stderr[-2000:]
    return result


def _model_runs(sandbox: Any, project: str) -> dict[str, Any]:
    return {r.sys_id: r for r in sandbox.projects[project].runs
            if r.kind == "run" and not r.attributes["sys/trashed"].value}


def _finite(value: Any) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


def _step(row: dict[str, Any]) -> float:
    return row["step_exact"] if row["step_exact"] is not None else float(row["step"])


def compare_2x(root: Path, model: dict[str, Any]) -> dict[str, int]:
    """The archive holds what a 2.x server holds of the model: every atom, point, file, file set and artifact."""
    archived = {r.ref.run_id: r for r in Archive(root).scan().runs}
    assert sorted(archived) == sorted(model)
    seen: dict[str, int] = {}
    for run_id, m in model.items():
        run = archived[run_id]
        atoms = run.atoms()
        rows = run.table(None, ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value",
                                "string_value", "file_value", "file_name"]).to_pylist()
        by_path: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_path.setdefault(row["attribute_path"], []).append(row)
        for path, attr in m.attributes.items():
            t = attr.type
            if t in ("float", "int", "string", "bool", "datetime", "string_set"):
                if path == "sys/state" or not _finite(attr.value):
                    continue  # no read method for sys/state in the client; 2.x never held non-finite floats
                got = atoms[path].value
                want = sorted(attr.value) if t == "string_set" else attr.value
                if t == "datetime":
                    want = attr.value.astimezone(UTC)
                assert got == want, (run_id, path, got, want)
            elif t in ("float_series", "string_series"):
                points = [p for p in attr.value if _finite(p.value)]  # 2.x has no previews: all points are ordinary
                got_rows = sorted(by_path.get(path, []), key=_step)
                assert [_step(r) for r in got_rows] == [p.step for p in points], (run_id, path)
                key = "float_value" if t == "float_series" else "string_value"
                assert [r[key] for r in got_rows] == [p.value for p in points], (run_id, path)
                assert [r["timestamp"] for r in got_rows] == [
                    datetime.fromtimestamp(p.timestamp_ms / 1000, UTC) for p in points], (run_id, path)
            elif t == "file":
                (row,) = by_path[path]
                assert run.file_path(row["file_value"]["path"]).read_bytes() == attr.value.data, (run_id, path)
            elif t == "file_series":
                got_rows = sorted(by_path[path], key=lambda r: float(r["step"]))
                assert [float(r["step"]) for r in got_rows] == list(map(float, range(len(attr.value))))
                assert [run.file_path(r["file_value"]["path"]).read_bytes() for r in got_rows] == [
                    p.value.data for p in attr.value], (run_id, path)
            elif t == "file_set":
                (row,) = by_path[path]
                with zipfile.ZipFile(io.BytesIO(run.file_path(row["file_value"]["path"]).read_bytes())) as zf:
                    assert {n: zf.read(n) for n in zf.namelist()} == dict(attr.value), (run_id, path)
            elif t == "artifact":
                (row,) = by_path[path]
                listing = json.loads(run.file_path(row["file_value"]["path"]).read_text())
                assert [(f["filePath"], f["fileHash"], f["size"]) for f in listing] == [
                    (f.file_path, f.file_hash, f.size) for f in attr.value.files], (run_id, path)
            else:
                assert t == "histogram_series"  # invisible over 2.x: the 1.x client has no such type
                assert path not in by_path
                continue
            seen[t] = seen.get(t, 0) + 1
    return seen


def test_export_equals_the_seeded_2x_project(sandbox: Any, tmp_path: Path) -> None:
    _export(sandbox, tmp_path / "demo", "-p", DEMO)
    seen = compare_2x(tmp_path / "demo", _model_runs(sandbox, DEMO))
    for kind in ("float", "int", "string", "bool", "datetime", "string_set", "float_series", "string_series",
                 "file", "file_series", "file_set", "artifact"):
        assert seen.get(kind), f"the demo project exercises {kind}"
    _export(sandbox, tmp_path / "nasty", "-p", NASTY)
    compare_2x(tmp_path / "nasty", _model_runs(sandbox, NASTY))


def test_file_sets_can_be_extracted(sandbox: Any, tmp_path: Path) -> None:
    _export(sandbox, tmp_path / "x", "-p", DEMO, "--runs", "^DEMO-1$", "--file-sets", "extract")
    run = Archive(tmp_path / "x").scan().runs[0]
    model = _model_runs(sandbox, DEMO)["DEMO-1"]
    fileset = next(a for a in model.attributes.values() if a.type == "file_set")
    rows = [r for r in run.table(["file_set"], ["attribute_path", "file_value", "file_name"]).to_pylist()]
    got = {r["file_name"]: run.file_path(r["file_value"]["path"]).read_bytes() for r in rows}
    assert got == dict(fileset.value)


def test_query_with_a_date_range_end_to_end(sandbox: Any, tmp_path: Path) -> None:
    model = _model_runs(sandbox, DEMO)
    times = sorted(r.creation_time for r in model.values())
    cut = times[len(times) // 2]
    query = f'`sys/creation_time`:datetime >= "{cut.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]}Z"'
    start = len(sandbox.request_log)
    _export(sandbox, tmp_path / "q", "-p", DEMO, "--query", query)
    got = sorted(r.ref.run_id for r in Archive(tmp_path / "q").scan().runs)
    assert got == sorted(k for k, r in model.items() if r.creation_time >= cut) and got
    sent = [json.dumps(r.body) for r in sandbox.request_log[start:] if r.body and "query" in json.dumps(r.body)]
    assert any("sys/creation_time" in s for s in sent), "the query went to the server"


def test_workspace_discovery_with_include_exclude(sandbox: Any) -> None:
    result = run_cli("discover", "--from", "neptune2", "--workspace", "sandbox", "--include-projects", "^(demo|nasty|"
                     "other)$", "--exclude-projects", "^nasty$", "--json", env=sandbox.env())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [p["project"] for p in report["projects"]] == [DEMO, "sandbox/other"]
    assert report["projects"][0]["runs"] == len(_model_runs(sandbox, DEMO))


def test_more_than_10000_runs_listed_exactly_once(tmp_path: Path) -> None:
    from neptune_migration.sandbox.seed import big_project

    script = (
        "import json, os\n"
        "from neptune_migration.selection import Selection\n"
        "from neptune_migration.sources.neptune2.source import Neptune2Source\n"
        "source = Neptune2Source(['sandbox/big'], Selection(), os.environ['NEPTUNE_API_TOKEN'])\n"
        "print(json.dumps([r.ref.run_id for r in source.list_runs('sandbox/big')]))\n"
    )
    with Sandbox([big_project("big", runs=10_050)]) as sb:
        result = subprocess.run([str(VENV_BIN / "python"), "-c", script], env=dict(os.environ, **sb.env()),
                                capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-2000:]
        searches = [r for r in sb.request_log if "entries" in r.path]
    ids = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(ids) == 10_050 and len(set(ids)) == 10_050
    assert sorted(ids) == sorted(r.sys_id for r in sb.projects["sandbox/big"].runs if r.kind == "run")
    assert len(searches) > 100, "pages of at most 100 rows: the listing went past offset 10,000"




def test_sigkill_mid_export_then_rerun_gives_the_same_archive(tmp_path: Path) -> None:
    project = generate_project("kill2", runs=10, series=2, points=200, files=1, nasty=False)
    with Sandbox([project]) as sb:
        sb.faults.add(r"/attributes/floatSeries", "slow", delay=0.2)
        state = tmp_path / "a.db"
        args = ["export", "--from", "neptune2", "-p", "sandbox/kill2", "--archive", str(tmp_path / "a"),
                "--state", str(state), "--workers", "2", "--no-progress"]
        proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=dict(os.environ, **sb.env()),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 180
        while exported_runs(state) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "export finished before the kill"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 0 < exported_runs(state) < 10
        sb.faults.clear()  # the resumed and the clean export run at full speed
        resumed = run_cli(*args, env=sb.env())
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        clean = run_cli("export", "--from", "neptune2", "-p", "sandbox/kill2", "--archive", str(tmp_path / "b"),
                        "--state", str(tmp_path / "b.db"), "--no-progress", env=sb.env())
        assert clean.returncode == 0
        compare_2x(tmp_path / "a", _model_runs(sb, "sandbox/kill2"))
        assert archive_digest(tmp_path / "a") == archive_digest(tmp_path / "b")




def test_migrate_from_neptune2_to_mlflow(sandbox: Any, tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    result = run_cli("migrate", "--from", "neptune2", "-p", DEMO, "--to", "mlflow", "--mlflow-tracking-uri",
                     mlflow_server.uri, "--experiment-prefix", prefix, "--archive", str(tmp_path / "a"),
                     "--state", str(tmp_path / "s.db"), "--no-progress", env=sandbox.env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    # The project's runs; its model versions have an experiment of their own (`<project>/models`).
    exps = [e.experiment_id for e in client.search_experiments() if e.name == prefix + DEMO]
    runs = {r.info.run_name: r for r in client.search_runs(exps)}
    assert sorted(runs) == sorted(_model_runs(sandbox, DEMO))
    first = runs["DEMO-1"]
    arts = [a.path for a in client.list_artifacts(first.info.run_id)]
    assert arts, "files, file sets and the artifact list arrive as artifacts"


def test_model_registry_export_and_load_into_mlflow(sandbox: Any, tmp_path: Path, mlflow_server: Any,
                                                    prefix: str) -> None:
    from mlflow.tracking import MlflowClient

    args = ["migrate", "--from", "neptune2", "-p", DEMO, "--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri,
            "--experiment-prefix", prefix, "--archive", str(tmp_path / "a"), "--state", str(tmp_path / "s.db"),
            "--no-progress", "--no-validate", "--runs", "^DEMO-1$"]
    result = run_cli(*args, env=sandbox.env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    models = [r for r in sandbox.projects[DEMO].runs if r.kind == "model"]
    versions = [r for r in sandbox.projects[DEMO].runs if r.kind == "model_version"]
    assert models and versions
    registry = Archive.from_roots(tmp_path / "a" / "models", tmp_path / "a" / "model_files").scan().runs
    assert sorted(r.ref.run_id for r in registry) == sorted(r.sys_id for r in models + versions)

    client = MlflowClient(mlflow_server.uri)
    for model in models:
        name = f"{prefix}{DEMO.replace('/', '.')}.{model.sys_id}"
        registered = client.get_registered_model(name)
        assert registered.tags["neptune.id"] == model.sys_id
        assert registered.tags["neptune.config/architecture"] == model.attributes["config/architecture"].value
        got = {v.tags["neptune.id"]: v for v in client.search_model_versions(f"name = '{name}'")}
        mine = [v for v in versions if v.attributes["sys/model_id"].value == model.sys_id]
        assert sorted(got) == sorted(v.sys_id for v in mine), "every version exactly once"
        for version in mine:
            stage = str(version.attributes["sys/stage"].value)
            assert got[version.sys_id].tags["neptune.stage"] == stage
            run = client.get_run(got[version.sys_id].run_id)
            assert run.data.tags["neptune.run_id"] == version.sys_id
            weights = version.attributes["model/weights"].value
            files = [a.path for a in client.list_artifacts(run.info.run_id, "model/weights")]
            assert files == [f"model/weights/{weights.name}"]
            if stage.lower() not in ("", "none"):
                assert client.get_model_version_by_alias(name, stage.lower()).tags["neptune.id"] in got
    again = run_cli(*args, env=sandbox.env())
    assert again.returncode == 0
    for model in models:
        name = f"{prefix}{DEMO.replace('/', '.')}.{model.sys_id}"
        assert len(client.search_model_versions(f"name = '{name}'")) == len(
            [v for v in versions if v.attributes["sys/model_id"].value == model.sys_id]), "a rerun adds no version"
