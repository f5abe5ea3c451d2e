"""Faults at the W&B side of a migration: the stand-in answers 429 (with Retry-After) and bursts of 500s on its
GraphQL, file-stream and upload endpoints while the real CLI runs `migrate --from neptune3 --to wandb` from the
sandbox. Each case either completes after retries, with a server holding exactly what a clean migration left
(every history line once, every artifact committed once, the same config and summary) and a report with zero
mismatches; or stops with a one-line error, a non-zero exit and failed runs in the ledger, and the rerun
completes to the same state. Nothing is deleted on the server and nothing doubled.

Who retries what: `wandb sync` (wandb-core) retries its own GraphQL calls, the file stream and the uploads;
the target's own `wandb.Api` calls (looking up a run before resuming it, verifying it after the sync, the
read-back for validation) go through `with_backoff` in targets/wandb/loader.py (429/5xx, Retry-After honoured).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standin import DEFAULT_ENTITY, StandIn

from neptune_migration.sandbox import Sandbox, generate_project

KEY = "f" * 40
PROJECT = "sandbox/wfaults"
RUNS = 3
CLI = Path(sys.executable).parent / "neptune-migrate"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox([generate_project("wfaults", runs=RUNS, series=2, points=400, files=2, seed=5, nasty=False)]) as sb:
        yield sb


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    s = StandIn().start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _no_faults_left(standin: StandIn) -> Iterator[None]:
    standin.clear_faults()
    yield
    standin.clear_faults()


def _migrate(sandbox: Sandbox, standin: StandIn, work: Path, project: str,
             **env: str) -> subprocess.CompletedProcess[str]:
    args = ["migrate", "--from", "neptune3", "-p", PROJECT, "--to", "wandb", "--wandb-entity", DEFAULT_ENTITY,
            "--wandb-project", project, "--archive", str(work / "archive"), "--state", str(work / "state.db"),
            "--report-dir", str(work / "report"), "--workers", "2", "--no-progress"]
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    full = dict(os.environ, **sandbox.env(), WANDB_API_KEY=KEY, WANDB_BASE_URL=standin.url, TMPDIR=str(work / "tmp"),
                NEPTUNE_MIGRATION_RETRIES="3", **env)
    full.pop("WANDB_SERVICE", None)
    return subprocess.run([str(CLI), *args], env=full, capture_output=True, text=True, timeout=600, check=False)


def _config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config without wandb's `_wandb` block and without the identity of the ledger that loaded it (each
    migration compared here has its own ledger)."""
    out = {k: v for k, v in config.items() if k != "_wandb"}
    ours = out.get("neptune_migration")
    if isinstance(ours, dict) and isinstance(ours.get("value"), dict):
        out["neptune_migration"] = {**ours, "value": {k: v for k, v in ours["value"].items() if k != "migration"}}
    return out


def _snapshot(standin: StandIn, project: str) -> dict[str, Any]:
    """What the server holds for one project, free of server ids and times: per run its metadata, config (without
    wandb's own `_wandb` block and the ledger's identity), summary, every history line as stored, completion, and
    its committed artifacts with the sha256 of every payload."""
    out: dict[str, Any] = {}
    with standin.lock:
        for (entity, proj, name), run in standin.runs.items():
            if proj != project:
                continue
            assert entity == DEFAULT_ENTITY
            lines = run.streams.get("wandb-history.jsonl", {})
            arts = [a for a in standin.artifacts.values() if a.project == project and a.run_id == name]
            committed = Counter(a.name for a in arts if a.state == "COMMITTED")
            assert all(n == 1 for n in committed.values()), f"an artifact committed twice: {committed}"
            out[name] = {
                "meta": (run.display_name, run.group, run.notes, sorted(run.tags), run.state, run.exit_code),
                "config": json.dumps(_config(run.config), sort_keys=True),
                "summary": json.dumps({k: v for k, v in run.summary.items() if k != "_wandb"}, sort_keys=True),
                # key order inside a line is wandb-core's map order; values are compared exactly (NaN as a word)
                "history": [json.loads(lines[k], parse_constant=str) for k in sorted(lines)],
                "offsets": sorted(lines) == list(range(len(lines))),
                "artifacts": {a.name: (a.type, a.digest, a.version, {e: hashlib.sha256(standin.blobs[k]).hexdigest()
                                                                     for e, k in sorted(a.files.items())})
                              for a in arts if a.state == "COMMITTED"},
            }
    return out


def _report(work: Path) -> dict[str, Any]:
    return json.loads((work / "report" / "report.json").read_text())


def _ledger(work: Path) -> Counter[tuple[str, str]]:
    import sqlite3

    with sqlite3.connect(work / "state.db") as db:
        return Counter(db.execute("SELECT stage, status FROM progress").fetchall())


def _errors(work: Path) -> list[tuple[str, str]]:
    """(reason, run) of every failed load: the reason is the phrase of the target's message."""
    import sqlite3

    with sqlite3.connect(work / "state.db") as db:
        rows = db.execute("SELECT run_id, last_error FROM progress WHERE stage='load' AND status='failed'").fetchall()
    out = []
    for run_id, error in rows:
        reason = next((r for r in ("not on the server after wandb sync", "incomplete after wandb sync")
                       if r in (error or "")), error)
        out.append((reason, run_id))
    return out


def _assert_equal_to_clean(standin: StandIn, work: Path, project: str, clean: dict[str, Any]) -> None:
    report = _report(work)
    assert report["ok"] and report["totals"]["mismatches"] == 0, report["mismatches"][:5]
    assert report["totals"]["runs_validated"] == RUNS
    got = _snapshot(standin, project)
    assert sorted(got) == sorted(clean), "runs lost or doubled"
    for name, expected in clean.items():
        for part in ("meta", "config", "summary", "artifacts"):
            assert got[name][part] == expected[part], (name, part)
        assert got[name]["offsets"], f"{name}: history lines are not at offsets 0..n-1"
        assert len(got[name]["history"]) == len(expected["history"]), (name, "history rows lost or doubled")
        assert got[name]["history"] == expected["history"], (name, "history lines differ")
    assert _ledger(work) == {("export", "done"): RUNS, ("load", "done"): RUNS, ("validate", "done"): RUNS}


@pytest.fixture(scope="module")
def clean(sandbox: Sandbox, standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("clean")
    result = _migrate(sandbox, standin, work, "wclean")
    assert result.returncode == 0, result.stdout + result.stderr
    snapshot = _snapshot(standin, "wclean")
    assert len(snapshot) == RUNS and all(run["history"] and run["artifacts"] for run in snapshot.values())
    _assert_equal_to_clean(standin, work, "wclean", snapshot)
    return snapshot


def _retry_gaps(standin: StandIn, fault: Any) -> list[float]:
    """For every request the fault answered, seconds until the next request with the same label."""
    gaps = []
    for label, at in fault.hits:
        later = [t for lab, t in standin.times if lab == label and t > at]
        if later:
            gaps.append(round(min(later) - at, 2))
    return gaps


# label regex, status, times, Retry-After
FAULTS: dict[str, list[tuple[str, int, int, float | None]]] = {
    "429-graphql": [("graphql:UpsertBucket", 429, 3, 1.0), ("graphql:CreateArtifact$", 429, 2, 0.5),
                    ("graphql:CommitArtifact", 429, 1, 1.0)],
    "429-file-stream-upload": [("file_stream", 429, 3, 1.0), ("upload", 429, 3, 0.5)],
    "500-graphql": [("graphql:UpsertBucket", 500, 3, None), ("graphql:CreateArtifactFiles", 500, 2, None),
                    ("graphql:(Run|NeptuneMigrationHistoryPage)$", 500, 3, None)],
    "500-file-stream-upload": [("file_stream", 500, 4, None), ("upload", 500, 3, None)],
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_standin_faults_are_retried_to_completion(sandbox: Sandbox, standin: StandIn, clean: dict[str, Any],
                                                  tmp_path: Path, case: str) -> None:
    project = "w" + case.replace("-", "")
    faults = [standin.fail_next(label, times, status, retry_after) for label, status, times, retry_after
              in FAULTS[case]]
    result = _migrate(sandbox, standin, tmp_path, project)
    for fault in faults:
        assert fault.remaining == 0, f"{fault.pattern.pattern} was injected {fault.served} times, not as planned"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert KEY not in result.stdout + result.stderr
    _assert_equal_to_clean(standin, tmp_path, project, clean)


@pytest.mark.parametrize("label", ["graphql:UpsertBucket", "file_stream"])
def test_persistent_server_errors_stop_cleanly_and_resume(sandbox: Sandbox, standin: StandIn,
                                                          clean: dict[str, Any], tmp_path: Path, label: str) -> None:
    """The server keeps failing run creation past every retry: the command stops, every run's load is `failed`
    with its reason, nothing of the project is marked finished on the server; the rerun completes it."""
    project = "wpersistent" + label.split(":")[-1].lower().replace("_", "")
    fault = standin.fail_next(label, 10**6, 500, None)
    quick = {}
    for what in ("GRAPHQL", "FILE_STREAM", "FILE_TRANSFER"):
        quick.update({f"WANDB_X_{what}_RETRY_MAX": "2", f"WANDB_X_{what}_RETRY_WAIT_MIN_SECONDS": "0.1",
                      f"WANDB_X_{what}_RETRY_WAIT_MAX_SECONDS": "0.5"})
    result = _migrate(sandbox, standin, tmp_path, project, NEPTUNE_MIGRATION_WANDB_VERIFY_TIMEOUT="2", **quick)
    output = result.stdout + result.stderr
    print(f"persistent 500 on {label}: {fault.served} injected before the command stopped")
    assert fault.served > 0
    assert result.returncode != 0, "a migration the server refused must not report success"
    assert "Traceback" not in output and KEY not in output
    ledger = _ledger(tmp_path)
    assert ledger[("export", "done")] == RUNS and ledger[("load", "failed")] == RUNS, ledger
    reasons = {row[0] for row in _errors(tmp_path)}
    assert reasons <= {"not on the server after wandb sync", "incomplete after wandb sync"}, reasons
    for reason in reasons:
        assert reason in output
    # Nothing half-loaded is passed off as finished: a run the server holds is still `running`.
    for name, run in _snapshot(standin, project).items():
        assert run["meta"][4] == "running" and len(run["history"]) < len(clean[name]["history"]), name
    standin.clear_faults()
    again = _migrate(sandbox, standin, tmp_path, project)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    _assert_equal_to_clean(standin, tmp_path, project, clean)


def test_our_own_calls_honour_retry_after(standin: StandIn, tmp_path: Path) -> None:
    """The target's `wandb.Api` calls wait as long as a 429's Retry-After says, and retry 500s with backoff."""
    from neptune_migration.targets.wandb.folder import RunSpec
    from neptune_migration.targets.wandb.loader import WandbOnlineTarget

    target = WandbOnlineTarget(base_url=standin.url, api_key=KEY, staging_dir=tmp_path, entity=DEFAULT_ENTITY)
    spec = RunSpec(DEFAULT_ENTITY, "wretry", "no-such-run")
    target.api()
    limited = standin.fail_next("graphql:Run$", 2, 429, retry_after=1.5)
    assert target._server_history_lines(spec) == 0  # looked up after the rate limit passed: not there yet
    assert limited.served == 2
    gaps = _retry_gaps(standin, limited)
    assert len(gaps) == 2 and all(gap >= 1.4 for gap in gaps), gaps
    broken = standin.fail_next("graphql:Run$", 3, 500, None)
    assert target._server_history_lines(spec) == 0
    assert broken.served == 3 and broken.remaining == 0
