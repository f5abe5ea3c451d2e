"""The offline source (`--from neptune-offline PATH`) against folders the real clients wrote in offline mode.

neptune-scale 0.30 and neptune 1.14 write in subprocesses (this file is also their script: see the bottom);
the archive is then compared with the constants below, which are what the writers logged: never with the replay.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


T0 = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)

SCALE_PROJECT = "team-a/scale-project"
SCALE_RUN = "scale-main"
SCALE_FORK = "scale-fork"
SCALE_EXPERIMENT = "exp-offline"
SCALE_CONFIGS: dict[str, Any] = {
    "params/lr": 0.125,
    "params/batch": 64,
    "params/zero_int": 0,  # proto3 keeps a oneof's case even for zero: the type must survive
    "params/zero_float": 0.0,
    "params/name": "modèle ünïcode",
    "params/empty": "",
    "params/on": True,
    "params/off": False,
    "params/when": T0 + dt.timedelta(seconds=5),
}
SCALE_TAGS_ADDED = ["a", "b", "c"]
SCALE_TAGS_REMOVED = ["c"]
SCALE_GROUP_TAGS = ["grp"]
SCALE_LOSS = [(0.0, 1.0), (0.5, 0.75), (1.0, math.nan), (2.0, math.inf), (3.0, -math.inf), (4.25, 0.25)]
SCALE_PREVIEW = (5.0, 0.2, 0.5)  # (step, value, completion ratio)
SCALE_BACKWARDS = (1.0, 123.0)  # a step that goes back: a server rejects it, and so does the migration
SCALE_LOGS = [(1.0, "first line"), (2.0, "second ünïcode line")]
SCALE_COUNTS = [(1.0, [0.0, 1.0, 2.0], [3, 4]), (2.0, [0.0, 1.0, 2.0], [5, 0])]
SCALE_DENSITIES = [(1.0, [0.0, 0.5, 1.0], [0.25, 1.75])]
SCALE_BLOB = b"\x00\x01in-memory bytes"
SCALE_CONFIG_FILE = b"lr: 0.125\n"
SCALE_MOVED = b"this file is moved away before the migration"
SCALE_PREDS = [(0.0, b"\x89PNG pred 0"), (1.0, b"\x89PNG pred 1")]
SCALE_FORK_STEP = 2.0
SCALE_FORK_LOSS = [(3.0, 0.5), (4.0, 0.4)]
SCALE_RESUMED = "scale-resumed"  # logged in two sessions: one database each, one run
SCALE_RESUMED_POINTS = [(1.0, 10.0), (2.0, 20.0)]

N1_ATOMS: dict[str, Any] = {
    "params/lr": 0.01,
    "params/epochs": 7,
    "params/zero": 0,
    "params/opt": "adam ✓",
    "params/flag": False,
}
N1_WHEN = T0 + dt.timedelta(minutes=1, milliseconds=250)
N1_NAME = "n1 display name"
N1_DESCRIPTION = "an offline run"
N1_TAGS = ["n1", "offline"]
N1_SET_ADDED = ["x", "y", "z"]
N1_SET_REMOVED = ["z"]
N1_LOSS = [(0.0, 0.9), (1.0, 0.8), (2.5, 0.7)]
N1_LOGS = [(0.0, "alpha"), (1.0, "beta ü")]
N1_BACKWARDS = (1.0, 0.123)
N1_WEIGHTS = bytes(range(256))
N1_INLINE = b"inline content"
N1_MOVED = b"moved before the migration"
N1_IMAGES = [(0.0, png(2, 2, (255, 0, 0))), (1.0, png(3, 1, (0, 0, 255)))]  # the 1.x client checks they are images
N1_CODE = {"src_files/train.py": b"print('train')\n", "src_files/sub/notes.txt": b"notes\n"}
N1_DATASET = {"part-0.csv": b"a,b\n1,2\n", "nested/part-1.csv": b"a,b\n3,4\n"}


# ---------------------------------------------------------------- the writers (run in subprocesses)


def write_scale(out: Path) -> None:
    from neptune_scale import Run
    from neptune_scale.types import Histogram

    sources = out / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    (sources / "config.yaml").write_bytes(SCALE_CONFIG_FILE)
    (sources / "moved.bin").write_bytes(SCALE_MOVED)
    for i, (_, data) in enumerate(SCALE_PREDS):
        (sources / f"pred{i}.png").write_bytes(data)
    (out / "work").mkdir()
    os.chdir(out / "work")  # .neptune lands here; the fixture moves this folder afterwards
    with Run(project=SCALE_PROJECT, run_id=SCALE_RUN, experiment_name=SCALE_EXPERIMENT, mode="offline",
             creation_time=T0) as run:
        run.log_configs(SCALE_CONFIGS)
        run.add_tags(SCALE_TAGS_ADDED)
        run.remove_tags(SCALE_TAGS_REMOVED)
        run.add_tags(SCALE_GROUP_TAGS, group_tags=True)
        for i, (step, value) in enumerate(SCALE_LOSS):
            run.log_metrics({"train/loss": value}, step=step, timestamp=T0 + dt.timedelta(seconds=10 + i))
        step, value, completion = SCALE_PREVIEW
        run.log_metrics({"train/loss": value}, step=step, timestamp=T0 + dt.timedelta(seconds=30), preview=True,
                        preview_completion=completion)
        run.log_metrics({"train/loss": SCALE_BACKWARDS[1]}, step=SCALE_BACKWARDS[0], timestamp=T0)
        for i, (step, line) in enumerate(SCALE_LOGS):
            run.log_string_series({"train/logs": line}, step=step, timestamp=T0 + dt.timedelta(seconds=40 + i))
        for i, (step, edges, counts) in enumerate(SCALE_COUNTS):
            run.log_histograms({"dist/counts": Histogram(bin_edges=edges, counts=counts)}, step=step,
                               timestamp=T0 + dt.timedelta(seconds=50 + i))
        for i, (step, edges, dens) in enumerate(SCALE_DENSITIES):
            run.log_histograms({"dist/dens": Histogram(bin_edges=edges, densities=dens)}, step=step,
                               timestamp=T0 + dt.timedelta(seconds=55 + i))
        run.assign_files({"files/config": str(sources / "config.yaml"), "files/blob": SCALE_BLOB,
                          "files/moved": str(sources / "moved.bin")})
        for i, (step, _) in enumerate(SCALE_PREDS):
            run.log_files({"images/pred": str(sources / f"pred{i}.png")}, step=step,
                          timestamp=T0 + dt.timedelta(seconds=60 + i))
    with Run(project=SCALE_PROJECT, run_id=SCALE_FORK, experiment_name=SCALE_EXPERIMENT, mode="offline",
             creation_time=T0 + dt.timedelta(hours=1), fork_run_id=SCALE_RUN, fork_step=SCALE_FORK_STEP) as fork:
        for i, (step, value) in enumerate(SCALE_FORK_LOSS):
            fork.log_metrics({"train/loss": value}, step=step, timestamp=T0 + dt.timedelta(hours=1, seconds=i))
    for i, (step, value) in enumerate(SCALE_RESUMED_POINTS):
        with Run(project=SCALE_PROJECT, run_id=SCALE_RESUMED, mode="offline",
                 creation_time=T0 + dt.timedelta(hours=2)) as session:
            session.log_metrics({"m": value}, step=step, timestamp=T0 + dt.timedelta(hours=2, seconds=i))
            session.log_configs({f"session{i}": i})


def write_neptune1(out: Path) -> None:
    import neptune
    from neptune.types import File

    sources = out / "sources"
    sources.mkdir(parents=True, exist_ok=True)
    (sources / "weights.bin").write_bytes(N1_WEIGHTS)
    (sources / "moved.txt").write_bytes(N1_MOVED)
    for rel, data in N1_CODE.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    for rel, data in N1_DATASET.items():
        (out / "dataset" / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / "dataset" / rel).write_bytes(data)
    os.chdir(out)
    run = neptune.init_run(mode="offline", project="ignored/by-offline-mode", name=N1_NAME, description=N1_DESCRIPTION,
                           tags=N1_TAGS, capture_stdout=False, capture_stderr=False, capture_hardware_metrics=False,
                           capture_traceback=False, git_ref=False, source_files=[])
    for key, value in N1_ATOMS.items():
        run[key] = value
    run["params/when"] = N1_WHEN
    run["params/set"].add(N1_SET_ADDED)
    run["params/set"].remove(N1_SET_REMOVED)
    for i, (step, value) in enumerate(N1_LOSS):
        run["train/loss"].append(value, step=step, timestamp=T0.timestamp() + i)
    run["train/loss"].append(N1_BACKWARDS[1], step=N1_BACKWARDS[0], timestamp=T0.timestamp())
    for i, (step, line) in enumerate(N1_LOGS):
        run["train/logs"].append(line, step=step, timestamp=T0.timestamp() + 10 + i)
    run["files/weights"].upload(str(sources / "weights.bin"))
    run["files/moved"].upload(str(sources / "moved.txt"))
    run["files/inline"].upload(File.from_content(N1_INLINE, extension="txt"))
    for i, (step, data) in enumerate(N1_IMAGES):
        run["images/sample"].append(File.from_content(data, extension="png"), step=step,
                                    timestamp=T0.timestamp() + 20 + i)
    run["data/code"].upload_files(["src_files/*.py", "src_files/sub"])
    run["data/ds"].track_files(str(out / "dataset"))
    run.stop()


# ---------------------------------------------------------------- fixtures


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under root: content hash (folders: '-') and mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "-"
        out[str(path.relative_to(root))] = (digest, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("offline-user")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEPTUNE_")}
    procs = {}
    for kind in ("scale", "n1"):
        (root / kind).mkdir()
        procs[kind] = subprocess.Popen([sys.executable, __file__, kind, str(root / kind)], cwd=root / kind, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for kind, proc in procs.items():
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{kind} writer failed:\n{output[-4000:]}"
    # the user tidied up after the runs: the scale runs' folder moved (in-memory uploads are inside it, recorded
    # by absolute path), and two logged-by-path files are no longer where they were
    (root / "scale" / "work").rename(root / "scale" / "work-moved")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.move(root / "scale" / "sources" / "moved.bin", elsewhere / "moved.bin")
    shutil.move(root / "n1" / "sources" / "moved.txt", elsewhere / "moved.txt")
    (run_dir,) = (root / "n1" / ".neptune" / "offline").glob("run__*")
    container_id = json.loads((run_dir / "metadata.json").read_text())["containerId"]
    yield {"root": root, "before": _snapshot(root), "container_id": container_id, "n1_dir": run_dir}


@pytest.fixture(scope="module")
def exported(written: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from rich.console import Console

    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.ledger import Ledger
    from neptune_migration.progress import Tracker
    from neptune_migration.selection import Selection
    from neptune_migration.sources.offline.source import OfflineSource
    from neptune_migration.stages.export import export

    out = tmp_path_factory.mktemp("archive")
    source = OfflineSource(written["root"], Selection())
    with Ledger(out / "state.db") as ledger:
        summary = export(source, ArchiveWriter(out / "archive"), ledger,
                         lambda n: Tracker("t", n, Console(quiet=True), enabled=False), workers=2)
    assert not summary.failed, summary.failed
    return {"root": out / "archive", "summary": summary}


# ---------------------------------------------------------------- reading the archive back


class ArchivedValues:
    def __init__(self, archive_root: Path, project: str, run_id: str) -> None:
        from neptune_migration.archive import Archive
        from neptune_migration.vocabulary import RunRef

        run = Archive(archive_root).run(RunRef(project, run_id))
        assert run is not None, f"{project}/{run_id} is not in the archive"
        self.run = run
        self.rows = run.table().to_pylist()

    def atoms(self) -> dict[str, tuple[str, Any]]:
        cols = {"float": "float_value", "int": "int_value", "string": "string_value", "bool": "bool_value",
                "datetime": "datetime_value", "string_set": "string_set_value"}
        return {r["attribute_path"]: (r["attribute_type"], r[cols[r["attribute_type"]]]) for r in self.rows
                if r["attribute_type"] in cols}

    def series(self, path: str) -> list[tuple[float, int, Any]]:
        out = []
        for r in self.rows:
            if r["attribute_path"] != path:
                continue
            step = r["step_exact"] if r["step_exact"] is not None else float(r["step"])
            value = {"float_series": r["float_value"], "string_series": r["string_value"],
                     "histogram_series": r["histogram_value"]}[r["attribute_type"]]
            out.append((step, round(r["timestamp"].timestamp() * 1000), value))
        return sorted(out, key=lambda p: p[0])

    def files(self, path: str) -> list[tuple[float | None, bytes, dict[str, Any]]]:
        out = []
        for r in self.rows:
            if r["attribute_path"] == path and r["file_value"] is not None:
                payload = self.run.file_path(r["file_value"]["path"])
                step = float(r["step"]) if r["step"] is not None else None
                out.append((step, payload.read_bytes() if payload.is_file() else b"", r))
        return sorted(out, key=lambda f: -1 if f[0] is None else f[0])

    def folder(self, path: str) -> dict[str, bytes]:
        (row,) = [r for r in self.rows if r["attribute_path"] == path]
        assert row["attribute_type"] == "file_set"
        base = self.run.file_path(row["file_value"]["path"])
        return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}

    def types(self) -> dict[str, str]:
        return {r["attribute_path"]: r["attribute_type"] for r in self.rows}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def ms(t: dt.datetime) -> int:
    return round(t.timestamp() * 1000)


# ---------------------------------------------------------------- tests


def test_scale_run_archived_value_for_value(exported: dict[str, Any]) -> None:
    got = ArchivedValues(exported["root"], SCALE_PROJECT, SCALE_RUN)
    atoms = got.atoms()
    want_types = {bool: "bool", int: "int", float: "float", str: "string", dt.datetime: "datetime"}
    for key, value in SCALE_CONFIGS.items():
        assert atoms[key] == (want_types[type(value)], value), key
    assert atoms["sys/tags"] == ("string_set", sorted(set(SCALE_TAGS_ADDED) - set(SCALE_TAGS_REMOVED)))
    assert atoms["sys/group_tags"] == ("string_set", SCALE_GROUP_TAGS)
    assert atoms["sys/custom_run_id"] == ("string", SCALE_RUN)
    assert atoms["sys/name"] == ("string", SCALE_EXPERIMENT)
    assert atoms["sys/creation_time"] == ("datetime", T0)
    assert "sys/id" not in atoms and "sys/owner" not in atoms  # nothing a server would have assigned is invented

    loss = got.series("train/loss")
    want = [(s, ms(T0 + dt.timedelta(seconds=10 + i)), v) for i, (s, v) in enumerate(SCALE_LOSS)]
    assert [(s, t) for s, t, _ in loss] == [(s, t) for s, t, _ in want]  # the preview point is left out by default
    assert all(same(g[2], w[2]) for g, w in zip(loss, want, strict=True))
    assert got.series("train/logs") == [(s, ms(T0 + dt.timedelta(seconds=40 + i)), line)
                                        for i, (s, line) in enumerate(SCALE_LOGS)]
    assert got.series("dist/counts") == [
        (s, ms(T0 + dt.timedelta(seconds=50 + i)), {"type": "COUNTING", "edges": e, "values": [float(c) for c in c_]})
        for i, (s, e, c_) in enumerate(SCALE_COUNTS)
    ]
    assert got.series("dist/dens") == [(1.0, ms(T0 + dt.timedelta(seconds=55)),
                                        {"type": "DENSITY", "edges": [0.0, 0.5, 1.0], "values": [0.25, 1.75]})]

    (config,) = got.files("files/config")
    assert config[1] == SCALE_CONFIG_FILE and config[2]["file_name"] == "config.yaml"
    (blob,) = got.files("files/blob")
    assert blob[1] == SCALE_BLOB  # in-memory bytes come from the run's own folder, found where it is now
    preds = got.files("images/pred")
    assert [(s, data) for s, data, _ in preds] == SCALE_PREDS
    assert [r["timestamp"] for *_, r in preds] == [T0 + dt.timedelta(seconds=60 + i) for i in range(2)]
    assert "files/moved" not in got.types()


def test_scale_fork_keeps_its_parent(exported: dict[str, Any]) -> None:
    got = ArchivedValues(exported["root"], SCALE_PROJECT, SCALE_FORK)
    atoms = got.atoms()
    assert atoms["sys/forking/parent"] == ("string", SCALE_RUN)
    assert atoms["sys/forking/step"] == ("float", SCALE_FORK_STEP)
    assert [(s, v) for s, _, v in got.series("train/loss")] == SCALE_FORK_LOSS


def test_scale_run_resumed_in_a_second_session_is_one_run(exported: dict[str, Any]) -> None:
    got = ArchivedValues(exported["root"], SCALE_PROJECT, SCALE_RESUMED)
    assert [(s, v) for s, _, v in got.series("m")] == SCALE_RESUMED_POINTS
    atoms = got.atoms()
    assert (atoms["session0"], atoms["session1"]) == (("int", 0), ("int", 1))


def test_neptune1_run_archived_value_for_value(written: dict[str, Any], exported: dict[str, Any]) -> None:
    got = ArchivedValues(exported["root"], "offline/n1", written["container_id"])
    atoms = got.atoms()
    want_types = {bool: "bool", int: "int", float: "float", str: "string"}
    for key, value in N1_ATOMS.items():
        assert atoms[key] == (want_types[type(value)], value), key
    assert atoms["params/when"] == ("datetime", N1_WHEN)
    assert atoms["params/set"] == ("string_set", sorted(set(N1_SET_ADDED) - set(N1_SET_REMOVED)))
    assert atoms["sys/name"] == ("string", N1_NAME)
    assert atoms["sys/description"] == ("string", N1_DESCRIPTION)
    assert atoms["sys/tags"] == ("string_set", sorted(N1_TAGS))
    assert atoms["sys/custom_run_id"] == ("string", written["container_id"])
    created = json.loads((written["n1_dir"] / "metadata.json").read_text())["createdAt"]
    assert atoms["sys/creation_time"][0] == "datetime"
    assert ms(atoms["sys/creation_time"][1]) == ms(dt.datetime.fromisoformat(created))  # the archive keeps ms

    assert got.series("train/loss") == [(s, ms(T0) + 1000 * i, v) for i, (s, v) in enumerate(N1_LOSS)]
    assert got.series("train/logs") == [(s, ms(T0) + 1000 * (10 + i), v) for i, (s, v) in enumerate(N1_LOGS)]
    (weights,) = got.files("files/weights")
    assert weights[1] == N1_WEIGHTS and weights[2]["file_name"] == "weights.bin"
    (inline,) = got.files("files/inline")
    assert inline[1] == N1_INLINE and inline[2]["file_name"].endswith(".txt")
    images = got.files("images/sample")
    assert [(s, data) for s, data, _ in images] == N1_IMAGES
    assert [r["timestamp"] for *_, r in images] == [T0 + dt.timedelta(seconds=20 + i) for i in range(2)]
    assert "files/moved" not in got.types()

    # a file set: the files the globs matched, named as the 1.x client names them (relative to the script's folder)
    assert got.folder("data/code") == N1_CODE
    # an artifact: Neptune kept only the file list (paths, sha1, sizes); the bytes stay where they were
    (listing,) = got.files("data/ds")
    assert listing[2]["attribute_type"] == "artifact" and listing[2]["file_name"] == "files_list.json"
    entries = {e["filePath"]: e for e in json.loads(listing[1])}
    assert set(entries) == set(N1_DATASET)
    for rel, data in N1_DATASET.items():
        assert entries[rel]["size"] == len(data) and entries[rel]["type"] == "Local"
        assert entries[rel]["fileHash"] == hashlib.sha1(data).hexdigest()  # the hash Neptune's driver records
    assert "source_code/files" not in got.types()  # the empty source-code set the client always queues


def test_moved_files_are_reported_and_the_runs_still_migrate(written: dict[str, Any], exported: dict[str, Any]
                                                             ) -> None:
    outcomes = {o.key: o for o in exported["summary"].outcomes}
    scale = outcomes[f"{SCALE_PROJECT}/{SCALE_RUN}"]
    n1 = outcomes[f"offline/n1/{written['container_id']}"]
    assert scale.status == n1.status == "exported"
    assert [m.split(":")[0] for m in scale.stats.missing_files] == ["files/moved"]
    assert str(written["root"] / "scale" / "sources" / "moved.bin") in scale.stats.missing_files[0]
    assert [m.split(":")[0] for m in n1.stats.missing_files] == ["files/moved"]
    assert "moved.txt" in n1.stats.missing_files[0]
    assert outcomes[f"{SCALE_PROJECT}/{SCALE_FORK}"].stats.missing_files == []


def test_points_a_server_would_reject_are_left_out_and_named(written: dict[str, Any], exported: dict[str, Any]
                                                             ) -> None:
    outcomes = {o.key: o for o in exported["summary"].outcomes}
    scale = outcomes[f"{SCALE_PROJECT}/{SCALE_RUN}"].stats.skipped
    n1 = outcomes[f"offline/n1/{written['container_id']}"].stats.skipped
    assert [s.split(":")[0] for s in scale] == ["append train/loss@1.0"]
    assert [s.split(":")[0] for s in n1 if "train/loss" in s] == ["LogFloats train/loss@1.0"]
    # the series themselves (checked value for value above) hold only the accepted points


def test_previews_on_request(written: dict[str, Any], tmp_path: Path) -> None:
    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.selection import Selection
    from neptune_migration.sources.offline.source import OfflineSource
    from neptune_migration.vocabulary import RunRef

    source = OfflineSource(written["root"] / "scale", Selection.from_options(runs="^scale-main$"), previews=True)
    (run,) = source.list_runs(SCALE_PROJECT)
    source.export_run(run, ArchiveWriter(tmp_path))
    got = ArchivedValues(tmp_path, SCALE_PROJECT, SCALE_RUN)
    step, value, completion = SCALE_PREVIEW
    last = [r for r in got.rows if r["attribute_path"] == "train/loss" and float(r["step"]) == step]
    assert [(r["float_value"], r["is_preview"], r["completion_ratio"]) for r in last] == [(value, True, completion)]
    assert run.ref == RunRef(SCALE_PROJECT, SCALE_RUN)


def test_derived_identity_options_and_discover(written: dict[str, Any], tmp_path: Path) -> None:
    from neptune_migration.errors import UsageError
    from neptune_migration.selection import Selection
    from neptune_migration.sources.offline.source import OfflineSource
    from neptune_migration.stages.discover import discover
    from neptune_migration.vocabulary import RunRef

    source = OfflineSource(written["root"], Selection(), assign_project="ws/assigned",
                           run_id_template="{folder}-{index}-{short_id}")
    report = discover(source)
    assert [p["project"] for p in report["projects"]] == ["ws/assigned"]
    short = written["container_id"][:8]
    assert sorted(report["projects"][0]["run_ids"]) == sorted([f"n1-1-{short}", SCALE_FORK, SCALE_RUN,
                                                               SCALE_RESUMED])
    (n1,) = [r for r in source.list_runs("ws/assigned") if r.kind == "neptune1"]
    described = source.describe_run(n1)
    assert (described["project"], described["run_id"]) == ("ws/assigned", f"n1-1-{short}")
    assert set(described["derived"]) == {"project", "run_id", "creation_time"}
    assert described["attributes_by_type"]["file_set"] == 1 and described["attributes_by_type"]["artifact"] == 1
    assert described["missing_files"] and described["missing_files"][0].startswith("files/moved")
    assert described["file_bytes"] == (len(N1_WEIGHTS) + len(N1_INLINE) + sum(len(d) for _, d in N1_IMAGES)
                                       + sum(len(d) for d in N1_CODE.values()))

    # selection is applied client-side, on what the replay recorded
    by_tag = OfflineSource(written["root"], Selection.from_options(tags=["n1"]))
    assert [r.ref for p in by_tag.projects for r in by_tag.list_runs(p)] == [
        RunRef("offline/n1", written["container_id"])]
    by_experiment = OfflineSource(written["root"], Selection.from_options(experiments="^exp-offline$"))
    assert sorted(r.ref.run_id for p in by_experiment.projects for r in by_experiment.list_runs(p)) == [
        SCALE_FORK, SCALE_RUN]

    # two 1.x runs that a template cannot tell apart are refused before anything moves
    twin = tmp_path / "twins" / ".neptune" / "offline"
    twin.mkdir(parents=True)
    shutil.copytree(written["n1_dir"], twin / written["n1_dir"].name)
    shutil.copytree(written["n1_dir"], twin / (written["n1_dir"].name + "x"))
    with pytest.raises(UsageError, match="would both become"):
        OfflineSource(tmp_path / "twins", Selection(), run_id_template="{folder}").check()
    with pytest.raises(UsageError, match="unknown field"):
        OfflineSource(written["root"], Selection(), run_id_template="{nope}")
    with pytest.raises(UsageError, match="WORKSPACE/PROJECT"):
        OfflineSource(written["root"], Selection(), assign_project="no-slash")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no offline Neptune runs"):
        OfflineSource(empty, Selection()).check()
    with pytest.raises(UsageError, match="does not exist"):
        OfflineSource(tmp_path / "nowhere", Selection()).check()


def test_unreadable_folders_fail_alone_with_a_clear_message(written: dict[str, Any], tmp_path: Path) -> None:
    from rich.console import Console

    from neptune_migration.archive import ArchiveWriter
    from neptune_migration.ledger import Ledger
    from neptune_migration.progress import Tracker
    from neptune_migration.selection import Selection
    from neptune_migration.sources.offline.source import OfflineSource
    from neptune_migration.stages.export import export

    user = tmp_path / "lab"
    shutil.copytree(written["root"] / "n1", user, symlinks=True)
    broken_db = user / ".neptune" / "w_p_broken_1" / "run_operations.sqlite3"
    broken_db.parent.mkdir()
    broken_db.write_bytes(b"this is not a database")
    broken_n1 = user / ".neptune" / "offline" / "run__broken__1__x"
    broken_n1.mkdir()
    (broken_n1 / "metadata.json").write_text("{not json")
    source = OfflineSource(user, Selection())
    with Ledger(tmp_path / "state.db") as ledger:
        summary = export(source, ArchiveWriter(tmp_path / "a"), ledger,
                         lambda n: Tracker("t", n, Console(quiet=True), enabled=False), workers=1)
    by_status = {o.key: o for o in summary.outcomes}
    assert sorted(k for k, o in by_status.items() if o.status == "failed") == [
        "offline/lab/run__broken__1__x", "offline/lab/w_p_broken_1"]
    assert str(broken_db) in (by_status["offline/lab/w_p_broken_1"].error or "")
    assert str(broken_n1) in (by_status["offline/lab/run__broken__1__x"].error or "")
    assert by_status[f"offline/lab/{written['container_id']}"].status == "exported"


def test_migrate_to_mlflow_end_to_end(written: dict[str, Any], tmp_path: Path, mlflow_server: Any,
                                      prefix: str) -> None:
    from mlflow.tracking import MlflowClient
    from rich.console import Console

    from neptune_migration.archive import Archive, ArchiveWriter
    from neptune_migration.ledger import Ledger
    from neptune_migration.progress import Tracker
    from neptune_migration.selection import Selection
    from neptune_migration.sources.offline.source import OfflineSource
    from neptune_migration.stages.migrate import Workers, run_pipeline
    from neptune_migration.stages.validate import validate
    from neptune_migration.targets.mlflow.loader import MlflowTarget

    selection = Selection()
    target = MlflowTarget(mlflow_server.uri, experiment_prefix=prefix)
    tracker = lambda n: Tracker("t", n, Console(quiet=True), enabled=False)  # noqa: E731
    with Ledger(tmp_path / "state.db") as ledger:
        try:
            result = run_pipeline(OfflineSource(written["root"], selection), ArchiveWriter(tmp_path / "a"),
                                  target, selection, ledger, tracker, Workers(2, 2, 2), validate=False)
            exported, loaded = result.exported, result.loaded
            assert not exported.failed and not loaded.failed, (exported.failed, loaded.failed)
            assert loaded.count("loaded") == 4
            checked = validate(Archive(tmp_path / "a"), target, selection, ledger, workers=2)
        finally:
            target.close()
    assert checked.ok and len(checked.checks) == 4, [c.to_dict() for c in checked.checks if c.status != "validated"]

    client = MlflowClient(mlflow_server.uri)
    exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    runs = {r.data.tags.get("neptune.run_key"): r for r in client.search_runs(exps)}
    n1 = runs[f"offline/n1/{written['container_id']}"]
    assert float(n1.data.params["params/lr"]) == N1_ATOMS["params/lr"]
    history = client.get_metric_history(n1.info.run_id, "train/loss")
    # MLflow steps are integers (the target scales fractional ones), so compare values at their timestamps
    assert sorted((m.timestamp, m.value) for m in history) == [(ms(T0) + 1000 * i, v) for i, (_, v) in
                                                               enumerate(N1_LOSS)]
    artifacts = {a.path for a in client.list_artifacts(n1.info.run_id, "data/code/src_files")}
    assert artifacts == {"data/code/src_files/train.py", "data/code/src_files/sub"}
    scale = runs[f"{SCALE_PROJECT}/{SCALE_RUN}"]
    assert scale.data.params["params/name"] == SCALE_CONFIGS["params/name"]


def test_migrate_to_wandb_offline_end_to_end(written: dict[str, Any], tmp_path: Path) -> None:
    from rich.console import Console

    from neptune_migration.archive import Archive, ArchiveWriter
    from neptune_migration.ledger import Ledger
    from neptune_migration.progress import Tracker
    from neptune_migration.selection import Selection
    from neptune_migration.sources.offline.source import OfflineSource
    from neptune_migration.stages.migrate import Workers, run_pipeline
    from neptune_migration.stages.validate import validate
    from neptune_migration.targets.wandb.loader import WandbOfflineTarget
    from neptune_migration.vocabulary import RunRef

    selection = Selection()
    target = WandbOfflineTarget(tmp_path / "wb", project="offline-test")
    with Ledger(tmp_path / "state.db") as ledger:
        result = run_pipeline(OfflineSource(written["root"], selection), ArchiveWriter(tmp_path / "a"), target,
                              selection, ledger, lambda n: Tracker("t", n, Console(quiet=True), enabled=False),
                              Workers(2, 2, 2), validate=False)
        exported, loaded = result.exported, result.loaded
        assert not exported.failed and not loaded.failed, (exported.failed, loaded.failed)
        checked = validate(Archive(tmp_path / "a"), target, selection, ledger, workers=2)
    assert checked.ok and len(checked.checks) == 4, [c.to_dict() for c in checked.checks if c.status != "validated"]
    archive = Archive(tmp_path / "a")
    scale_run = archive.run(RunRef(SCALE_PROJECT, SCALE_RUN))
    assert scale_run is not None
    data = target.read_back(scale_run)
    params = data.config["params"]
    for key in ("lr", "batch", "zero_int", "zero_float", "name", "empty", "on", "off"):
        want_value = SCALE_CONFIGS[f"params/{key}"]
        assert params[key] == want_value and type(params[key]) is type(want_value), key
    points = data.points("train/loss")
    want = [(s, v, ms(T0 + dt.timedelta(seconds=10 + i))) for i, (s, v) in enumerate(SCALE_LOSS)]
    assert [(p[0], p[2]) for p in points] == [(w[0], w[2]) for w in want]
    assert all(same(p[1], w[1]) for p, w in zip(points, want, strict=True))
    assert data.string_series["train/logs"] == [(s, ms(T0 + dt.timedelta(seconds=40 + i)), line)
                                                for i, (s, line) in enumerate(SCALE_LOGS)]
    assert sorted(data.tags) == sorted(set(SCALE_TAGS_ADDED) - set(SCALE_TAGS_REMOVED))
    n1_run = archive.run(RunRef("offline/n1", written["container_id"]))
    assert n1_run is not None
    n1 = target.read_back(n1_run)
    assert [(p[0], p[1], p[2]) for p in n1.points("train/loss")] == [(s, v, ms(T0) + 1000 * i)
                                                                     for i, (s, v) in enumerate(N1_LOSS)]
    assert sorted(n1.tags) == sorted(N1_TAGS)
    by_type = {v["type"]: sorted(v["files"]) for v in n1.artifacts.values()}
    assert by_type["neptune-file-set"] == sorted(N1_CODE)
    assert by_type["neptune-artifact"] == ["files_list.json"]


def test_cli_discover_and_migrate(written: dict[str, Any], tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    from tests.conftest import run_cli

    root = str(written["root"])
    found = run_cli("discover", "--from", "neptune-offline", root, "--assign-project", "ws/cli",
                    "--run-id-template", "{folder}-{index}", "--json", cwd=tmp_path)
    assert found.returncode == 0, found.stdout + found.stderr
    report = json.loads(found.stdout)
    assert sorted(report["projects"][0]["run_ids"]) == sorted(["n1-1", SCALE_RUN, SCALE_FORK, SCALE_RESUMED])
    args = ["migrate", "--from", "neptune-offline", root, "--to", "mlflow", "--mlflow-tracking-uri",
            mlflow_server.uri, "--experiment-prefix", prefix, "--archive", str(tmp_path / "a"),
            "--state", str(tmp_path / "s.db"), "--no-progress"]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    missing = [line for line in first.stdout.splitlines() if "files/moved" in line]
    assert len(missing) == 2, first.stdout  # one per run whose logged-by-path file was moved away
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and "runs already loaded (skipped)" in again.stdout
    offline = run_cli("migrate", "--from", "neptune-offline", root, "--to", "wandb-offline", "--wandb-dir",
                      str(tmp_path / "wb"), "--archive", str(tmp_path / "a"), "--state", str(tmp_path / "s.db"),
                      "--report-dir", str(tmp_path / "report-wb"), "--no-progress", cwd=tmp_path,
                      env={"WANDB_DIR": str(tmp_path / "wbdir"), "WANDB_CONFIG_DIR": str(tmp_path / "wbcfg"),
                           "WANDB_CACHE_DIR": str(tmp_path / "wbcache"), "WANDB_DATA_DIR": str(tmp_path / "wbdata")})
    assert offline.returncode == 0, offline.stdout[-3000:] + offline.stderr[-3000:]
    assert "wandb sync" in offline.stdout
    report = json.loads((tmp_path / "report-wb" / "report.json").read_text())
    assert report["totals"]["runs_validated"] == 4 and report["totals"]["mismatches"] == 0


def test_user_folders_are_byte_identical_afterwards(written: dict[str, Any], exported: dict[str, Any]) -> None:
    """Runs last in this module: every read above (export, discover, migrate twice, previews) left no trace."""
    assert _snapshot(written["root"]) == written["before"]


if __name__ == "__main__":
    {"scale": write_scale, "n1": write_neptune1}[sys.argv[1]](Path(sys.argv[2]).resolve())
