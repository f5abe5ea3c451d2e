"""The Neptune 3.x source against the sandbox, through the real neptune-query client.

The archive is compared value for value with the sandbox's seeded model: every attribute, point, timestamp and
file hash, including forks, previews, unicode names and empty series.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.archive.reader import ArchivedRun
from neptune_migration.errors import MigrationError
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.sandbox import Sandbox, demo_project, generate_project
from neptune_migration.selection import Selection
from neptune_migration.sources.neptune3.source import Neptune3Source
from neptune_migration.stages.export import export

from .archive_compare import archive_digest, exported_runs
from .conftest import VENV_BIN, run_cli

NASTY = "sandbox/nasty"
DEMO = "sandbox/demo"


@pytest.fixture(scope="module")
def sandbox() -> Any:
    with Sandbox([demo_project(), generate_project("nasty", runs=8, points=40, files=2)]) as sb:
        yield sb


@pytest.fixture(autouse=True)
def _env(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in sandbox.env().items():
        monkeypatch.setenv(key, value)


def _export(sandbox: Any, root: Path, project: str, selection: Selection | None = None, **kw: Any) -> Any:
    source = Neptune3Source([project], selection or Selection(), sandbox.api_token, **kw)
    with Ledger(root.parent / f"{root.name}.state.db") as ledger:
        return export(source, ArchiveWriter(root), ledger,
                      lambda n: Tracker("t", n, Console(quiet=True), enabled=False), workers=2)


def _model_runs(sandbox: Any, project: str, include_archived: bool = False) -> dict[str, Any]:
    runs = {}
    for run in sandbox.projects[project].runs:
        if run.kind != "run" or run.attributes["sys/trashed"].value:
            continue
        if run.attributes["sys/archived"].value and not include_archived:
            continue
        runs[run.custom_run_id] = run
    return runs


def _same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def _archived_series(run: ArchivedRun) -> dict[str, list[dict[str, Any]]]:
    cols = ["attribute_path", "attribute_type", "step", "step_exact", "timestamp", "float_value", "string_value",
            "histogram_value", "file_value", "file_sha256", "is_preview", "completion_ratio"]
    out: dict[str, list[dict[str, Any]]] = {}
    for row in run.table(["float_series", "string_series", "histogram_series", "file_series"], cols).to_pylist():
        out.setdefault(row["attribute_path"], []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r["step_exact"] if r["step_exact"] is not None else float(r["step"]))
    return out


def _step(row: dict[str, Any]) -> float:
    return row["step_exact"] if row["step_exact"] is not None else float(row["step"])


def compare_with_model(archive_root: Path, model_runs: dict[str, Any], previews: bool = False) -> int:
    """Every attribute, point, timestamp and file of the model is in the archive, and nothing else. Returns
    the number of values compared."""
    scan = Archive(archive_root).scan()
    archived = {r.ref.run_id: r for r in scan.runs}
    assert sorted(archived) == sorted(model_runs)
    compared = 0
    for run_id, model in model_runs.items():
        run = archived[run_id]
        atoms = run.atoms()
        series = _archived_series(run)
        files = {r["attribute_path"]: r for r in run.table(["file"], ["attribute_path", "file_value", "file_sha256",
                                                                        "file_name"]).to_pylist()}
        model_atoms = {p: a for p, a in model.attributes.items()
                       if a.type in ("float", "int", "string", "bool", "datetime", "string_set")}
        assert set(atoms) == set(model_atoms), run_id
        for path, attr in model_atoms.items():
            got = atoms[path]
            assert got.type == attr.type, (run_id, path)
            if attr.type == "float":
                assert _same_float(got.value, attr.value), (run_id, path)
            elif attr.type == "string_set":
                assert got.value == sorted(attr.value), (run_id, path)
            elif attr.type == "datetime":
                assert got.value == attr.value.astimezone(UTC), (run_id, path)
            else:
                assert got.value == attr.value, (run_id, path)
            compared += 1
        for path, attr in model.attributes.items():
            if attr.type == "file":
                row = files[path]
                assert row["file_sha256"] == hashlib.sha256(attr.value.data).hexdigest(), (run_id, path)
                payload = run.file_path(row["file_value"]["path"]).read_bytes()
                assert payload == attr.value.data, (run_id, path)
                compared += 1
            if attr.type not in ("float_series", "string_series", "histogram_series", "file_series"):
                continue
            points = [p for p in attr.value if previews or not p.is_preview]
            rows = series.get(path, [])
            assert len(rows) == len(points), (run_id, path)
            for row, point in zip(rows, points, strict=True):
                assert _step(row) == point.step, (run_id, path)
                if attr.type != "file_series" or row["timestamp"] is not None:
                    assert row["timestamp"] == datetime.fromtimestamp(point.timestamp_ms / 1000, UTC), (run_id, path)
                if attr.type == "float_series":
                    assert _same_float(row["float_value"], point.value), (run_id, path, point.step)
                    if previews:
                        assert bool(row["is_preview"]) == point.is_preview
                elif attr.type == "string_series":
                    assert row["string_value"] == point.value
                elif attr.type == "histogram_series":
                    assert row["histogram_value"] == {"type": point.value.type, "edges": point.value.edges,
                                                      "values": point.value.values}
                else:
                    assert row["file_sha256"] == hashlib.sha256(point.value.data).hexdigest()
                compared += 1
    return compared


def test_export_equals_the_seeded_project_value_for_value(sandbox: Any, tmp_path: Path) -> None:
    summary = _export(sandbox, tmp_path / "a", NASTY)
    assert not summary.failed, [o.error for o in summary.failed]
    model = _model_runs(sandbox, NASTY)
    compared = compare_with_model(tmp_path / "a", model)
    assert compared > 500
    # forks keep their lineage as metadata and, by default, only their own points
    forks = [r for r in model.values() if r.fork_parent is not None]
    assert forks, "the generated project has a fork"
    run = Archive(tmp_path / "a").run(next(iter(Archive(tmp_path / "a").scan().runs)).ref)
    assert run is not None
    fork = {r.ref.run_id: r for r in Archive(tmp_path / "a").scan().runs}[forks[0].custom_run_id]
    assert fork.atom_value("sys/forking/parent") == forks[0].fork_parent.custom_run_id


def test_float_series_stream_in_small_pages_value_for_value(sandbox: Any, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of a few points each (the real bound is POINTS_PER_PAGE): every series continues after its last
    step until a short page, and nothing is lost or written twice at page boundaries."""
    import neptune_migration.sources.neptune3.source as neptune3

    monkeypatch.setattr(neptune3, "POINTS_PER_PAGE", 7)
    route = "/api/leaderboard/v1/proto/attributes/series/float"
    before = len(sandbox.requests_to(route))
    summary = _export(sandbox, tmp_path / "a", NASTY, previews=True)
    assert not summary.failed, [o.error for o in summary.failed]
    assert compare_with_model(tmp_path / "a", _model_runs(sandbox, NASTY), previews=True) > 500
    assert len(sandbox.requests_to(route)) - before > 3 * len(_model_runs(sandbox, NASTY))


def test_export_with_previews_and_full_lineage(sandbox: Any, tmp_path: Path) -> None:
    summary = _export(sandbox, tmp_path / "p", NASTY, previews=True)
    assert not summary.failed
    compare_with_model(tmp_path / "p", _model_runs(sandbox, NASTY), previews=True)
    summary = _export(sandbox, tmp_path / "f", NASTY, lineage="full")
    assert not summary.failed
    model = _model_runs(sandbox, NASTY)
    fork_model = next(r for r in model.values() if r.fork_parent is not None)
    fork = Archive(tmp_path / "f").run(next(r.ref for r in Archive(tmp_path / "f").scan().runs
                                            if r.ref.run_id == fork_model.custom_run_id))
    assert fork is not None
    own = {p: a for p, a in fork_model.attributes.items() if a.type == "float_series" and a.value}
    path, attr = next(iter(own.items()))
    parent_points = [p for p in fork_model.fork_parent.attributes[path].value
                     if p.step <= fork_model.fork_step and not p.is_preview] if path in \
        fork_model.fork_parent.attributes else []
    got = fork.table(["float_series"], ["attribute_path", "float_value"]).to_pylist()
    assert sum(1 for r in got if r["attribute_path"] == path) == len(parent_points) + len(
        [p for p in attr.value if not p.is_preview])


def test_demo_project_exports_completely(sandbox: Any, tmp_path: Path) -> None:
    summary = _export(sandbox, tmp_path / "d", DEMO)
    assert not summary.failed
    compare_with_model(tmp_path / "d", _model_runs(sandbox, DEMO))


def _nql_sent(sandbox: Any, start: int) -> list[str]:
    return [r.body["query"]["query"] for r in sandbox.request_log[start:]
            if r.path.endswith("/entries/search/") and r.body and r.body.get("query")]


@pytest.mark.parametrize("options,expect", [
    ({"runs": "-1$"}, "MATCHES"),
    ({"experiments": "^lr-sweep"}, "`sys/name`:string MATCHES"),
    ({"since": "2025-01-01T02:00:00Z"}, "`sys/creation_time`:datetime >="),
    ({"tags": ["baseline"]}, "`sys/tags`:stringSet CONTAINS"),
])
def test_selection_goes_to_the_server_and_selects_exactly(sandbox: Any, tmp_path: Path, options: dict[str, Any],
                                                          expect: str) -> None:
    selection = Selection.from_options(**options)
    start = len(sandbox.request_log)
    source = Neptune3Source([DEMO], selection, sandbox.api_token)
    listed = sorted(r.ref.run_id for r in source.list_runs(DEMO))
    assert any(expect in q for q in _nql_sent(sandbox, start)), _nql_sent(sandbox, start)
    # The same selection applied locally to the model gives the same runs.
    expected = sorted(
        run_id for run_id, run in _model_runs(sandbox, DEMO).items()
        if selection.matches_run(DEMO, run_id, {p: a.value for p, a in run.attributes.items()})
    )
    assert listed == expected and listed, (listed, expected)
    # And `load` with the same options selects the same runs from an archive.
    _export(sandbox, tmp_path / "all", DEMO)
    from neptune_migration.stages.load import select_runs

    chosen, _, _ = select_runs(Archive(tmp_path / "all"), selection)
    assert sorted(r.ref.run_id for r in chosen) == expected


def test_archived_runs_are_left_out_unless_asked(sandbox: Any) -> None:
    plain = {r.ref.run_id for r in Neptune3Source([NASTY], Selection(), sandbox.api_token).list_runs(NASTY)}
    everything = {r.ref.run_id for r in Neptune3Source([NASTY], Selection(include_archived=True),
                                                         sandbox.api_token).list_runs(NASTY)}
    archived = set(_model_runs(sandbox, NASTY, include_archived=True)) - set(_model_runs(sandbox, NASTY))
    assert archived and everything - plain == archived


def test_limit_and_attribute_filters(sandbox: Any, tmp_path: Path) -> None:
    selection = Selection.from_options(limit=2, exclude=["files"], exclude_attributes="^monitoring/")
    summary = _export(sandbox, tmp_path / "l", DEMO, selection)
    runs = Archive(tmp_path / "l").scan().runs
    assert summary.listed == 2 and len(runs) == 2
    for run in runs:
        types = set(run.table(None, ["attribute_type"]).column("attribute_type").to_pylist())
        paths = set(run.table(None, ["attribute_path"]).column("attribute_path").to_pylist())
        assert not types & {"file", "file_series"}
        assert not any(p.startswith("monitoring/") for p in paths)


def test_clear_errors(sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MigrationError, match="not found"):
        Neptune3Source(["sandbox/typo"], Selection(), sandbox.api_token).list_runs("sandbox/typo")
    result = run_cli("export", "--from", "neptune3", "-p", DEMO, "--archive", str(tmp_path / "x"),
                     "--state", str(tmp_path / "s.db"), env={"NEPTUNE_API_TOKEN": "not-a-token"})
    assert result.returncode != 0 and "not valid" in result.stderr and "Traceback" not in result.stderr
    assert "not-a-token" not in result.stderr + result.stdout
    result = run_cli("export", "--from", "neptune3", "-p", DEMO, "--archive", str(tmp_path / "x"),
                     "--state", str(tmp_path / "s.db"), "--runs", "(", env=sandbox.env())
    assert result.returncode == 2 and "--runs: invalid regular expression" in result.stderr




def test_sigkill_mid_export_then_rerun_gives_the_same_archive(tmp_path: Path) -> None:
    """The CLI, in its own process against its own sandbox: killed while exporting, resumed, compared."""
    project = generate_project("kill", runs=12, series=4, points=3000, files=1, nasty=False)
    with Sandbox([project]) as sb:
        sb.faults.add(r"/attributes/series/float", "slow", delay=0.3)  # leaves time to kill mid-export
        env = sb.env()
        state = tmp_path / "state.db"
        args = ["export", "--from", "neptune3", "-p", "sandbox/kill", "--archive", str(tmp_path / "a"),
                "--state", str(state), "--workers", "2", "--no-progress"]
        proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=dict(os.environ, **env),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while exported_runs(state) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "export finished before the kill"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = exported_runs(state)
        assert 0 < done_before < 12
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert "runs already exported (skipped)" in result.stdout
        clean = run_cli("export", "--from", "neptune3", "-p", "sandbox/kill", "--archive", str(tmp_path / "b"),
                        "--state", str(tmp_path / "clean.db"), "--no-progress", env=env)
        assert clean.returncode == 0, clean.stderr
        compare_with_model(tmp_path / "a", _model_runs(sb, "sandbox/kill"))
        assert archive_digest(tmp_path / "a") == archive_digest(tmp_path / "b")




def test_migrate_to_mlflow_end_to_end(sandbox: Any, tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    result = run_cli("migrate", "--from", "neptune3", "-p", DEMO, "--to", "mlflow", "--mlflow-tracking-uri",
                     mlflow_server.uri, "--experiment-prefix", prefix, "--archive", str(tmp_path / "a"),
                     "--state", str(tmp_path / "s.db"), "--no-progress", env=sandbox.env())
    assert result.returncode == 0, result.stderr + result.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    runs = client.search_runs(exps)
    model = _model_runs(sandbox, DEMO)
    assert sorted(r.info.run_name for r in runs) == sorted(model)
    for run in runs:
        m = model[run.info.run_name]
        for path, attr in m.attributes.items():
            if attr.type == "float_series" and attr.value:
                history = client.get_metric_history(run.info.run_id, path.replace("monitoring/", "system/", 1))
                assert len(history) == len([p for p in attr.value if not p.is_preview]), path
    again = run_cli("migrate", "--from", "neptune3", "-p", DEMO, "--to", "mlflow", "--mlflow-tracking-uri",
                    mlflow_server.uri, "--experiment-prefix", prefix, "--archive", str(tmp_path / "a"),
                    "--state", str(tmp_path / "s.db"), "--no-progress", env=sandbox.env())
    assert again.returncode == 0 and "runs already loaded (skipped)" in again.stdout
    assert len(client.search_runs(exps)) == len(model)


def test_discover_json(sandbox: Any) -> None:
    result = run_cli("discover", "--from", "neptune3", "-p", DEMO, "--json", env=sandbox.env())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runs"] == len(_model_runs(sandbox, DEMO))
    assert report["projects"][0]["attributes_by_type"]["float_series"] > 0


def test_demo_end_to_end(tmp_path: Path) -> None:
    result = run_cli("demo", "--workdir", str(tmp_path / "demo"), "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "mlflow ui --backend-store-uri" in result.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'demo' / 'mlflow-store' / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments() if e.name != "Default"]
    assert len(client.search_runs(exps)) == 8
    wandb_runs = [p for p in (tmp_path / "demo" / "wandb-offline" / "wandb").iterdir() if p.name.startswith("offline-")]
    assert len(wandb_runs) == 8 and "wandb sync" in result.stdout
    for name in ("report", "report-wandb"):
        report = json.loads((tmp_path / "demo" / name / "report.json").read_text())
        assert report["totals"]["runs_validated"] == 8 and report["totals"]["mismatches"] == 0


def test_refresh_reexports_changed_runs_and_replaces_them_in_mlflow(tmp_path: Path, mlflow_server: Any,
                                                                     prefix: str) -> None:
    from datetime import timedelta

    from mlflow.tracking import MlflowClient

    from neptune_migration.sandbox import Attribute

    project = generate_project("refresh", runs=3, series=1, points=10, files=0, nasty=False)
    with Sandbox([project]) as sb:
        args = ["migrate", "--from", "neptune3", "-p", "sandbox/refresh", "--to", "mlflow", "--mlflow-tracking-uri",
                mlflow_server.uri, "--experiment-prefix", prefix, "--archive", str(tmp_path / "a"),
                "--state", str(tmp_path / "s.db"), "--no-progress"]
        assert run_cli(*args, env=sb.env()).returncode == 0
        changed = project.runs[1]
        changed.attributes["params/changed"] = Attribute("params/changed", "string", "new value")
        mod = changed.attributes["sys/modification_time"]
        changed.attributes["sys/modification_time"] = Attribute(mod.path, mod.type, mod.value + timedelta(hours=1))
        result = run_cli(*args, "--refresh", env=sb.env())
        assert result.returncode == 0, result.stderr + result.stdout
    client = MlflowClient(mlflow_server.uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    runs = {r.info.run_name: r for r in client.search_runs(exps)}
    assert len(runs) == 3, "the changed run is replaced, not duplicated"
    assert runs[changed.custom_run_id].data.params["params/changed"] == "new value"
    with Ledger(tmp_path / "s.db") as ledger:
        exports = {e.ref.run_id: e.attempts for e in ledger.entries(stage="export")}
    assert exports[changed.custom_run_id] == 2 and sorted(exports.values()) == [1, 1, 2]


def _archive_contents(root: Path) -> dict[str, set[tuple[str, str]]]:
    """Per run: the (attribute path, type) pairs it holds, files named by their original file name."""
    out = {}
    for run in Archive(root).scan().runs:
        rows = run.table(None, ["attribute_path", "attribute_type", "file_name"]).to_pylist()
        out[run.ref.run_id] = {(r["attribute_path"], r["attribute_type"]) for r in rows if not
                               r["attribute_path"].startswith("sys/")}
    return out


def _files(root: Path) -> set[str]:
    names = set()
    for run in Archive(root).scan().runs:
        names |= {r["file_name"] for r in run.table(["file", "file_series"], ["file_name"]).to_pylist()}
    return names


@pytest.mark.parametrize("options", [
    {"until": "2025-03-01T10:00:00Z"},
    {"tags": ["demo", "gpu"], "all_tags": True},
    {"include": ["metrics"]},
    {"exclude": ["params", "series"]},
    {"attributes": "^train/"},
    {"max_file_size": "1KB"},
    {"file_types": ["png"]},
    {"file_pattern": "*.ckpt"},
])
def test_every_selection_option_on_sandbox_and_archive(sandbox: Any, tmp_path: Path, options: dict[str, Any]) -> None:
    """Each option selects exactly what it should, computed here from the model; `load` on an archive agrees."""
    from neptune_migration.stages.load import select_runs

    selection = Selection.from_options(**options)
    _export(sandbox, tmp_path / "sel", DEMO, selection)
    _export(sandbox, tmp_path / "all", DEMO)
    got = _archive_contents(tmp_path / "sel")
    model = _model_runs(sandbox, DEMO)
    want_runs = sorted(k for k, r in model.items()
                       if selection.matches_run(DEMO, k, {p: a.value for p, a in r.attributes.items()}))
    assert sorted(got) == want_runs and want_runs
    for run_id in want_runs:
        expected = {(p, a.type) for p, a in model[run_id].attributes.items()
                    if not p.startswith("sys/") and a.type not in ("file_set", "artifact")  # 2.x only
                    and selection.wants_attribute(p, a.type)
                    and not (a.type == "file_series" and not [pt for pt in a.value if selection.wants_file(
                        p, pt.value.name, len(pt.value.data))])
                    and not (a.type == "file" and not selection.wants_file(p, a.value.name, len(a.value.data)))}
        assert got[run_id] == expected, (run_id, got[run_id] ^ expected)
    wanted_files = {n for n in _files(tmp_path / "all")}
    if any(k in options for k in ("max_file_size", "file_types", "file_pattern")):
        assert _files(tmp_path / "sel") < wanted_files, "the file filter left some files out"
    # The same selection on the full archive, as `load` applies it, picks the same runs.
    chosen, _, _ = select_runs(Archive(tmp_path / "all"), selection)
    assert sorted(r.ref.run_id for r in chosen) == want_runs
