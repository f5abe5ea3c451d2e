"""Hostile and broken input, through the real CLI: each gets one clear line and a non-zero exit, or a documented
safe behaviour (docs/reliability.md) that validation confirms."""

from __future__ import annotations

import io
import os
import re
import resource
import signal
import subprocess
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neptune_migration.archive import Archive, ArchiveWriter
from neptune_migration.samples import write_nasty_archive
from neptune_migration.sandbox import Sandbox
from neptune_migration.sandbox.world import Project
from neptune_migration.sources.base import SourceError
from neptune_migration.sources.neptune2.source import _safe_zip_members
from neptune_migration.vocabulary import RunRef

from ..conftest import VENV_BIN, run_cli
from .conftest import read_report

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def _assert_run_fails_alone(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A damaged run is a failed run, named with its reason; the command exits 1 (the other runs, if any, load)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    failed = [line for line in result.stdout.splitlines() if line.startswith("failed ")]
    assert failed, result.stdout
    for needle in needles:
        assert needle in " ".join(result.stdout.split()), result.stdout


def _load(archive: Path, tmp_path: Path, uri: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return run_cli("load", "--archive", str(archive), "--state", str(tmp_path / "s.db"), "--mlflow-tracking-uri",
                   uri, "--experiment-prefix", prefix, "--no-progress")


def _validate(archive: Path, tmp_path: Path, uri: str, prefix: str) -> subprocess.CompletedProcess[str]:
    return run_cli("validate", "--archive", str(archive), "--state", str(tmp_path / "s.db"), "--mlflow-tracking-uri",
                   uri, "--experiment-prefix", prefix, "--report-dir", str(tmp_path / "report"), "--no-progress")


def _multi_part_archive(root: Path) -> Path:
    """One run written in three parts (a small part size), as a long export writes it."""
    writer = ArchiveWriter(root, rows_per_part=100, rows_per_batch=100)
    with writer.run(RunRef("ws/parts", "SPLIT-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_series("m", "float_series", list(range(250)), [T0 + timedelta(seconds=i) for i in range(250)],
                     [float(i) for i in range(250)])
    parts = sorted((root / "data").rglob("*_part_*.parquet"))
    assert len(parts) >= 3, parts
    return root


# -- damaged archives ----------------------------------------------------------------------------------------------
def test_truncated_later_part_is_a_clear_error(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    archive = _multi_part_archive(tmp_path / "a")
    part = next((archive / "data").rglob("*_part_1.parquet"))
    part.write_bytes(part.read_bytes()[:200])
    _assert_run_fails_alone(_load(archive, tmp_path, mlflow_server.uri, prefix), "corrupt or unreadable parquet",
                            "_part_1.parquet")


def test_corrupt_bytes_inside_a_part_are_a_clear_error(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    archive = write_nasty_archive(tmp_path / "a")
    part = next((archive / "data").rglob("*NASTY-1*_part_0.parquet"))
    data = bytearray(part.read_bytes())
    # Footer intact, pages garbled: the file opens, reading its rows fails.
    for i in range(8, len(data) // 2):
        data[i] ^= 0x5A
    part.write_bytes(bytes(data))
    result = _load(archive, tmp_path, mlflow_server.uri, prefix)
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert "NASTY-1" in result.stdout + result.stderr


def test_wrong_schema_is_a_clear_error(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    project = tmp_path / "a" / "data" / "ws__x"
    project.mkdir(parents=True)
    pq.write_table(pa.table({"project_id": ["ws/x"], "run_id": ["R"], "step": ["not a decimal"]}),
                   project / "R_part_0.parquet")
    _assert_run_fails_alone(_load(tmp_path / "a", tmp_path, mlflow_server.uri, prefix), "schema")


def test_a_run_with_a_missing_middle_part_is_refused(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    """part_0 and part_2 present, part_1 gone: refused with a clear error, never loaded as if whole."""
    archive = _multi_part_archive(tmp_path / "a")
    next((archive / "data").rglob("*_part_1.parquet")).unlink()
    result = _load(archive, tmp_path, mlflow_server.uri, prefix)
    _assert_run_fails_alone(result, "missing part(s) 1", "present: 0, 2")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    assert not [e for e in client.search_experiments() if e.name.startswith(prefix)], "nothing was loaded"


# -- paths that leave the archive -------------------------------------------------------------------------------
@pytest.mark.parametrize("evil", ["../../outside.bin", "/etc/hostname", "symlink"])
def test_file_paths_escaping_the_archive_are_refused(tmp_path: Path, mlflow_server: Any, prefix: str,
                                                     evil: str) -> None:
    secret = tmp_path / "outside.bin"
    secret.write_bytes(b"SECRET-OUTSIDE-THE-ARCHIVE")
    root = tmp_path / "a"
    writer = ArchiveWriter(root)
    with writer.run(RunRef("ws/evil", "EVIL-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_file("good", "file", b"fine", "good.txt")
        w.add_rows([{"attribute_path": "evil", "attribute_type": "file",
                     "file_value": {"path": "evil-link" if evil == "symlink" else evil}, "file_name": "x.bin"}])
    if evil == "symlink":
        files_dir = Archive(root).scan().runs[0].files_dir
        assert files_dir is not None and files_dir.is_dir()
        (files_dir / "evil-link").symlink_to(secret)
    result = _load(root, tmp_path, mlflow_server.uri, prefix)
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert "failed ws/evil/EVIL-1" in result.stdout, result.stdout
    assert any(word in result.stdout for word in ("outside", "escape", "leaves", "refusing")), result.stdout
    artifacts = list((mlflow_server.root / "artifacts").rglob("*"))
    assert not any(p.is_file() and b"SECRET-OUTSIDE" in p.read_bytes() for p in artifacts)


def _zip(entries: list[tuple[str, bytes, bool]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, is_link in entries:
            info = zipfile.ZipInfo(name)
            if is_link:
                info.external_attr = (0o120777 << 16)
            zf.writestr(info, data)
    return buf.getvalue()


@pytest.mark.parametrize("entry", [("../../evil.sh", False), ("/etc/evil", False), ("C:/evil", False),
                                   ("a/../../evil", False), ("..\\..\\evil", False), ("link", True)])
def test_zip_slip_in_file_sets_is_refused(tmp_path: Path, entry: tuple[str, bool]) -> None:
    name, is_link = entry
    path = tmp_path / "set.zip"
    path.write_bytes(_zip([("fine.txt", b"ok", False), (name, b"/etc/passwd" if is_link else b"x", is_link)]))
    scratch = tmp_path / "scratch"
    with pytest.raises(SourceError, match=r"escapes it|symbolic link"):
        list(_safe_zip_members(path, scratch))
    assert not (tmp_path.parent / "evil.sh").exists()
    # members are unpacked under numbered scratch names only, never under the name the zip gives them
    assert {p.name for p in scratch.iterdir()} <= {"0"}


def test_a_clean_file_set_extracts(tmp_path: Path) -> None:
    path = tmp_path / "set.zip"
    path.write_bytes(_zip([("a/b.txt", b"1", False), ("c..d.txt", b"2", False)]))
    # each member is read before the next is asked for, as the exporter does
    members = [(name, member.read_bytes()) for name, member in _safe_zip_members(path, tmp_path / "scratch")]
    assert members == [("a/b.txt", b"1"), ("c..d.txt", b"2")]


# -- names and values that break naive loaders ---------------------------------------------------------------
def _strange_archive(root: Path) -> Path:
    writer = ArchiveWriter(root)
    ts = [T0 + timedelta(seconds=i) for i in range(4)]
    with writer.run(RunRef("ws/strange", "STRANGE-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_atom("params/tab\there", "string", "control\x00chars\x1b[31m")
        w.add_atom("params/bell\x07and\nnewline", "float", 1.5)
        w.add_atom("params/" + "p" * 10_000, "int", 7)
        w.add_series("metrics/" + "m" * 10_000, "float_series", [0, 1, 2, 3], ts, [0.0, 1.0, 2.0, 3.0])
        w.add_series("metrics/ctl\r\x01", "float_series", [0, 1, 2, 3], ts, [1.0, 2.0, 3.0, 4.0])
        # The same step twice with different values: both are kept.
        w.add_series("metrics/dup", "float_series", [0, 1, 1, 2], ts, [0.0, 1.0, 1.5, 2.0])
        w.add_series("logs/" + "s" * 10_000, "string_series", [0, 1], ts[:2], ["a", "b\x00c"])
    return root


def test_strange_names_and_duplicate_points_load_and_validate(tmp_path: Path, mlflow_server: Any,
                                                              prefix: str) -> None:
    archive = _strange_archive(tmp_path / "a")
    result = _load(archive, tmp_path, mlflow_server.uri, prefix)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = _validate(archive, tmp_path, mlflow_server.uri, prefix)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = read_report(tmp_path / "report")
    assert report["totals"]["mismatches"] == 0 and report["totals"]["runs_validated"] == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    exp = [e.experiment_id for e in client.search_experiments() if e.name.startswith(prefix)]
    (run,) = client.search_runs(exp)
    points = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "metrics/dup"))
    assert points == [(0, 0.0), (1, 1.0), (1, 1.5), (2, 2.0)], points
    assert len(run.data.metrics) == 3 and len(run.data.params) == 3, "every strange name survives, renamed"


def test_exact_duplicate_points_are_accounted_for(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    writer = ArchiveWriter(tmp_path / "a")
    ts = [T0, T0 + timedelta(seconds=1)]
    with writer.run(RunRef("ws/dups", "DUP-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_series("metrics/dup", "float_series", [0, 1], ts, [0.0, 1.0])
        w.add_series("metrics/dup", "float_series", [1], ts[1:], [1.0])  # the same point again
    result = _load(tmp_path / "a", tmp_path, mlflow_server.uri, prefix)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = _validate(tmp_path / "a", tmp_path, mlflow_server.uri, prefix)
    # MLflow keys a metric row by step, timestamp and value, so it keeps one copy: a documented approximation,
    # counted in the report, never an unexplained mismatch.
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = read_report(tmp_path / "report")
    assert report["totals"]["mismatches"] == 0
    assert "duplicate_points_stored_once: 1" in checked.stdout


def test_steps_beyond_int64_after_scaling(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    """A fractional step whose exact integer scaling overflows int64 (MLflow's step type)."""
    writer = ArchiveWriter(tmp_path / "a")
    with writer.run(RunRef("ws/steps", "HUGE-1")) as w:
        w.add_atom("sys/creation_time", "datetime", T0)
        w.add_series("metrics/huge", "float_series", [0.5, 9.0e18], [T0, T0 + timedelta(seconds=1)], [1.0, 2.0])
    result = _load(tmp_path / "a", tmp_path, mlflow_server.uri, prefix)
    # Refused, never truncated or wrapped: the run fails with the reason, the command exits non-zero.
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert "failed ws/steps/HUGE-1" in result.stdout and "beyond int64" in result.stdout, result.stdout
    checked = _validate(tmp_path / "a", tmp_path, mlflow_server.uri, prefix)
    assert checked.returncode != 0, "validation must not call the refused run fine"
    report = read_report(tmp_path / "report")
    assert report["totals"]["runs_validated"] == 0 and report["totals"]["runs_failed"] == 1, report["totals"]


# -- source side: an empty project, a full disk -------------------------------------------------------------------
def test_empty_project_migrates_nothing_and_says_so(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    with Sandbox([Project("sandbox", "empty", key="EMPTY")]) as sb:
        result = run_cli("migrate", "--from", "neptune3", "-p", "sandbox/empty", "--to", "mlflow",
                         "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix, "--archive",
                         str(tmp_path / "a"), "--state", str(tmp_path / "s.db"), "--report-dir",
                         str(tmp_path / "r"), "--no-progress", env=sb.env())
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"runs selected\s+0", result.stdout), result.stdout


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))


def test_disk_full_while_writing_the_archive(tmp_path: Path) -> None:
    from neptune_migration.sandbox import generate_project

    project = generate_project("full", runs=3, series=2, points=4000, files=1, nasty=False)
    with Sandbox([project]) as sb:
        args = ["export", "--from", "neptune3", "-p", "sandbox/full", "--archive", str(tmp_path / "a"), "--state",
                str(tmp_path / "s.db"), "--no-progress", "--workers", "1"]
        result = subprocess.run([str(VENV_BIN / "neptune-migrate"), *args], env=dict(os.environ, **sb.env()),
                                capture_output=True, text=True, timeout=180, preexec_fn=_limit_file_size)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr + result.stdout
        assert "File too large" in result.stdout + result.stderr or "No space" in result.stdout + result.stderr
        # Nothing half-written is mistaken for a run: a run that reads as complete now is whole (it has the rows
        # it has after the rerun, which skips it as already exported).
        before = {}
        if any((tmp_path / "a" / "data").glob("*/*_part_0.parquet")):
            before = {run.ref: run.table().num_rows for run in Archive(tmp_path / "a").scan().runs}
        again = subprocess.run([str(VENV_BIN / "neptune-migrate"), *args], env=dict(os.environ, **sb.env()),
                               capture_output=True, text=True, timeout=180)
        assert again.returncode == 0, again.stdout + again.stderr
        after = {run.ref: run.table().num_rows for run in Archive(tmp_path / "a").scan().runs}
        assert len(after) == 3 and all(after[ref] == n for ref, n in before.items()), (before, after)
