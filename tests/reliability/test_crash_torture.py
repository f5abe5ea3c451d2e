"""Crash torture: `migrate` from the sandbox into a real MLflow server, SIGKILLed at 20 moments, resumed each time.

Every trial aims at one stage (listing, export, file download, metric loading, artifact upload, validation),
waits until that stage has a call in flight (slowed down so the window is wide), sleeps a random part of the
window and kills the whole process group. The stages actually in flight at the kill are recorded. A campaign is a
series of kills on one archive + ledger + experiment prefix; it ends when a resumed migrate runs to completion,
and then the MLflow contents must equal those of a clean, uninterrupted migration and validation must report
zero mismatches. The shared machinery is in torture.py.

Replay one trial: NEPTUNE_TORTURE_SEED=<seed printed for the trial> pytest tests/reliability/test_crash_torture.py
(the master seed fixes every trial's seed, the order of stages and each kill's moment).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.sandbox import Sandbox, generate_project

from ..conftest import VENV_BIN, run_cli
from .conftest import MlflowProxy, ledger_rows, mlflow_snapshot, read_report, validating_since
from .torture import SandboxWatch, Trial, master_seed, plan, run_campaigns, run_trial

STAGES = ("listing", "export", "file_download", "metric_loading", "artifact_upload", "validation")
PROJECT = "sandbox/torture"
MLFLOW_DELAY = {"metric_loading": ("metric_loading", 0.4), "artifact_upload": ("artifact_upload", 0.8),
                "validation": ("history_read", 0.3)}


def _project() -> Any:
    # Small but with every kind of data: 4 runs, 2 metric series of 1,500 points, 2 files each.
    return generate_project("torture", runs=4, series=2, points=1500, files=2, seed=7, nasty=False)


def _migrate_args(proxy_uri: str, work: Path, campaign: int, prefix: str) -> list[str]:
    folder = work / f"c{campaign}"
    return ["migrate", "--from", "neptune3", "-p", PROJECT, "--to", "mlflow", "--mlflow-tracking-uri", proxy_uri,
            "--experiment-prefix", prefix, "--archive", str(folder / "archive"), "--state", str(folder / "state.db"),
            "--report-dir", str(folder / "report"), "--workers", "2", "--no-progress"]


class MlflowWatch(SandboxWatch):
    """The sandbox stages, plus MLflow calls seen by the proxy and validations running in the ledger."""

    def __init__(self, sb: Sandbox, proxy: MlflowProxy, state: Path, aim: str) -> None:
        super().__init__(sb, aim)
        self.proxy, self.state = proxy, state
        proxy.delays = dict([MLFLOW_DELAY[aim]]) if aim in MLFLOW_DELAY else {}
        if aim in MLFLOW_DELAY:
            self.window = MLFLOW_DELAY[aim][1]
        self.mlflow0, _ = proxy.snapshot()
        self.since = time.time()

    def started(self) -> Counter[str]:
        out = super().started()
        mlflow_started, _ = self.proxy.snapshot()
        for stage, (category, _delay) in MLFLOW_DELAY.items():
            out[stage] = mlflow_started[category] - self.mlflow0[category]
        out["validation"] = validating_since(self.state, self.since)
        return out

    def in_flight(self) -> list[str]:
        stages = super().in_flight()
        _, mlflow_in_flight = self.proxy.snapshot()
        for stage in ("metric_loading", "artifact_upload"):
            if mlflow_in_flight[stage] > 0:
                stages.append(stage)
        if validating_since(self.state, self.since):
            stages.append("validation")
        return stages


def _assert_complete(folder: Path, mlflow_uri: str, prefix: str, clean: dict[str, Any], what: str) -> None:
    report = read_report(folder / "report")
    assert report["ok"] and report["totals"]["mismatches"] == 0, f"{what}: {report['mismatches'][:5]}"
    assert report["totals"]["runs_validated"] == len(clean), what
    got = mlflow_snapshot(mlflow_uri, prefix)
    assert sorted(got) == sorted(clean), f"{what}: runs lost or doubled"
    for key, expected in clean.items():
        for part in ("params", "tags", "artifacts", "status", "start", "end", "name", "experiment"):
            assert got[key][part] == expected[part], (what, key, part)
        assert got[key]["metrics"].keys() == expected["metrics"].keys(), (what, key)
        for name, points in expected["metrics"].items():
            # the same multiset of points: none lost, none doubled
            assert got[key]["metrics"][name] == points, (what, key, name, len(got[key]["metrics"][name]), len(points))
    statuses = Counter((stage, status) for _r, stage, status, _c in ledger_rows(folder / "state.db"))
    assert statuses == {("export", "done"): len(clean), ("load", "done"): len(clean),
                        ("validate", "done"): len(clean)}, (what, statuses)


@pytest.mark.slow
def test_crash_torture(tmp_path: Path, mlflow_server: Any, prefix: str) -> None:
    trials = plan(master_seed("crash torture"), STAGES)
    work = tmp_path
    with Sandbox([_project()]) as sb, MlflowProxy(mlflow_server.uri) as proxy:
        clean_prefix = prefix + "clean-"
        started = time.monotonic()
        clean_run = run_cli(*_migrate_args(proxy.uri, work, 99, clean_prefix), env=sb.env(), timeout=180)
        print(f"clean migration: {time.monotonic() - started:.1f} s")
        assert clean_run.returncode == 0, clean_run.stdout + clean_run.stderr
        clean = mlflow_snapshot(mlflow_server.uri, clean_prefix)
        assert len(clean) == 4 and all(run["artifacts"] and run["metrics"] for run in clean.values())
        _assert_complete(work / "c99", mlflow_server.uri, clean_prefix, clean, "clean migration")

        def camp_prefix(campaign: int) -> str:
            return f"{prefix}c{campaign}-"

        def attempt(trial: Trial) -> int | None:
            folder = work / f"c{trial.campaign}"
            watch = MlflowWatch(sb, proxy, folder / "state.db", trial.aim)
            args = _migrate_args(proxy.uri, work, trial.campaign, camp_prefix(trial.campaign))
            return run_trial(trial, [str(VENV_BIN / "neptune-migrate"), *args],
                             dict(os.environ, **sb.env(), NEPTUNE_MIGRATION_RETRIES="3"), watch,
                             log=work / f"trial-{trial.index}-{trial.campaign}.log")

        def complete(campaign: int) -> None:
            _assert_complete(work / f"c{campaign}", mlflow_server.uri, camp_prefix(campaign), clean,
                             f"campaign {campaign}")

        def finish(campaign: int) -> None:
            sb.faults.clear()
            proxy.delays = {}
            result = run_cli(*_migrate_args(proxy.uri, work, campaign, camp_prefix(campaign)), env=sb.env(),
                             timeout=180)
            assert result.returncode == 0, f"campaign {campaign}: resume failed\n{result.stdout}\n{result.stderr}"
            complete(campaign)

        run_campaigns(trials, attempt, complete, finish, STAGES)
