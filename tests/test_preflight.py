"""Usage errors are found before anything is written, `Next:` lines paste and work, and a server that never
answered fails fast: the new-user cases of issue 24, each through the real CLI."""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.retry import DEFAULT_CONNECT_TIMEOUT, Patience, first_contact
from neptune_migration.selection import Selection
from neptune_migration.stages.preflight import check_archive, check_state
from neptune_migration.vocabulary import FILE_LIKE_TYPES

from .conftest import VENV_BIN, free_port, run_cli

# A failed preflight costs the interpreter's start-up, never a store's creation or a server's retry budget.
FAST_SECONDS = 30


def _one_line_error(result, *needles: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


PLANTED = ("empty", "notes.txt", "state-folder")  # what each case finds in its folder


def _nothing_written(work: Path) -> None:
    """No MLflow store, no ledger, no archive folder: the command left the folder as it found it."""
    assert sorted(p.name for p in work.iterdir()) == sorted(PLANTED), list(work.iterdir())
    assert not any((work / "state-folder").iterdir()) and not any((work / "empty").iterdir())
    assert (work / "notes.txt").read_text() == "not a ledger\n"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def _cases(exporter: Path, work: Path) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    """name -> (command line, what its error line must say)."""
    data, files = str(exporter / "neptune3" / "data"), str(exporter / "neptune3" / "files")
    empty, folder, stranger = work / "empty", work / "state-folder", work / "notes.txt"
    return {
        "cluster with a SQLite ledger": (
            ["load", "--archive", data, "--files", files, "--cluster", f"tcp://127.0.0.1:{free_port()}"],
            ("--cluster", "--state postgresql://")),
        "empty archive folder": (["load", "--archive", str(empty)], ("--archive", "holds no runs")),
        "missing archive": (["validate", "--archive", str(work / "nope")], ("--archive", "archive not found")),
        "state naming a folder": (["load", "--archive", data, "--files", files, "--state", str(folder)],
                                  ("--state", "is a folder")),
        "state naming a file that is no ledger": (
            ["load", "--archive", data, "--files", files, "--state", str(stranger)],
            ("--state", "is not a ledger")),
        "exporter archive without --files": (["load", "--archive", data], ("--files is needed", "--exclude files")),
        "project not in the archive": (["load", "--archive", data, "--files", files, "-p", "ws/typo"],
                                       ("--project", "'ws/typo' is not in the archive", "ws/proj")),
        "retry before any load": (["retry", "--archive", data, "--files", files], ("no ledger",)),
        "migrate with a SQLite ledger on a cluster": (
            ["migrate", "--from", "neptune3", "-p", "ws/proj", "--cluster", f"tcp://127.0.0.1:{free_port()}"],
            ("--cluster",)),
        "export into a file": (["export", "-p", "ws/proj", "--archive", str(stranger)], ("--archive", "is a file")),
    }


CASES = ["cluster with a SQLite ledger", "empty archive folder", "missing archive", "state naming a folder",
         "state naming a file that is no ledger", "exporter archive without --files", "project not in the archive",
         "retry before any load", "migrate with a SQLite ledger on a cluster", "export into a file"]


@pytest.mark.parametrize("case", CASES)
def test_usage_error_before_any_write(exporter_archives: Path, work: Path, case: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "NEPTUNE_MIGRATION_STATE", "NEPTUNE_MIGRATION_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    args, needles = _cases(exporter_archives, work)[case]
    (work / "empty").mkdir()
    (work / "state-folder").mkdir()
    (work / "notes.txt").write_text("not a ledger\n")
    started = time.monotonic()
    # No --mlflow-tracking-uri and no --state: the defaults (./mlflow-store, ./.neptune-migration) are what a new
    # user's first command would create in the folder it runs in.
    result = run_cli(*args, "--no-progress", cwd=work, timeout=120)
    elapsed = time.monotonic() - started
    _one_line_error(result, *needles)
    assert elapsed < FAST_SECONDS, elapsed
    _nothing_written(work)


@pytest.mark.parametrize("exporter", ["neptune3", "neptune2"])
def test_exporter_archive_without_files_is_refused_before_any_mlflow_run(
        exporter_archives: Path, mlflow_server, prefix: str, work: Path, exporter: str) -> None:
    data = exporter_archives / exporter / "data"
    args = ["load", "--archive", str(data), "--mlflow-tracking-uri", mlflow_server.uri, "--experiment-prefix", prefix,
            "--state", str(work / "state.db"), "--no-progress"]
    client = MlflowClient(mlflow_server.uri)
    before = _all_runs(client)
    _one_line_error(run_cli(*args, cwd=work, timeout=120), "--files is needed")
    assert _all_runs(client) == before  # not one run created, not even a FAILED or deleted one
    assert client.search_experiments(filter_string=f"name LIKE '{prefix}%'", view_type=ViewType.ALL) == []
    assert not (work / "state.db").exists()
    if exporter == "neptune3":
        # The same archive with its files root loads: the refusal was about --files, nothing else.
        loaded = run_cli(*args, "--files", str(exporter_archives / exporter / "files"), cwd=work, timeout=300)
        assert loaded.returncode == 0, loaded.stdout[-3000:] + loaded.stderr[-2000:]
        experiment = client.get_experiment_by_name(f"{prefix}ws/proj")
        assert experiment is not None and len(client.search_runs([experiment.experiment_id])) == 3


def _all_runs(client: MlflowClient) -> list[str]:
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return sorted(r.info.run_id for r in client.search_runs(experiments, run_view_type=ViewType.ALL,
                                                             max_results=5000))


def test_preflight_reads_the_archive_without_writing(exporter_archives: Path, tmp_path: Path) -> None:
    data = exporter_archives / "neptune2" / "data"
    with pytest.raises(UsageError, match="--files is needed"):
        check_archive(data, None, Selection())
    check_archive(data, None, Selection.from_options(exclude=["files"]))
    check_archive(data, exporter_archives / "neptune2" / "files", Selection())
    # Runs without any file row need no files root: the same runs with their file rows taken out.
    bare = tmp_path / "bare"
    for part in data.rglob("*_part_*.parquet"):
        table = pq.read_table(part)
        keep = pc.invert(pc.is_in(table.column("attribute_type"), value_set=pa.array(FILE_LIKE_TYPES)))
        (bare / part.parent.name).mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(keep), bare / part.parent.name / part.name)
    check_archive(bare, None, Selection())
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError, match="no ledger"):
        check_state(tmp_path / "state.db", must_exist=True)
    check_state(tmp_path / "new" / "state.db")
    assert sorted(p for p in tmp_path.rglob("*")) == before


# -- Next: lines --------------------------------------------------------------------------------------------
def _next_command(stdout: str) -> str:
    """The lines of the command after the `Next:` line, as a terminal shows them (wrapped with ` \\`
    continuations): what a user selects and pastes."""
    lines = stdout.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Next:")) + 1
    command = []
    for line in lines[start:]:
        command.append(line)
        if not line.rstrip().endswith("\\"):
            break
    return "\n".join(command)


def test_next_line_of_a_failed_load_pastes_and_works(exporter_archives: Path, mlflow_server, prefix: str,
                                                     work: Path) -> None:
    data, files = exporter_archives / "neptune3" / "data", exporter_archives / "neptune3" / "files"
    payload = next(files.rglob("run-a/model/ckpt.bin"))
    saved = payload.read_bytes()
    payload.unlink()
    password, token = "pw-never-printed-7f3a", "tok-never-printed-9c1d"
    with_password = mlflow_server.uri.replace("http://", f"http://neptune:{password}@")
    result = run_cli("load", "--archive", str(data), "--files", str(files), "--to", "mlflow",
                     "--mlflow-tracking-uri", with_password, "--experiment-prefix", prefix, "-p", "ws/proj",
                     "--state", str(work / "state.db"), "--workers", "2", "--timeout", "30", "--no-progress",
                     cwd=work, env={"MLFLOW_TRACKING_TOKEN": token})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert password not in output and token not in output
    line = _next_command(result.stdout)
    words = shlex.split(line.replace("\\\n", ""))  # a shell drops each backslash-newline
    assert words[:2] == ["neptune-migrate", "retry"], line
    options = dict(zip(words[2::2], words[3::2], strict=True))
    assert float(options.pop("--timeout")) == 30
    assert options == {"--archive": str(data), "--files": str(files), "--to": "mlflow",
                       "--mlflow-tracking-uri": mlflow_server.uri, "--experiment-prefix": prefix,
                       "--project": "ws/proj", "--state": str(work / "state.db"), "--workers": "2"}, line

    payload.write_bytes(saved)
    # Pasted into a shell as printed, continuation lines and all.
    retried = subprocess.run(["bash", "-c", line], cwd=work, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, MLFLOW_TRACKING_TOKEN=token, NEPTUNE_MIGRATION_RETRIES="2",
                                      PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"))
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-2000:]
    assert "Loaded again: 1 run(s)" in retried.stdout and token not in retried.stdout + retried.stderr
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name(f"{prefix}ws/proj")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["neptune.run_key"] for r in runs) == ["ws/proj/run-a", "ws/proj/run-b",
                                                                    "ws/proj/run-b-old"]
    assert not any("neptune.migration.load_error" in r.data.tags for r in runs)  # the failed attempt repaired
    run_a = next(r for r in runs if r.data.tags["neptune.run_key"] == "ws/proj/run-a")
    assert "model" in {a.path for a in client.list_artifacts(run_a.info.run_id)}


@pytest.mark.parametrize("given,shown", [
    ("postgresql://migrator:s3cret@db:5432/ledger", "postgresql://migrator@db:5432/ledger"),
    ("postgresql+psycopg://migrator:s3cret@db/mlflow", "postgresql+psycopg://migrator@db/mlflow"),
    ("http://neptune:s3cret@mlflow.example:5000", "http://mlflow.example:5000"),
    ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
    ("s3://bucket/archive", "s3://bucket/archive"),
])
def test_next_line_urls_keep_what_connects_and_drop_passwords(given: str, shown: str) -> None:
    from neptune_migration.cli.commands import _without_password

    assert _without_password(given) == shown and "s3cret" not in _without_password(given)


# -- first contact -------------------------------------------------------------------------------------------
def _closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _token(url: str) -> str:
    return base64.b64encode(json.dumps({"api_address": url, "api_url": url}).encode()).decode()


@pytest.mark.parametrize("source", ["neptune3", "neptune2"])
def test_closed_neptune_port_fails_fast_with_defaults(tmp_path: Path, source: str) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = run_cli("discover", "--from", source, "-p", "ws/proj", cwd=tmp_path,
                     env={"NEPTUNE_API_TOKEN": _token(url)}, timeout=120)
    elapsed = time.monotonic() - started
    _one_line_error(result, f"cannot reach the Neptune server at {url}", "connection refused", "--connect-timeout")
    assert elapsed < 30, elapsed


def test_closed_mlflow_port_fails_fast_with_defaults(exporter_archives: Path, work: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = run_cli("load", "--archive", str(exporter_archives / "neptune3" / "data"), "--exclude", "files",
                     "--mlflow-tracking-uri", url, "--state", str(work / "state.db"), cwd=work, timeout=120)
    elapsed = time.monotonic() - started
    _one_line_error(result, f"cannot reach the MLflow tracking server at {url}", "connection refused",
                    "--connect-timeout")
    assert elapsed < 30, elapsed
    assert list(work.iterdir()) == []


def test_first_contact_waits_for_a_server_still_starting() -> None:
    """A refusal is tried again within --connect-timeout: a server that starts listening in time is reached, and
    from then on it is never probed again (its later refusals are restarts, for the retry budget)."""
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    patience = Patience(timeout=5, budget=60, connect=DEFAULT_CONNECT_TIMEOUT)
    listener: list[socket.socket] = []

    def listen_soon() -> None:
        time.sleep(1.5)
        listener.append(socket.create_server(("127.0.0.1", port)))

    thread = threading.Thread(target=listen_soon)
    thread.start()
    started = time.monotonic()
    first_contact(url, patience, "test server")
    thread.join()
    assert 1.0 < time.monotonic() - started < DEFAULT_CONNECT_TIMEOUT
    listener[0].close()
    started = time.monotonic()
    first_contact(url, patience, "test server")  # answered once: no probe, no wait, no error
    assert time.monotonic() - started < 0.5
    with pytest.raises(MigrationError, match=r"connection refused for \d+ s.*--connect-timeout"):
        first_contact(f"http://127.0.0.1:{_closed_port()}", Patience(timeout=1, budget=60, connect=1),
                      "test server")


def test_closed_wandb_port_is_called_refused(exporter_archives: Path, work: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    result = run_cli("load", "--archive", str(exporter_archives / "neptune3" / "data"), "--exclude", "files",
                     "--to", "wandb", "--state", str(work / "state.db"), cwd=work, timeout=120,
                     env={"WANDB_BASE_URL": url, "WANDB_API_KEY": "local-" + "0" * 40})
    elapsed = time.monotonic() - started
    _one_line_error(result, f"cannot reach the W&B server at {url}", "connection refused", "--connect-timeout")
    assert "no answer" not in result.stderr
    assert list(work.iterdir()) == []
    # wandb is imported before its check: slower to start than the others, still far from the retry budget.
    assert elapsed < 45, elapsed
