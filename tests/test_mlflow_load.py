"""Load archives into a real MLflow tracking server and read every value back."""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from neptune_migration.archive import Archive
from neptune_migration.ledger import Ledger
from neptune_migration.progress import Tracker
from neptune_migration.samples import write_nasty_archive
from neptune_migration.selection import Selection
from neptune_migration.stages.load import load
from neptune_migration.targets.mlflow.loader import MlflowTarget

from .conftest import run_cli

MAX_DOUBLE = 1.7976931348623157e308


def _load(archive: Path, uri: str, prefix: str, state: Path, files: Path | None = None, **kw) -> object:
    target = MlflowTarget(uri, experiment_prefix=prefix, **kw)
    target.check()
    with Ledger(state) as ledger:
        try:
            return load(Archive(archive, files), target, Selection(), ledger,
                        lambda n: Tracker("t", n, Console(quiet=True), enabled=False), workers=2)
        finally:
            target.close()


def _runs(client: MlflowClient, prefix: str) -> dict[str, object]:
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    runs = client.search_runs(exps, max_results=1000)
    keyed = {r.data.tags["neptune.run_key"]: r for r in runs}
    assert len(keyed) == len(runs), "exactly one MLflow run per Neptune run"
    return keyed


def _artifact_files(client: MlflowClient, run_id: str, path: str = "") -> list[str]:
    out = []
    for info in client.list_artifacts(run_id, path or None):
        out += _artifact_files(client, run_id, info.path) if info.is_dir else [info.path]
    return sorted(out)


def _expected_step(step: Decimal, exact: float | None, scale: int) -> int:
    value = Decimal(repr(exact)) if exact is not None else step
    scaled = value * scale
    assert scaled == scaled.to_integral_value()
    return int(scaled)


def test_nasty_archive_arrives_exactly(tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive", rows_per_part=700)
    summary = _load(archive, mlflow_server.uri, prefix, tmp_path / "state.db")
    assert summary.count("loaded") == 2 and not summary.failed
    client = MlflowClient(mlflow_server.uri)
    runs = _runs(client, prefix)
    src = {r.ref.key: r for r in Archive(archive).scan().runs}
    run = runs["nasty/ünïcode-proj/NASTY-1"]
    src_run = src["nasty/ünïcode-proj/NASTY-1"]
    atoms = src_run.atoms()

    # run metadata
    assert run.info.run_name == "NASTY-1"
    assert run.info.status == "FAILED"
    assert run.info.start_time == int(atoms["sys/creation_time"].value.timestamp() * 1000)
    assert run.info.end_time == int(atoms["sys/modification_time"].value.timestamp() * 1000)
    assert run.info.user_id == "bob"
    tags = run.data.tags
    assert tags["mlflow.note.content"] == atoms["sys/description"].value
    assert tags["neptune.project"] == "nasty/ünïcode-proj" and tags["neptune.run_id"] == "NASTY-1"
    assert tags["neptune.experiment"] == "exp/with slash"
    assert tags["neptune.tags"] == "a,b,tag with space,ünï"
    assert tags["neptune.tag.tag with space"] == "true" and tags["neptune.tag.ünï"] == "true"
    assert tags["neptune.tag.a_b"] == "true"
    assert tags["neptune.group_tag.group-a"] == "true"
    assert tags["neptune.migration.state"] == "complete"

    # params: original text, ints stay ints
    params = run.data.params
    assert params["params/int"] == "256"
    assert params["params/big_int"] == str(2**62 + 1)
    assert params["params/float"] == "0.1"
    assert params["params/float_whole"] == "256.0"
    assert params["params/nan"] == "nan"
    assert params["params/bool"] == "True"
    assert params["params/when"] == "2023-01-02T03:04:05.678Z"
    assert params["params/set"] == "a,b,c"
    assert params["params/ünïcode ключ"] == "значение"
    assert params["params/deep/" + "/".join(f"level{i}" for i in range(12))] == "12"
    # two names that collide after sanitising both survive
    collided = {k: v for k, v in params.items() if k.startswith("params/bad")}
    assert sorted(collided.values()) == ["collides after sanitising", "sanitised"]
    long_param = params["params/long_text"]
    assert len(long_param) <= 6000 and "truncated from 9003 chars" in long_param
    # The full text sits where the attribute lives (not under a doubled neptune/params/params/).
    full = client.download_artifacts(run.info.run_id, "params/long_text.txt", str(tmp_path / "dl"))
    assert Path(full).read_text() == "x" * 9000 + "END"
    assert sum(1 for k in params if k.startswith("params/very_long_name_")) == 1

    # every metric point: step (exactly scaled), value (bit-exact, inf clamped as documented), timestamp
    scales = json.loads(tags.get("neptune.step_scale", "{}"))
    table = src_run.table(["float_series"], ["attribute_path", "step", "step_exact", "timestamp", "float_value"])
    by_series: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_series.setdefault(row["attribute_path"], []).append(row)
    key_of = {"metrics/bad#name": None}  # sanitised names are checked below
    checked_points = 0
    for path, rows in by_series.items():
        key = path if path not in key_of else None
        if key is None:
            continue
        history = client.get_metric_history(run.info.run_id, key)
        scale = scales.get(key, 1)
        expected = sorted(
            (_expected_step(r["step"], r["step_exact"], scale), int(r["timestamp"].timestamp() * 1000),
             r["float_value"])
            for r in rows
        )
        got = sorted((m.step, m.timestamp, m.value) for m in history)
        assert len(got) == len(expected), path
        for (gs, gt, gv), (es, et, ev) in zip(got, expected, strict=True):
            assert (gs, gt) == (es, et), path
            if math.isnan(ev):
                assert math.isnan(gv)
            elif math.isinf(ev):
                assert gv == math.copysign(MAX_DOUBLE, ev)
            elif ev == 0 and math.copysign(1, ev) < 0:
                assert gv == 0.0  # MLflow stores -0.0 as 0.0: documented and counted below
            else:
                assert gv == ev and math.copysign(1, gv) == math.copysign(1, ev), path
            checked_points += 1
    assert checked_points == table.num_rows - 1  # all but the one series under a sanitised name
    assert scales["metrics/fractional"] == 1_000_000 and scales["metrics/tiny_fraction"] == 10_000_000
    assert "metrics/loss" not in scales
    sanitized = [k for k in run.data.metrics if k.startswith("metrics/bad")]
    assert len(sanitized) == 2, "metrics/bad#name and metrics/bad_name both survive"
    assert summary.approximations()["inf_clamped_by_mlflow"] == 2
    assert summary.approximations()["negative_zero_stored_as_zero"] == 1

    # files: bytes identical, under the attribute path; file series under per-step folders
    dl = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "all")))
    payloads = src_run.table(["file", "file_series"], ["attribute_path", "file_value", "file_name", "step"]).to_pylist()
    for row in payloads:
        src_bytes = src_run.file_path(row["file_value"]["path"]).read_bytes()
        matches = [p for p in dl.rglob("*") if p.is_file() and hashlib.sha256(p.read_bytes()).digest()
                   == hashlib.sha256(src_bytes).digest()]
        assert matches, f"{row['attribute_path']} arrived with identical bytes"
    # A file named like its attribute lands at the attribute path, not in a folder of its own name.
    assert (dl / "files" / "model.bin").read_bytes() == bytes(range(256)) * 64
    assert not (dl / "files" / "model").exists()
    assert (dl / "images" / "preds" / "step_2_5" / "pred_2.5.png").exists()
    assert (dl / "files" / "empty.txt").read_bytes() == b""
    weird = list((dl / "files").glob("weird name*/*"))
    assert len(weird) == 1 and weird[0].read_bytes() == b"weird"

    # string and histogram series: one readable JSON-lines file each
    lines = [json.loads(x) for x in (dl / "logs" / "stdout.jsonl").read_text().splitlines()]
    assert [x["value"] for x in lines] == ["line 0", "ünïcode ✓", "x" * 9000]
    assert [x["step"] for x in lines] == [0, 1, 2]
    hist = [json.loads(x) for x in (dl / "hist" / "weights.jsonl").read_text().splitlines()]
    assert hist[1] == {"step": 1.5, "timestamp": hist[1]["timestamp"],
                       "value": {"type": "COUNTING", "edges": [-1.0, 0.0], "values": [7.0]}}
    # ... and beside them what a person reads: the string series as a log, the histograms drawn.
    log = (dl / "logs" / "stdout.log").read_text(encoding="utf-8").split("\n")
    assert log[:2] == [f"0\t{lines[0]['timestamp']}\tline 0", f"1\t{lines[1]['timestamp']}\tünïcode ✓"]
    assert len(log) == 4 and log[3] == ""
    assert (dl / "hist" / "weights.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    minimal = runs["nasty/ünïcode-proj/NASTY-2"]
    assert minimal.info.status == "FINISHED"
    assert [m.value for m in sorted(client.get_metric_history(minimal.info.run_id, "metrics/loss"),
                                    key=lambda m: m.step)] == [0.5, 0.25]


@pytest.mark.parametrize("flavour", ["neptune3", "neptune2"])
def test_exporter_archives_load_as_they_are(exporter_archives: Path, tmp_path: Path, mlflow_server, prefix: str,
                                           flavour: str) -> None:
    root = exporter_archives / flavour
    summary = _load(root / "data", mlflow_server.uri, prefix, tmp_path / "state.db", files=root / "files")
    assert not summary.failed, [o.error for o in summary.failed]
    client = MlflowClient(mlflow_server.uri)
    runs = _runs(client, prefix)
    assert len(runs) == (3 if flavour == "neptune3" else 2)
    first = runs["ws/proj/run-a" if flavour == "neptune3" else "ws/proj/PROJ-1"]
    assert first.data.params["params/lr"] == "0.01" and first.data.params["params/epochs"] == "3"
    history = client.get_metric_history(first.info.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 0.3333333333333333), (3, 0.25),
                                                          (4, 0.2)]
    files = _artifact_files(client, first.info.run_id)
    if flavour == "neptune3":
        # ckpt.bin at its attribute path; the step is not repeated in the file name
        assert "model/ckpt.bin" in files and "images/preds/step_1/preds.png" in files
        assert "hist/weights.png" in files and "logs/stdout.log" in files
        assert runs["ws/proj/run-b-old"].info.status == "FAILED"
    else:
        # the file set unpacked into a folder, its zip's size and hash in the manifest
        assert "model/ckpt" in files and "data/files/a.txt" in files and "data/files/sub/b.txt" in files
        assert "data/files/files.zip" not in files and "neptune/file_sets/data/files/files.zip.json" in files
        assert "data/artifact/files_list.json" in files


def test_second_load_touches_nothing(tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    _load(archive, mlflow_server.uri, prefix, tmp_path / "state.db")
    again = _load(archive, mlflow_server.uri, prefix, tmp_path / "state.db")
    assert again.count("already_loaded") == 2 and again.count("loaded") == 0
    # Without the ledger, the runs are found by their key and completed in place, never duplicated.
    fresh = _load(archive, mlflow_server.uri, prefix, tmp_path / "other-state.db")
    assert fresh.count("loaded") == 2
    client = MlflowClient(mlflow_server.uri)
    runs = _runs(client, prefix)
    assert len(runs) == 2
    history = client.get_metric_history(runs["nasty/ünïcode-proj/NASTY-1"].info.run_id, "metrics/loss")
    assert len(history) == 2500 and len({m.step for m in history}) == 2500


def test_cli_load_with_selection(tmp_path: Path, mlflow_server, prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    result = run_cli("load", "--archive", str(archive), "--to", "mlflow", "--mlflow-tracking-uri", mlflow_server.uri,
                     "--experiment-prefix", prefix, "--runs", "NASTY-2$", "--state", str(tmp_path / "s.db"),
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "runs loaded" in result.stdout
    runs = _runs(MlflowClient(mlflow_server.uri), prefix)
    assert list(runs) == ["nasty/ünïcode-proj/NASTY-2"]
    status = run_cli("status", "--state", str(tmp_path / "s.db"), "--json")
    rows = json.loads(status.stdout)["entries"]
    assert [(r["run_id"], r["status"]) for r in rows] == [("NASTY-2", "done")]


def test_forks_load_after_their_parents_and_link_to_them(tmp_path: Path, mlflow_server, prefix: str) -> None:
    from datetime import UTC, datetime

    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.stages.load import fork_waves
    from neptune_migration.vocabulary import RunRef

    writer = ArchiveWriter(tmp_path / "archive")
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    # Fork ids sort before their parents, so a naive parallel load would start them first.
    for run_id, parent in (("a-grandchild", "b-child"), ("b-child", "z-root"), ("z-root", None)):
        with writer.run(RunRef("ws/forks", run_id)) as w:
            w.add_atom("sys/creation_time", "datetime", t0)
            if parent:
                w.add_atom("sys/forking/parent", "string", parent)
                w.add_atom("sys/forking/step", "float", 10.0)
            w.add_series("loss", "float_series", [11.0, 12.0], [t0, t0], [1.0, 0.5])
    runs = Archive(tmp_path / "archive").scan().runs
    assert [[r.ref.run_id for r in wave] for wave in fork_waves(runs)] == [["z-root"], ["b-child"], ["a-grandchild"]]
    summary = _load(tmp_path / "archive", mlflow_server.uri, prefix, tmp_path / "state.db")
    assert not summary.failed
    loaded = _runs(MlflowClient(mlflow_server.uri), prefix)
    root, child, grandchild = (loaded[f"ws/forks/{r}"] for r in ("z-root", "b-child", "a-grandchild"))
    assert child.data.tags["mlflow.parentRunId"] == root.info.run_id
    assert grandchild.data.tags["mlflow.parentRunId"] == child.info.run_id
    assert child.data.tags["neptune.fork_parent"] == "z-root" and child.data.tags["neptune.fork_step"] == "10.0"
