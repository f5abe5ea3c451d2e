"""The rerun rule for W&B (issue 24): a run's W&B id comes from its Neptune run alone, so a copy in another project
of the entity (online: the stand-in, read through wandb.Api) or in another project's run folder under the same
--wandb-dir (offline) is found, a load at another place is refused before anything is written, validation reports
the copy outside the asked placement as `run_elsewhere`, and `--relocate` is refused in one line (docs/wandb.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from standin import DEFAULT_ENTITY, StandIn

import neptune_migration as nm
from neptune_migration.errors import UsageError
from neptune_migration.samples import write_demo_archive

CLI = Path(sys.executable).parent / "neptune-migrate"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return write_demo_archive(tmp_path / "archive", runs=2, steps=30)


def _kinds(result: nm.ValidationResult) -> dict[str, frozenset[str]]:
    return {c.ref.key: frozenset(m.kind for m in c.mismatches) for c in result.summary.checks}


def _folders(root: Path) -> dict[str, int]:
    """Every file and folder under the offline target, with each file's modification time: what a refused load
    must leave alone (a folder's time changes with the target's write probe, which leaves nothing)."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns if p.is_file() else 0 for p in root.rglob("*")}


def _check_places(archive: Path, tmp_path: Path, opts: dict, placed: tuple[str, dict], other: tuple[str, dict]) -> None:
    """Validation at the other place: missing there, a copy at the place it was loaded; at its place: clean.
    `placed`, `other`: (where, the options that name it)."""
    there = nm.validate(archive, report_dir=tmp_path / "r-other", **opts, **other[1])
    assert not there.ok
    assert set(_kinds(there).values()) == {frozenset({"run_missing", "run_elsewhere"})}, _kinds(there)
    elsewhere = [m for c in there.summary.checks for m in c.mismatches if m.kind == "run_elsewhere"]
    assert elsewhere and all(m.actual == placed[0] and m.expected == other[0] for m in elsewhere), elsewhere
    here = nm.validate(archive, report_dir=tmp_path / "r-here", **opts, **placed[1])
    assert here.ok, [c.summary_line() for c in here.summary.checks if c.status != "validated"]


def test_offline_another_project_is_refused_and_validation_finds_the_copy(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "wandb-out"
    opts = dict(to="wandb-offline", wandb_dir=out, state=tmp_path / "state.db", progress=False, workers=1)
    first = nm.load(archive, wandb_project="proj-a", **opts)
    assert first.ok and first.summary.count("loaded") == 2
    before = _folders(out)

    with pytest.raises(UsageError) as refused:
        nm.load(archive, wandb_project="proj-b", **opts)
    line = str(refused.value)
    assert "\n" not in line and "already in wandb-offline at proj-a" in line and "--wandb-project proj-a" in line
    assert "this command puts them at proj-b" in line and "Move to project" in line
    assert _folders(out) == before  # refused before anything was written

    with pytest.raises(UsageError, match=r"^--relocate is not available for --to wandb-offline: .*blocked"):
        nm.load(archive, wandb_project="proj-b", relocate=True, **opts)
    assert _folders(out) == before

    _check_places(archive, tmp_path, opts, ("proj-a", {"wandb_project": "proj-a"}),
                  ("proj-b", {"wandb_project": "proj-b"}))
    # The `retry` that validation at proj-b suggests never makes a second copy: refused the same way.
    assert not nm.validate(archive, wandb_project="proj-b", report_dir=tmp_path / "r-b", **opts).ok
    with pytest.raises(UsageError, match="already in wandb-offline at proj-a"):
        nm.retry(archive, wandb_project="proj-b", report_dir=tmp_path / "r-retry", **opts)
    assert _folders(out) == before
    assert nm.validate(archive, wandb_project="proj-a", report_dir=tmp_path / "r-after", **opts).ok
    # A prefix is a placement too: the derived project `pre-image-classifier` is not proj-a.
    with pytest.raises(UsageError, match="--wandb-project-prefix pre-"):
        nm.load(archive, wandb_project_prefix="pre-", **opts)
    assert _folders(out) == before

    # Another ledger's copy is only mentioned: it is not this migration's to report or move.
    other = nm.validate(archive, report_dir=tmp_path / "r-ledger", **(opts | {"state": tmp_path / "other.db"}),
                        wandb_project="proj-b")
    assert set(_kinds(other).values()) == {frozenset({"run_missing"})}
    assert all(any("another migration" in w for w in c.warnings) for c in other.summary.checks)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=300, check=False)


def test_offline_refusal_through_the_cli_is_one_line(archive: Path, tmp_path: Path) -> None:
    out, state = tmp_path / "wandb-out", tmp_path / "state.db"
    common = ["--archive", str(archive), "--to", "wandb-offline", "--wandb-dir", str(out), "--state", str(state),
              "--no-progress"]
    assert run_cli("load", *common, "--wandb-project", "proj-a").returncode == 0
    before = _folders(out)
    for extra in ([], ["--relocate"]):
        refused = run_cli("load", *common, "--wandb-project", "proj-b", *extra)
        lines = [line for line in (refused.stdout + refused.stderr).splitlines() if line.strip()]
        assert refused.returncode != 0 and len(lines) == 1, lines
        assert ("proj-a" in lines[0]) if not extra else ("--relocate is not available" in lines[0]), lines
    assert _folders(out) == before


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandIn]:
    server = StandIn().start()
    monkeypatch.setenv("WANDB_BASE_URL", server.url)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the online target's staging folder
    os.makedirs(tmp_path / "tmp")
    yield server
    server.stop()


def test_online_another_project_is_refused_and_validation_finds_the_copy(archive: Path, standin: StandIn,
                                                                         tmp_path: Path) -> None:
    import tempfile

    monkey_tmp = tempfile.tempdir
    tempfile.tempdir = None  # gettempdir() reads TMPDIR again
    try:
        opts = dict(to="wandb", state=tmp_path / "state.db", progress=False, workers=1)
        first = nm.load(archive, wandb_project_prefix="a-", **opts)
        assert first.ok and first.summary.count("loaded") == 2
        runs = {key: (len(run.upserts), dict(run.streams)) for key, run in standin.runs.items()}
        assert {key[:2] for key in runs} == {(DEFAULT_ENTITY, "a-image-classifier")}
        upserts = standin.count("UpsertBucket")

        with pytest.raises(UsageError) as refused:
            nm.load(archive, wandb_project_prefix="b-", **opts)
        line = str(refused.value)
        assert "\n" not in line and f"already in wandb at {DEFAULT_ENTITY}/a-image-classifier" in line, line
        assert "--wandb-project-prefix a-" in line and f"{DEFAULT_ENTITY}/b-image-classifier" in line
        with pytest.raises(UsageError, match="--relocate is not available for --to wandb"):
            nm.load(archive, wandb_project_prefix="b-", relocate=True, **opts)
        # Nothing new on the server: no run, no upsert, no history line.
        assert standin.count("UpsertBucket") == upserts
        assert {key: (len(run.upserts), dict(run.streams)) for key, run in standin.runs.items()} == runs

        _check_places(archive, tmp_path, opts, (f"{DEFAULT_ENTITY}/a-image-classifier", {"wandb_project_prefix": "a-"}),
                      (f"{DEFAULT_ENTITY}/b-image-classifier", {"wandb_project_prefix": "b-"}))
        # Every request was one the stand-in knows (the projects listing, the aliased lookup of the run's id).
        assert not set(standin.unknown) - {"POST /sdk/otel/v1/metrics"}, standin.unknown
        assert standin.count("NeptuneMigrationCopies") > 0
    finally:
        tempfile.tempdir = monkey_tmp


def test_migrate_into_another_project_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from neptune_migration.sandbox import Sandbox, generate_project

    out = tmp_path / "wandb-out"
    project = generate_project("place", runs=3, series=1, points=20, files=1, nasty=False)
    with Sandbox([project]) as sb:
        args = ["migrate", "--from", "neptune3", "-p", "sandbox/place", "--to", "wandb-offline", "--wandb-dir",
                str(out), "--archive", str(tmp_path / "a"), "--state", str(tmp_path / "state.db"), "--report-dir",
                str(tmp_path / "report"), "--no-progress"]
        env = os.environ | sb.env()
        first = subprocess.run([str(CLI), *args, "--wandb-project", "proj-a"], env=env, capture_output=True,
                               text=True, timeout=300, check=False)
        assert first.returncode == 0, first.stdout + first.stderr
        before = _folders(out)
        refused = subprocess.run([str(CLI), *args, "--wandb-project", "proj-b"], env=env, capture_output=True,
                                 text=True, timeout=300, check=False)
    lines = [line for line in (refused.stdout + refused.stderr).splitlines() if line.strip()]
    assert refused.returncode != 0 and len(lines) == 1, lines
    assert "already in wandb-offline at proj-a" in lines[0] and "--relocate is not available" in lines[0], lines
    assert _folders(out) == before
