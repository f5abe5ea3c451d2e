"""The machinery both crash tortures share (MLflow: test_crash_torture.py, W&B offline: test_crash_torture_wandb.py).

A trial aims at one stage, starts `migrate` in its own process group, waits until that stage has a call in flight
(slowed down so the window is wide), sleeps a random part of the window, records every stage in flight at that
instant and SIGKILLs the group. A campaign is a series of kills on one archive + ledger + target; it ends when a
resumed migrate runs to the end before its aimed moment, and then the target must equal a clean migration.

The source side is the same for every target: the sandbox's fault table slows the aimed route (a zero-delay
`slow` fault only counts calls), and its request log says which calls were answered.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from neptune_migration.sandbox import Sandbox

TRIALS = 20
# Sandbox routes per source stage.
SANDBOX_ROUTES = {
    "listing": r"/entries/search",
    "export": r"/attributes/(definitions/query|query|series)",
    "file_download": r"(/storagebridge/v1/signedUrl|/sandbox/blob/)",
}
SANDBOX_DELAY = 0.6
# Hit at their first occurrence: listing is one call, validation is counted by runs being validated.
FIRST_ONLY = ("listing", "validation")


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
    log: Path | None = None  # where the invocation's stdout and stderr went

    def output(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.exists() else ""


class Watch(Protocol):
    """What one invocation has in flight. `window` is how long a call of the aimed stage is held."""

    window: float

    def started(self) -> Counter[str]: ...

    def in_flight(self) -> list[str]: ...


def master_seed(label: str) -> int:
    master = int(os.environ.get("NEPTUNE_TORTURE_SEED", str(random.SystemRandom().randrange(2**31))))
    print(f"\n{label} master seed {master} (replay: NEPTUNE_TORTURE_SEED={master})")
    return master


def plan(master: int, stages: Sequence[str], trials: int = TRIALS) -> list[Trial]:
    """Every stage at least trials // len(stages) times, in an order that follows the pipeline so one campaign
    reaches several stages before its data is fully migrated. The master seed fixes every trial's seed."""
    rng = random.Random(master)
    aims = [stages[i % len(stages)] for i in range(trials)]
    return [Trial(i, rng.randrange(2**31), aim, occurrence=1 if aim in FIRST_ONLY else rng.randint(1, 3))
            for i, aim in enumerate(aims)]


class SandboxWatch:
    """The source stages of one invocation: calls counted by the sandbox's faults, answered per its request log."""

    def __init__(self, sb: Sandbox, aim: str) -> None:
        self.sb = sb
        sb.faults.clear()
        self.faults = {stage: sb.faults.add(route, "slow", delay=SANDBOX_DELAY if stage == aim else 0.0)
                       for stage, route in SANDBOX_ROUTES.items()}
        self.answered0 = {stage: len(sb.requests_to(route)) for stage, route in SANDBOX_ROUTES.items()}
        self.window = SANDBOX_DELAY

    def started(self) -> Counter[str]:
        return Counter({stage: fault.seen for stage, fault in self.faults.items()})

    def in_flight(self) -> list[str]:
        stages = []
        for stage, route in SANDBOX_ROUTES.items():
            if self.faults[stage].seen - (len(self.sb.requests_to(route)) - self.answered0[stage]) > 0:
                stages.append(stage)
        if "listing" in stages and (self.faults["export"].seen or self.faults["file_download"].seen):
            stages.remove("listing")  # a search after listing belongs to the export of a run
        return stages


def run_trial(trial: Trial, cmd: list[str], env: dict[str, str], watch: Watch, timeout: float = 90,
              log: Path | None = None) -> int | None:
    """Start `cmd`, kill its process group at the trial's moment; the exit code when it finished before that.
    The invocation's output goes to `log` (kept for the failure message)."""
    rng = random.Random(trial.seed)
    started = time.monotonic()
    trial.log = log
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    try:
        deadline = started + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if watch.started()[trial.aim] >= trial.occurrence and trial.aim in watch.in_flight():
                time.sleep(rng.uniform(0.0, watch.window * 0.6))  # a random moment inside the slowed call
                trial.in_flight = watch.in_flight()
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                trial.killed = True
                return None
            time.sleep(0.01)
        if proc.poll() is None:
            raise AssertionError(f"trial {trial.index} (seed {trial.seed}): migrate neither finished nor reached "
                                 f"{trial.aim} in {timeout:.0f} s")
        return proc.returncode
    finally:
        trial.seconds = time.monotonic() - started
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_campaigns(trials: list[Trial], attempt: Callable[[Trial], int | None],
                  assert_complete: Callable[[int], None], finish: Callable[[int], None],
                  stages: Sequence[str]) -> Counter[str]:
    """Run every trial; `attempt` runs one (on `trial.campaign`), `assert_complete(c)` checks a finished campaign
    against the clean migration, `finish(c)` resumes the last campaign to its end and checks it. Returns how often
    each stage was in flight at a kill; asserts all trials killed and every stage covered."""
    campaign, kills_in_campaign = 0, 0
    for trial in trials:
        for _attempt in range(3):  # a missed aim ends the campaign; the trial is retried on a fresh one
            trial.campaign = campaign
            print(f"trial {trial.index:2d} seed {trial.seed} aim {trial.aim} campaign {campaign}", flush=True)
            code = attempt(trial)
            if trial.killed:
                print(f"  killed after {trial.seconds:.1f} s with {trial.in_flight} in flight", flush=True)
                kills_in_campaign += 1
                break
            # It ran to the end before the aimed moment: that was the campaign's final resume.
            assert code == 0, f"trial {trial.index} (seed {trial.seed}): migrate failed with {code}\n{trial.output()}"
            assert_complete(campaign)
            print(f"  campaign {campaign} complete after {kills_in_campaign} kills", flush=True)
            campaign, kills_in_campaign = campaign + 1, 0
        assert trial.killed, f"trial {trial.index} (seed {trial.seed}) never reached {trial.aim}"
        assert trial.aim in trial.in_flight, (trial.index, trial.seed, trial.aim, trial.in_flight)
    if kills_in_campaign:
        finish(campaign)
        print(f"  campaign {campaign} complete after {kills_in_campaign} kills", flush=True)
    covered = Counter(stage for trial in trials for stage in trial.in_flight)
    print("stages interrupted:", dict(covered), f"over {campaign + 1} campaigns")
    assert sum(t.killed for t in trials) == len(trials)
    assert set(covered) >= set(stages), f"not every stage was interrupted: {dict(covered)}"
    return covered
