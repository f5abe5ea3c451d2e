"""Crash torture: `migrate` from the sandbox into a real MLflow server, SIGKILLed at 20 moments, resumed each time.

Every trial aims at one stage (listing, export, file download, metric loading, artifact upload, validation),
waits until that stage has a call in flight (slowed down so the window is wide), sleeps a random part of the
window and kills the whole process group. The stages actually in flight at the kill are recorded. A campaign is a
series of kills on one archive + ledger + experiment prefix; it ends when a resumed migrate runs to completion,
and then the MLflow contents must equal those of a clean, uninterrupted migration and validation must report
zero mismatches.

Replay one trial: NEPTUNE_TORTURE_SEED=<seed printed for the trial> pytest tests/reliability/test_crash_torture.py
(the master seed fixes every trial's seed, the order of stages and each kill's moment).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from neptune_migration.sandbox import Sandbox, generate_project

from ..conftest import VENV_BIN, run_cli
from .conftest import MlflowProxy, ledger_rows, mlflow_snapshot, read_report, validating_since

STAGES = ("listing", "export", "file_download", "metric_loading", "artifact_upload", "validation")
TRIALS = 20
PROJECT = "sandbox/torture"
# Sandbox routes per stage; each gets a fault (a zero-delay "slow" one just counts calls) so calls in flight
# are known: a fault is counted when the call arrives, the request log when it has been answered.
SANDBOX_ROUTES = {
    "listing": r"/entries/search",
    "export": r"/attributes/(definitions/query|query|series)",
    "file_download": r"(/storagebridge/v1/signedUrl|/sandbox/blob/)",
}
SANDBOX_DELAY = 0.6
MLFLOW_DELAY = {"metric_loading": ("metric_loading", 0.4), "artifact_upload": ("artifact_upload", 0.8),
                "validation": ("history_read", 0.3)}


@dataclass
class Trial:
    index: int
    seed: int
    aim: str
    occurrence: int = 1
    campaign: int = 0
    killed: bool = False
    in_flight: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _project() -> Any:
    # Small but with every kind of data: 4 runs, 2 metric series of 1,500 points, 2 files each.
    return generate_project("torture", runs=4, series=2, points=1500, files=2, seed=7, nasty=False)


def _migrate_args(proxy_uri: str, work: Path, campaign: int, prefix: str) -> list[str]:
    folder = work / f"c{campaign}"
    return ["migrate", "--from", "neptune3", "-p", PROJECT, "--to", "mlflow", "--mlflow-tracking-uri", proxy_uri,
            "--experiment-prefix", prefix, "--archive", str(folder / "archive"), "--state", str(folder / "state.db"),
            "--report-dir", str(folder / "report"), "--workers", "2", "--no-progress"]


class Watch:
    """What one invocation has in flight, from the sandbox's fault counters, its request log and the proxy."""

    def __init__(self, sb: Sandbox, proxy: MlflowProxy, state: Path, aim: str) -> None:
        self.sb, self.proxy, self.state = sb, proxy, state
        sb.faults.clear()
        self.faults = {stage: sb.faults.add(route, "slow", delay=SANDBOX_DELAY if stage == aim else 0.0)
                       for stage, route in SANDBOX_ROUTES.items()}
        self.answered0 = {stage: len(sb.requests_to(route)) for stage, route in SANDBOX_ROUTES.items()}
        proxy.delays = dict([MLFLOW_DELAY[aim]]) if aim in MLFLOW_DELAY else {}
        self.mlflow0, _ = proxy.snapshot()
        self.since = time.time()

    def started(self) -> Counter[str]:
        out: Counter[str] = Counter({stage: fault.seen for stage, fault in self.faults.items()})
        mlflow_started, _ = self.proxy.snapshot()
        for stage, (category, _delay) in MLFLOW_DELAY.items():
            out[stage] = mlflow_started[category] - self.mlflow0[category]
        out["validation"] = validating_since(self.state, self.since)
        return out

    def in_flight(self) -> list[str]:
        stages = []
        for stage, route in SANDBOX_ROUTES.items():
            if self.faults[stage].seen - (len(self.sb.requests_to(route)) - self.answered0[stage]) > 0:
                stages.append(stage)
        if "listing" in stages and (self.faults["export"].seen or self.faults["file_download"].seen):
            stages.remove("listing")  # a search after listing belongs to the export of a run
        _, mlflow_in_flight = self.proxy.snapshot()
        for stage in ("metric_loading", "artifact_upload"):
            if mlflow_in_flight[stage] > 0:
                stages.append(stage)
        if validating_since(self.state, self.since):
            stages.append("validation")
        return stages


def _run_trial(trial: Trial, sb: Sandbox, proxy: MlflowProxy, args: list[str], state: Path) -> int | None:
    """Start migrate, kill it at the trial's moment; the exit code when it finished before that moment."""
    rng = random.Random(trial.seed)
    watch = Watch(sb, proxy, state, trial.aim)
    delay = SANDBOX_DELAY if trial.aim in SANDBOX_ROUTES else MLFLOW_DELAY[trial.aim][1]
    started = time.monotonic()
    proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], env=dict(os.environ, **sb.env(),
                            NEPTUNE_MIGRATION_RETRIES="3"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = started + 90
        while proc.poll() is None and time.monotonic() < deadline:
            if watch.started()[trial.aim] >= trial.occurrence and trial.aim in watch.in_flight():
                time.sleep(rng.uniform(0.0, delay * 0.6))  # a random moment inside the slowed call
                trial.in_flight = watch.in_flight()
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                trial.killed = True
                return None
            time.sleep(0.01)
        if proc.poll() is None:
            raise AssertionError(f"trial {trial.index} (seed {trial.seed}): migrate neither finished nor reached "
                                 f"{trial.aim} in 90 s")
        return proc.returncode
    finally:
        trial.seconds = time.monotonic() - started
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _finish_campaign(sb: Sandbox, proxy: MlflowProxy, mlflow_uri: str, work: Path, campaign: int, prefix: str,
                     clean: dict[str, Any]) -> None:
    sb.faults.clear()
    proxy.delays = {}
    args = _migrate_args(proxy.uri, work, campaign, prefix)
    result = run_cli(*args, env=sb.env(), timeout=180)
    assert result.returncode == 0, f"campaign {campaign}: resume failed\n{result.stdout}\n{result.stderr}"
    _assert_complete(work / f"c{campaign}", mlflow_uri, prefix, clean, f"campaign {campaign}")


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
    master = int(os.environ.get("NEPTUNE_TORTURE_SEED", str(random.SystemRandom().randrange(2**31))))
    print(f"\ncrash torture master seed {master} (replay: NEPTUNE_TORTURE_SEED={master})")
    rng = random.Random(master)
    # Each stage at least three times (20 = 6 x 3 + 2), in an order that mostly follows the pipeline so one
    # campaign reaches several stages before its data is fully migrated.
    aims = [STAGES[i % len(STAGES)] for i in range(TRIALS)]
    # Listing is one call and validation is counted by runs being validated, so those are hit at their first.
    trials = [Trial(i, rng.randrange(2**31), aim,
                    occurrence=1 if aim in ("listing", "validation") else rng.randint(1, 3))
              for i, aim in enumerate(aims)]
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

        campaign, kills_in_campaign = 0, 0
        for trial in trials:
            for _attempt in range(3):  # a missed aim ends the campaign; the trial is retried on a fresh one
                trial.campaign = campaign
                camp_prefix = f"{prefix}c{campaign}-"
                folder = work / f"c{campaign}"
                print(f"trial {trial.index:2d} seed {trial.seed} aim {trial.aim} campaign {campaign}", flush=True)
                code = _run_trial(trial, sb, proxy, _migrate_args(proxy.uri, work, campaign, camp_prefix),
                                  folder / "state.db")
                if trial.killed:
                    print(f"  killed after {trial.seconds:.1f} s with {trial.in_flight} in flight", flush=True)
                    kills_in_campaign += 1
                    break
                # It ran to the end before the aimed moment: that was the campaign's final resume.
                assert code == 0, f"trial {trial.index} (seed {trial.seed}): migrate failed with {code}"
                _assert_complete(folder, mlflow_server.uri, camp_prefix, clean, f"campaign {campaign}")
                print(f"  campaign {campaign} complete after {kills_in_campaign} kills", flush=True)
                campaign, kills_in_campaign = campaign + 1, 0
            assert trial.killed, f"trial {trial.index} (seed {trial.seed}) never reached {trial.aim}"
            assert trial.aim in trial.in_flight, (trial.index, trial.seed, trial.aim, trial.in_flight)
        if kills_in_campaign:
            _finish_campaign(sb, proxy, mlflow_server.uri, work, campaign, f"{prefix}c{campaign}-", clean)

    covered = Counter(stage for trial in trials for stage in trial.in_flight)
    print("stages interrupted:", dict(covered))
    assert sum(t.killed for t in trials) == TRIALS
    assert set(covered) == set(STAGES), f"not every stage was interrupted: {dict(covered)}"
