"""The target conformance suite: every registered target, and the toy target, pass the same cases.

A target is correct when this suite passes for it. Each target brings only a kit (kits.py: how to open it, how
to count what it holds for a run); every case goes through the public API (`import neptune_migration as nm`) or
the real CLI in a subprocess. The cases: the nasty archive loads and validates clean; a load SIGKILLed in the
middle of a run and run again leaves every run once with every point once; a rerun after a complete load writes
nothing; a narrower then a wider selection leaves everything in the same target runs; the verifier's discard
takes a run's copies away, validate says so and retry restores it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import neptune_migration as nm
from neptune_migration import plugins
from neptune_migration.archive import Archive, ArchivedRun

from ..conftest import VENV_BIN, run_cli
from .kits import KITS, Held, Kit, Place, opened


# -- helpers ----------------------------------------------------------------------------------------------------
def _runs(archive: Path) -> list[ArchivedRun]:
    return sorted(Archive(archive).scan().runs, key=lambda r: r.ref.key)


def _flags(kit: Kit, options: dict[str, Any]) -> list[str]:
    """The command-line form of the keyword options (the CLI declares each option from the same field)."""
    out = ["--to", kit.name]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        elif isinstance(value, list | tuple):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


def _common(place: Place, archive: Path, state: str = "state.db") -> dict[str, Any]:
    return {"archive": archive, "state": place.work / state, **place.options}


def _validate(kit: Kit, place: Place, archive: Path, **selection: Any) -> nm.ValidationResult:
    report = place.work / f"report-{time.monotonic_ns()}"
    return nm.validate(to=kit.name, report_dir=report, workers=2, **_common(place, archive), **selection)


def _mismatches(result: nm.ValidationResult) -> list[str]:
    return [f"{c.ref.key}: {c.summary_line()}" for c in result.summary.checks if c.status != "validated"]


def _assert_clean(result: nm.ValidationResult, runs: int) -> None:
    assert result.ok and result.report["totals"]["mismatches"] == 0, _mismatches(result)
    assert result.report["totals"]["runs_validated"] == runs, result.report["totals"]


def _held(kit: Kit, place: Place, archive: Path) -> dict[str, Held]:
    return {run.ref.key: kit.held(place, run) for run in _runs(archive)}


def _float_points(run: ArchivedRun) -> int:
    return run.table(["float_series"], ["attribute_path"]).num_rows


# -- the suite covers every target ------------------------------------------------------------------------------
def test_every_registered_target_has_a_kit() -> None:
    """A target plug-in added to pyproject.toml without a kit would pass no conformance case: refuse that."""
    registered = set(plugins.targets()) - {"toy"}  # the toy is registered by its kit, while its module runs
    assert registered <= set(KITS), f"targets without a conformance kit: {sorted(registered - set(KITS))}"


# -- 1. the nasty archive -----------------------------------------------------------------------------------------
def test_nasty_archive_loads_and_validates_clean(kit: Kit, place: Place, nasty_archive: Path) -> None:
    loaded = nm.load(to=kit.name, workers=2, **_common(place, nasty_archive))
    assert loaded.ok, loaded.to_dict()
    assert loaded.summary.count("loaded") == 2
    _assert_clean(_validate(kit, place, nasty_archive), 2)
    held = _held(kit, place, nasty_archive)
    assert all(len(h.ids) == 1 and h.points > 0 for h in held.values()), held
    assert held["nasty/ünïcode-proj/NASTY-1"].files > 0, held


# -- 2. SIGKILL in the middle of a run, then the same command again ----------------------------------------------
def test_sigkill_mid_run_then_rerun_is_exact(kit: Kit, place: Place, kill_archive: Path) -> None:
    state = place.work / "state.db"
    base = ["load", "--archive", str(kill_archive), "--state", str(state), "--workers", "1", "--no-progress"]
    with kit.slow(place) as slow:
        args = [*base, *_flags(kit, {**place.options, **slow})]
        proc = subprocess.Popen([str(VENV_BIN / "neptune-migrate"), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(os.environ, **place.env), start_new_session=True)
        deadline = time.monotonic() + 180
        while not kit.midway(place, state) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)  # the loader and whatever it started (wandb sync, wandb-core)
        _out, err = proc.communicate(timeout=60)
    assert alive, f"the load ended before a run was partly loaded; make the archive bigger\n{err[-2000:]!r}"
    runs = _runs(kill_archive)
    cut = {r.ref.key: kit.held(place, r) for r in runs}
    assert any(cut[r.ref.key].points < _float_points(r) for r in runs), f"no run was cut: {cut}"

    again = run_cli(*base, *_flags(kit, place.options), env=place.env)
    assert again.returncode == 0, again.stdout + again.stderr
    _assert_clean(_validate(kit, place, kill_archive), len(runs))
    for run in runs:
        held = kit.held(place, run)
        assert len(held.ids) == 1, f"{run.ref.key}: {held.ids} (one copy per Neptune run)"
        assert held.points == _float_points(run), f"{run.ref.key}: every point once: {held}"


# -- 3. a rerun after a complete load writes nothing -------------------------------------------------------------
def test_rerun_after_a_complete_load_writes_nothing(kit: Kit, place: Place, nasty_archive: Path) -> None:
    assert nm.load(to=kit.name, workers=2, **_common(place, nasty_archive)).ok
    before = _held(kit, place, nasty_archive)
    args = ["load", "--archive", str(nasty_archive), "--state", str(place.work / "state.db"), "--no-progress",
            *_flags(kit, place.options)]
    again = run_cli(*args, env=place.env)
    assert again.returncode == 0, again.stdout + again.stderr
    text = " ".join(again.stdout.split())
    assert re.search(r"runs already loaded \(skipped\)\W+2\b", text), again.stdout
    assert re.search(r"runs loaded\W+0\b", text), again.stdout
    assert _held(kit, place, nasty_archive) == before


# -- 4. a narrower selection, then a wider one --------------------------------------------------------------------
def test_narrower_then_wider_selection_fills_the_same_runs(kit: Kit, place: Place, nasty_archive: Path) -> None:
    """The rule of issue 24: more asked than loaded adds the missing parts to the SAME target runs."""
    narrow = nm.load(to=kit.name, workers=2, exclude=["files"], **_common(place, nasty_archive))
    assert narrow.ok, narrow.to_dict()
    _assert_clean(_validate(kit, place, nasty_archive, exclude=["files"]), 2)
    first = _held(kit, place, nasty_archive)
    wide = nm.load(to=kit.name, workers=2, **_common(place, nasty_archive))
    assert wide.ok, wide.to_dict()
    _assert_clean(_validate(kit, place, nasty_archive), 2)
    second = _held(kit, place, nasty_archive)
    assert {k: h.ids for k, h in second.items()} == {k: h.ids for k, h in first.items()}
    assert second["nasty/ünïcode-proj/NASTY-1"].files > first["nasty/ünïcode-proj/NASTY-1"].files
    assert {k: h.points for k, h in second.items()} == {k: h.points for k, h in first.items()}


# -- 5. discard ---------------------------------------------------------------------------------------------------
def test_discard_then_validate_and_retry(kit: Kit, place: Place, nasty_archive: Path) -> None:
    assert nm.load(to=kit.name, workers=2, **_common(place, nasty_archive)).ok
    before = _held(kit, place, nasty_archive)
    victim, other = _runs(nasty_archive)
    with opened(kit.name, place.options) as (_target, verifier):
        removed = verifier.discard(victim)
    after = _held(kit, place, nasty_archive)
    assert after[other.ref.key] == before[other.ref.key]
    if not kit.discards:  # the target resumes runs in place: discard removes nothing and says so
        assert removed == 0 and after == before
        _assert_clean(_validate(kit, place, nasty_archive), 2)
        return
    assert removed == len(before[victim.ref.key].ids) >= 1
    assert after[victim.ref.key] == Held(), after

    missing = _validate(kit, place, nasty_archive)
    assert not missing.ok
    kinds = {c.ref.key: {m.kind for m in c.mismatches} for c in missing.summary.checks}
    assert kinds == {victim.ref.key: {"run_missing"}, other.ref.key: set()}, kinds

    retried = nm.retry(to=kit.name, workers=2, report_dir=place.work / "retry-report",
                       **_common(place, nasty_archive))
    assert retried.ok and retried.reloaded == [victim.ref.key], retried.to_dict()
    restored = _held(kit, place, nasty_archive)
    assert len(restored[victim.ref.key].ids) == 1
    assert (restored[victim.ref.key].points, restored[victim.ref.key].files) == (
        before[victim.ref.key].points, before[victim.ref.key].files)
    assert restored[other.ref.key] == before[other.ref.key]
    _assert_clean(_validate(kit, place, nasty_archive), 2)
