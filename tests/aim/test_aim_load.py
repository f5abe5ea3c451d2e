"""`--to aim`: the nasty archive into a real Aim repository, read back with Aim's own SDK; reruns, tampering and
a SIGKILL in the middle of a load."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import neptune_migration as nm
from neptune_migration.archive import ArchiveWriter
from neptune_migration.samples import BASE_TIME, write_nasty_archive
from neptune_migration.vocabulary import RunRef

from .aim_read import chunk_states, points, runs_by_key

VENV_BIN = Path(sys.executable).parent
NASTY = "nasty/ünïcode-proj/NASTY-1"


def _options(root: Path) -> dict:
    return dict(to="aim", aim_repo=str(root / "aim-repo"), state=root / "state.db", progress=False, workers=2)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("aim")
    archive = write_nasty_archive(root / "archive")
    result = nm.load(archive, **_options(root))
    assert result.ok, result.to_dict()
    checked = nm.validate(archive, report_dir=root / "report", **_options(root))
    return {"root": root, "archive": archive, "load": result, "validate": checked}


def test_nasty_archive_validates_clean(loaded: dict) -> None:
    checked = loaded["validate"]
    assert checked.ok, checked.to_dict()
    checks = {c.ref.key: c for c in checked.summary.checks}
    nasty = checks[NASTY]
    assert nasty.checked["points"] == 2521 and nasty.checked["series_points"] == 5
    assert nasty.checked["files"] == 6 and nasty.checked["images"] == 3 and nasty.checked["params"] == 26
    assert nasty.approximations == {"aim_failed_state_as_param": 1, "aim_datetime_param_as_text": 3,
                                    "aim_steps_scaled": 4}
    assert loaded["load"].summary.outcomes[0].result.approximations == nasty.approximations


def test_aim_holds_the_nasty_run_exactly(loaded: dict) -> None:
    runs = runs_by_key(loaded["root"] / "aim-repo")
    assert sorted(k for k in runs) == ["nasty/ünïcode-proj/NASTY-1", "nasty/ünïcode-proj/NASTY-2"]
    (run,) = runs[NASTY]
    created = datetime(2024, 2, 29, 23, 59, 59, 123000, tzinfo=UTC)
    assert run.name == "NASTY-1" and run.experiment == "nasty/ünïcode-proj"
    assert sorted(run.tags) == ["a,b", "tag with space", "ünï"]
    assert run.description == "a description\nwith *markdown* and ünïcode"
    assert round(run.creation_time * 1000) == round(created.timestamp() * 1000)
    assert round(run.end_time * 1000) == round((created + timedelta(minutes=90)).timestamp() * 1000)
    assert run["neptune_migration"]["state"] == "complete" and run["sys/failed"] is True

    special = points(run, "metrics/special")
    values = [special[s][0] for s in range(6)]
    assert math.isnan(values[0]) and values[1:3] == [math.inf, -math.inf]
    assert values[3] == 0.0 and not math.copysign(1, values[3]) < 0
    assert values[4] == 0.0 and math.copysign(1, values[4]) < 0 and values[5] == 5e-324
    # Fractional steps scaled by a power of ten per series; huge steps exact in int64.
    assert sorted(points(run, "metrics/fractional")) == [290000, 500000, 1000000, 1250000, 2000001]
    assert sorted(points(run, "metrics/tiny_fraction")) == [1234567, 2000000]
    assert sorted(points(run, "metrics/huge_steps")) == [10**9, 10**11, 5 * 10**14, 9007199254740991]
    assert run["neptune_migration"]["step_decimals"] == {"hist/weights": 1, "images/preds": 1,
                                                          "metrics/fractional": 6, "metrics/tiny_fraction": 7}
    loss = points(run, "metrics/loss")
    assert len(loss) == 2500 and loss[10][0] == 1 / 11
    assert round(loss[10][2] * 1000) == round((created + timedelta(milliseconds=370)).timestamp() * 1000)

    assert run["params/big_int"] == 2**62 + 1 and math.isnan(run["params/nan"])
    assert run["params/when"] == "2023-01-02T03:04:05.678Z" and run["params/set"] == ["a", "b", "c"]
    assert run["params/ünïcode ключ"] == "значение" and len(run["params/long_text"]) == 9003

    from aim.storage.context import Context

    texts = {s: f[0].data for s, f in run.get_text_sequence("logs/stdout", Context({})).data.items()}
    assert texts[1] == "ünïcode ✓" and texts[2] == "x" * 9000
    hist = {s: f[0] for s, f in run.get_distribution_sequence("hist/weights", Context({})).data.items()}
    assert list(hist[15].weights) == [7.0] and hist[15].storage["edges"] == [-1.0, 0.0]
    images = run.get_image_sequence("images/preds", Context({}))
    assert sorted(int(s) for s, _f in images.data.items()) == [0, 10, 25]

    weird = run.artifacts["files/weird name #1?%/we#ird ?name%20.txt"]
    stored = Path(weird.storage["base_uri"].removeprefix("file://")) / weird.name
    assert stored.read_bytes() == b"weird"


def test_rerun_writes_nothing(loaded: dict) -> None:
    repo = loaded["root"] / "aim-repo"
    before = _snapshot(repo)
    assert any("seqs" in k for k in before) and any("neptune-artifacts" in k for k in before)
    again = nm.load(loaded["archive"], **_options(loaded["root"]))
    assert again.ok and again.summary.count("already_loaded") == 2 and again.summary.count("loaded") == 0
    assert _snapshot(repo) == before


_EDIT_IN_AIM = """
import sys
from aim import Repo, Run
from aim.sdk.index_manager import RepoIndexManager

repo, run_hash = sys.argv[1:]
writer = Run(run_hash, repo=repo, system_tracking_interval=None, capture_terminal_logs=False)
writer.track(123.0, name="metrics/loss", step=0)  # a changed value
writer.track(1.0, name="metrics/loss", step=99_999)  # a point the archive does not have
writer.close()
RepoIndexManager.get_index_manager(Repo.from_path(repo)).index(run_hash)
"""


def test_verifier_reports_what_was_changed_in_aim(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    assert nm.load(archive, **_options(tmp_path)).ok
    repo = tmp_path / "aim-repo"
    (run,) = runs_by_key(repo)[NASTY]
    # Someone edits the run in Aim, from a process of their own (this one's Aim keeps repositories it opened
    # cached, and a cached view can miss a run written since).
    edit = subprocess.run([sys.executable, "-c", _EDIT_IN_AIM, str(repo), run.hash], capture_output=True, text=True,
                          timeout=120)
    assert edit.returncode == 0, edit.stderr[-3000:]
    model = run.artifacts["files/model/model.bin"]
    (Path(model.storage["base_uri"].removeprefix("file://")) / model.name).unlink()

    checked = nm.validate(archive, report_dir=tmp_path / "report", **_options(tmp_path))
    assert not checked.ok
    nasty = next(c for c in checked.summary.checks if c.ref.key == NASTY)
    kinds = {(m.attribute, m.kind) for m in nasty.mismatches}
    assert {("metrics/loss", "value"), ("metrics/loss", "extra_points"), ("files/model", "file_missing"),
            ("run", "end_time")} <= kinds, kinds
    assert next(c for c in checked.summary.checks if c.ref.key != NASTY).status == "validated"

    # retry discards the run that differs and loads it afresh: one Aim run again, exact.
    retried = nm.retry(archive, report_dir=tmp_path / "report2", **_options(tmp_path))
    assert retried.ok, retried.to_dict()
    (again,) = runs_by_key(repo)[NASTY]
    assert again.hash != run.hash and 99_999 not in points(again, "metrics/loss")
    assert not (repo / "neptune-artifacts" / run.hash).exists()


def test_remote_tracking_server_is_refused_in_one_line(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    proc = subprocess.run([str(VENV_BIN / "neptune-migrate"), "load", "--archive", str(archive), "--to", "aim",
                           "--aim-repo", "aim://127.0.0.1:53800", "--state", str(tmp_path / "s.db"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "not supported yet" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# -- SIGKILL in the middle of a load ------------------------------------------------------------------------------
RUNS, SERIES, POINTS = 3, 2, 6000


def _big_archive(root: Path) -> Path:
    writer = ArchiveWriter(root)
    for r in range(RUNS):
        with writer.run(RunRef("acme/big", f"BIG-{r}")) as w:
            w.add_atom("sys/creation_time", "datetime", BASE_TIME)
            w.add_atom("params/r", "int", r)
            for s in range(SERIES):
                w.add_series(f"train/m{s}", "float_series", [i * 0.5 for i in range(POINTS)],
                             [BASE_TIME + timedelta(milliseconds=i) for i in range(POINTS)],
                             [float(i * (s + 1) + r) for i in range(POINTS)])
    return root


def _loads_done(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM progress WHERE stage='load' AND status='done'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_sigkill_mid_load_then_rerun_leaves_each_run_exact(tmp_path: Path) -> None:
    archive = _big_archive(tmp_path / "archive")
    repo, state = tmp_path / "aim-repo", tmp_path / "state.db"
    args = [str(VENV_BIN / "neptune-migrate"), "load", "--archive", str(archive), "--to", "aim", "--aim-repo",
            str(repo), "--state", str(state), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while _loads_done(state) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # into the second run's points
    assert proc.poll() is None, "the loader finished before it could be killed; make the archive bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    states = chunk_states(repo)
    assert sorted(states.values(), key=str) == ["complete", "loading"], states  # killed inside the second run

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(chunk_states(repo).values()) == ["complete"] * RUNS  # resumed into the same run, none added
    runs = runs_by_key(repo)
    assert sorted(runs) == [f"acme/big/BIG-{r}" for r in range(RUNS)] and all(len(v) == 1 for v in runs.values())
    for r in range(RUNS):
        (run,) = runs[f"acme/big/BIG-{r}"]
        m1 = points(run, "train/m1")
        assert len(m1) == POINTS and [m1[i * 5][0] for i in range(POINTS)] == [float(i * 2 + r) for i in
                                                                                 range(POINTS)]
    checked = nm.validate(archive, to="aim", aim_repo=str(repo), state=state, report_dir=tmp_path / "report")
    assert checked.ok, checked.to_dict()


def _snapshot(repo: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every data file of the runs (RocksDB's LOG files are rewritten by any reader)."""
    return {str(p.relative_to(repo)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(repo.rglob("*"))
            if p.is_file() and ({"chunks", "neptune-artifacts"} & set(p.parts)) and not p.name.startswith("LOG")}


def test_a_wider_selection_after_a_narrower_load_fills_the_same_run(tmp_path: Path) -> None:
    archive = write_nasty_archive(tmp_path / "archive")
    options = _options(tmp_path)
    assert nm.load(archive, include=["params", "metrics"], **options).ok
    assert nm.validate(archive, include=["params", "metrics"], report_dir=tmp_path / "r1", **options).ok
    before = runs_by_key(tmp_path / "aim-repo")
    # A rerun converges on what it asks (docs/validation.md): the wider load adds the series and files the
    # narrower one left out, into the same Aim run, and validation of the whole selection is clean.
    wider = nm.load(archive, **options)
    assert wider.ok and wider.summary.count("loaded") >= 1, wider.to_dict()
    assert runs_by_key(tmp_path / "aim-repo") == before
    wide = nm.validate(archive, report_dir=tmp_path / "r2", **options)
    assert wide.ok, wide.to_dict()
    nasty = next(c for c in wide.summary.checks if c.ref.key == NASTY)
    assert not nasty.mismatches
