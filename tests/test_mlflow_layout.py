"""What a person finds among a migrated run's artifacts and tags, and that validation checks each of them.

Loaded into a local `sqlite:///` store (MLflow's own store and artifact folder, no server: the layout rules are
the same over REST, which tests/test_mlflow_load.py and tests/test_browser.py cover), validated, then tampered
with on disk to prove the verifier notices.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import neptune_migration as nm
from neptune_migration.archive import ArchiveWriter
from neptune_migration.samples import tiny_png
from neptune_migration.targets.mlflow.mapping import file_destination, log_line, step_folder
from neptune_migration.targets.mlflow.views import png_text, render_histograms
from neptune_migration.vocabulary import RunRef

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, (2024, 5, 1, 12, 0, 0)), data)
    return buffer.getvalue()


HOSTILE_ZIP = [("../../escaped.txt", b"up two"), ("/abs/rooted.txt", b"absolute"), ("ok/c.txt", b"c"),
               ("a\\win.txt", b"backslash"), ("sub/./dot.txt", b"dot")]


def _write(root: Path) -> Path:
    with ArchiveWriter(root).run(RunRef("lay/out", "LAY-1")) as w:
        w.add_atom("sys/id", "string", "LAY-1")
        w.add_atom("sys/custom_run_id", "string", "LAY-1")
        w.add_atom("sys/owner", "string", "ann")
        w.add_atom("sys/name", "string", "exp")
        w.add_atom("sys/description", "string", "a description")
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_atom("sys/modification_time", "datetime", T0 + timedelta(minutes=3))
        w.add_atom("sys/failed", "bool", False)
        w.add_atom("sys/trashed", "bool", False)
        w.add_atom("sys/hostname", "string", "gpu-7")
        w.add_atom("sys/tags", "string_set", ["x"])
        for step in (0, 7, 14, 100):
            w.add_file("images/preds", "file_series", tiny_png(step), f"{step}.png", step=step, timestamp=T0)
        w.add_file("samples/named", "file_series", tiny_png(1), "sample_3.png", step=3, timestamp=T0)
        w.add_file("plots/confusion", "file", tiny_png(9), "confusion.png")
        w.add_file("plots/other", "file", b"bytes", "elsewhere.bin")
        w.add_file("data/files", "file_set", _zip(HOSTILE_ZIP), "files.zip")
        w.add_file("data/clash", "file_set", _zip([("a/b.txt", b"1"), ("a\\b.txt", b"2")]), "files.zip")
        w.add_file("data/notzip", "file_set", b"PK\x03\x04 not really", "files.zip")
        w.add_series("logs/out", "string_series", [2, 0, 1], [T0] * 3, ["two", "zero\nnext line", None])
        w.add_series("hist/w", "histogram_series", [0, 1, 2], [T0] * 3,
                     [{"type": "COUNTING", "edges": [0.0, 1.0, 2.0], "values": [float(s), 3.0]} for s in range(3)])
    return root


@pytest.fixture
def loaded(tmp_path: Path) -> dict:
    archive = _write(tmp_path / "archive")
    store = tmp_path / "store"
    options = dict(to="mlflow", mlflow_tracking_uri=f"sqlite:///{store / 'mlflow.db'}", state=tmp_path / "s.db",
                   progress=False)
    result = nm.load(archive=archive, **options)
    assert result.ok, result.to_dict()
    client = MlflowClient(options["mlflow_tracking_uri"])
    run = client.search_runs([client.get_experiment_by_name("lay/out").experiment_id])[0]
    root = next(store.glob(f"artifacts/*/{run.info.run_id}/artifacts"))
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def validate() -> list[dict]:
        report = nm.validate(archive=archive, report_dir=tmp_path / "report", **options).to_dict()["report"]
        return report["mismatches"]

    return {"run": run, "root": root, "files": files, "validate": validate, "tmp": tmp_path}


def test_layout_a_person_can_browse(loaded: dict) -> None:
    files = loaded["files"]
    # File series: zero-padded step folders that sort as numbers, the step not repeated in the name.
    assert [f for f in files if f.startswith("images/")] == [
        "images/preds/step_000/preds.png", "images/preds/step_007/preds.png", "images/preds/step_014/preds.png",
        "images/preds/step_100/preds.png"]
    assert "samples/named/step_3/sample_3.png" in files  # a name of its own is kept
    # A single file named like its attribute lands at the attribute path; another name keeps its folder.
    assert "plots/confusion.png" in files and "plots/other/elsewhere.bin" in files
    # The file set unpacked, every hostile member name inside the run's folder; the manifest ties them to the zip.
    members = sorted(f for f in files if f.startswith("data/files/"))
    assert members == ["data/files/_../_../escaped.txt", "data/files/a/win.txt", "data/files/abs/rooted.txt",
                       "data/files/ok/c.txt", "data/files/sub/_./dot.txt"]
    written = list(loaded["tmp"].rglob("escaped.txt"))
    assert len(written) == 1 and loaded["root"] in written[0].parents, "written once, inside the run's artifacts"
    manifest = json.loads((loaded["root"] / "neptune/file_sets/data/files/files.zip.json").read_text())
    assert manifest["size"] == len(_zip(HOSTILE_ZIP)) and len(manifest["sha256"]) == 64
    assert [m["name"] for m in manifest["members"]] == [name for name, _ in HOSTILE_ZIP]
    # A zip that cannot be unpacked exactly (two members on one path; not a zip at all) stays whole.
    assert "data/clash/files.zip" in files and "data/notzip/files.zip" in files
    # Series: the exact JSONL, and beside it a log and a picture.
    assert (loaded["root"] / "logs/out.log").read_text(encoding="utf-8") == (
        f"0\t{'2024-05-01T12:00:00.000Z'}\tzero\\nnext line\n1\t2024-05-01T12:00:00.000Z\t\n"
        "2\t2024-05-01T12:00:00.000Z\ttwo\n")
    assert png_text((loaded["root"] / "hist/w.png").read_bytes())["Source"].endswith("points=3")


def test_only_tags_that_add_information(loaded: dict) -> None:
    tags = loaded["run"].data.tags
    sys_tags = sorted(k for k in tags if k.startswith("neptune.sys/"))
    # owner, name, description, tags, creation/modification time, failed and the run's own id all have a home.
    assert sys_tags == ["neptune.sys/hostname", "neptune.sys/trashed"]
    assert tags["mlflow.user"] == "ann" and tags["mlflow.note.content"] == "a description"
    assert tags["neptune.experiment"] == "exp" and tags["neptune.tags"] == "x"


def test_validation_checks_every_new_layout(loaded: dict) -> None:
    assert loaded["validate"]() == []
    root: Path = loaded["root"]
    (root / "data/files/ok/c.txt").write_bytes(b"C")  # a member's bytes no longer the zip's
    (root / "logs/out.log").write_text("0\t\tsomething else\n", encoding="utf-8")
    # A real PNG, but drawn from other data.
    jsonl = root / "elsewhere.jsonl"
    jsonl.write_text('{"step": 0, "timestamp": null, "value": {"edges": [0, 1], "values": [1]}}\n')
    render_histograms(jsonl, root / "hist/w.png", "hist/w")
    jsonl.unlink()
    (root / "neptune/file_sets/data/files/files.zip.json").unlink()
    (root / "images/preds/step_007/preds.png").rename(root / "images/preds/step_007/7.png")
    kinds = {(m["attribute"], m["kind"]) for m in loaded["validate"]()}
    assert kinds == {("data/files", "file_sha256"), ("logs/out", "series_log_content"),
                     ("hist/w", "series_picture_source"), ("data/files", "file_missing"),
                     ("images/preds", "file_missing")}


def test_picture_of_a_long_series_is_drawn_from_a_bounded_sample(tmp_path: Path) -> None:
    jsonl = tmp_path / "long.jsonl"
    with open(jsonl, "w") as fh:
        for step in range(20_000):
            fh.write(json.dumps({"step": step, "timestamp": None,
                                 "value": {"type": "COUNTING", "edges": [step, step + 1.0, step + 2.0],
                                           "values": [1.0, 2.0]}}) + "\n")
    render_histograms(jsonl, tmp_path / "long.png", "long")
    assert png_text((tmp_path / "long.png").read_bytes())["Source"].endswith("points=20000")
    # A rerun uploads the same bytes: nothing in the picture depends on when it was drawn.
    render_histograms(jsonl, tmp_path / "again.png", "long")
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "long.png").read_bytes()


def test_names_and_folders() -> None:
    assert [step_folder(s, 3) for s in (0, 7, 14, 100, 2.5)] == [
        "step_000", "step_007", "step_014", "step_100", "step_002_5"]
    assert file_destination("images/preds", "file_series", 1, 1, "", "step_1_000000.png") == (
        "images/preds/step_1", "preds.png")  # neptune-exporter's 3.x name spells the step
    assert file_destination("model/ckpt", "file", None, 1, "", "ckpt") == ("model", "ckpt")
    assert file_destination("ckpt", "file", None, 1, "", "ckpt.bin") == ("", "ckpt.bin")
    assert log_line({"step": 1.5, "timestamp": None, "value": "a\r\nb\u2028c\x00"}) == "1.5\t\ta\\nb\\nc\u2400\n"
