"""Crash torture into W&B offline: `migrate --to wandb-offline`, SIGKILLed at 20 moments, resumed each time.

The same campaign machinery as the MLflow torture (torture.py). Source stages (listing, export, file download) are
watched and slowed at the sandbox; target stages (metric loading = history rows written to the `.wandb` file,
artifact writing = payloads and tables placed in the run folder, validation = a run read back and compared) by
wandb_probe.py, which the real CLI process loads before it starts (real functions, wrapped to mark and pause).
At the end of every campaign the target root must equal a clean migration: the same run folders (one per
Neptune run, no temporary leftovers), every history point, string series, artifact payload and config value,
byte-identical files, a report with zero mismatches and the ledger with every run done in every stage.

Replay: NEPTUNE_TORTURE_SEED=<master seed printed first> pytest tests/reliability/test_crash_torture_wandb.py -s
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.sandbox import Sandbox, generate_project

from ..conftest import run_cli
from .conftest import ledger_rows, read_report, wandb_offline_snapshot
from .torture import SandboxWatch, Trial, master_seed, plan, run_campaigns, run_trial
from .wandb_probe import read as read_probe

STAGES = ("listing", "export", "file_download", "metric_loading", "artifact_writing", "validation")
PROBE_PAUSE = {"metric_loading": 0.15, "artifact_writing": 0.4, "validation": 0.5}  # pause per pause point
# the window a kill is drawn from: metric loading pauses several times per run (1,500 rows, every 300)
PROBE_WINDOW = {"metric_loading": 0.6, "artifact_writing": 0.4, "validation": 0.5}
PROJECT = "sandbox/wtorture"
RUNS = 4
_LAUNCH = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import wandb_probe; wandb_probe.install(); "
           "sys.argv[0] = 'neptune-migrate'; from neptune_migration.cli import main; main()")


def _project() -> Any:
    # 5 generated runs, 4 selected (one is trashed): 2 metric series of 1,500 points and 2 files each; the first
    # runs carry NaN/inf, fractional steps (ordinal mode), a string series, long and colliding names, a fork.
    return generate_project("wtorture", runs=5, series=2, points=1500, files=2, seed=11, nasty=True)


def _args(work: Path, campaign: int) -> list[str]:
    folder = work / f"c{campaign}"
    return ["migrate", "--from", "neptune3", "-p", PROJECT, "--to", "wandb-offline", "--wandb-dir",
            str(folder / "wandb"), "--archive", str(folder / "archive"), "--state", str(folder / "state.db"),
            "--report-dir", str(folder / "report"), "--workers", "2", "--no-progress"]


class WandbWatch(SandboxWatch):
    def __init__(self, sb: Sandbox, probe: Path, aim: str) -> None:
        super().__init__(sb, aim)
        self.probe = probe
        if aim in PROBE_WINDOW:
            self.window = PROBE_WINDOW[aim]

    def started(self) -> Counter[str]:
        out = super().started()
        out.update(read_probe(self.probe)[0])
        return out

    def in_flight(self) -> list[str]:
        return super().in_flight() + sorted(read_probe(self.probe)[1])


def _assert_complete(folder: Path, clean: dict[str, Any], what: str) -> None:
    report = read_report(folder / "report")
    assert report["ok"] and report["totals"]["mismatches"] == 0, f"{what}: {report['mismatches'][:5]}"
    assert report["totals"]["runs_validated"] == len(clean), what
    got = wandb_offline_snapshot(folder / "wandb")
    assert sorted(got) == sorted(clean), f"{what}: runs lost or doubled"
    for key, expected in clean.items():
        for part in ("folder", "meta", "config", "summary", "history_rows", "string_series", "artifacts"):
            assert got[key][part] == expected[part], (what, key, part)
        assert got[key]["history"].keys() == expected["history"].keys(), (what, key)
        for name, points in expected["history"].items():
            # the same multiset of points: none lost, none doubled
            assert got[key]["history"][name] == points, (what, key, name, len(got[key]["history"][name]), len(points))
        assert got[key]["files"] == expected["files"], (what, key, "files differ")
    statuses = Counter((stage, status) for _r, stage, status, _c in ledger_rows(folder / "state.db"))
    assert statuses == {("export", "done"): len(clean), ("load", "done"): len(clean),
                        ("validate", "done"): len(clean)}, (what, statuses)


@pytest.mark.slow
def test_crash_torture_wandb_offline(tmp_path: Path) -> None:
    trials = plan(master_seed("W&B crash torture"), STAGES)
    work = tmp_path
    here = str(Path(__file__).parent)
    with Sandbox([_project()]) as sb:
        started = time.monotonic()
        clean_run = run_cli(*_args(work, 99), env=sb.env(), timeout=180)
        print(f"clean migration: {time.monotonic() - started:.1f} s")
        assert clean_run.returncode == 0, clean_run.stdout + clean_run.stderr
        clean = wandb_offline_snapshot(work / "c99" / "wandb")
        assert len(clean) == RUNS and all(run["history"] for run in clean.values())
        assert sum(bool(run["artifacts"]) for run in clean.values()) == RUNS - 1  # the fork has no files
        assert any(run["string_series"] for run in clean.values())
        _assert_complete(work / "c99", clean, "clean migration")

        def attempt(trial: Trial) -> int | None:
            probe = work / f"probe-{trial.index}-{trial.campaign}.log"
            watch = WandbWatch(sb, probe, trial.aim)
            env = dict(os.environ, **sb.env(), NEPTUNE_MIGRATION_RETRIES="3", NEPTUNE_TORTURE_PROBE=str(probe),
                       NEPTUNE_TORTURE_AIM=trial.aim, NEPTUNE_TORTURE_DELAY=str(PROBE_PAUSE.get(trial.aim, 0.0)))
            return run_trial(trial, [sys.executable, "-c", _LAUNCH, here, *_args(work, trial.campaign)], env, watch,
                             log=work / f"trial-{trial.index}-{trial.campaign}.log")

        def complete(campaign: int) -> None:
            _assert_complete(work / f"c{campaign}", clean, f"campaign {campaign}")

        def finish(campaign: int) -> None:
            sb.faults.clear()
            result = run_cli(*_args(work, campaign), env=sb.env(), timeout=180)
            assert result.returncode == 0, f"campaign {campaign}: resume failed\n{result.stdout}\n{result.stderr}"
            complete(campaign)

        run_campaigns(trials, attempt, complete, finish, STAGES)
