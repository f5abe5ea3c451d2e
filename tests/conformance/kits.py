"""What each target supplies to the conformance suite: how to open it, and how to count what it holds for a run.

A kit is the only per-target code the suite has (as a backend's `fstests.Opt` is in rclone). `start` brings up
what the target needs for a whole module (a server, a test plug-in's installation) and `stop` ends it; `place`
gives one test its own corner of the target as keyword options of `nm.load` / `nm.validate` (the CLI flags are
made from them); `held` counts what the target holds for one archived run through the plug-in's own read-back;
`midway` says, while a load runs in another process, that a run is partly in the target (the moment to SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from neptune_migration import plugins
from neptune_migration.archive import ArchivedRun
from neptune_migration.options import build as build_options
from neptune_migration.targets.base import TargetSettings

from ..conftest import MlflowServer

TESTS = Path(__file__).resolve().parents[1]
TOY = TESTS / "plugins" / "toy_target"
WANDB_KEY = "k" * 40  # the W&B stand-in takes any key


@dataclass(frozen=True)
class Held:
    """What a target holds for one Neptune run: the ids of its copies, its metric points and its files."""

    ids: tuple[str, ...] = ()
    points: int = 0
    files: int = 0


@dataclass
class Place:
    """One test's corner of a target: the keyword options that open it, and the environment a CLI needs."""

    options: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    work: Path = Path()


@contextlib.contextmanager
def opened(name: str, options: dict[str, Any]) -> Iterator[tuple[Any, Any]]:
    """The target and its verifier, built by the plug-in from the same options a command takes."""
    plugin = plugins.target(name)
    target = plugin.build(build_options(plugin.options, options), TargetSettings(workers=1))
    target.check()
    verifier = plugin.verifier(target)
    try:
        yield target, verifier
    finally:
        verifier.close()
        target.close()


class Kit:
    name = ""
    # The verifier's discard deletes the target's copies (else the target resumes a run in place, as W&B does:
    # a deleted W&B run id is blocked for about a week, so its discard removes nothing and says 0).
    discards = True

    def start(self, base: Path, mp: pytest.MonkeyPatch) -> None:
        """Once per module: servers, environment."""

    def stop(self) -> None:
        """Once per module, after its tests."""

    def place(self, work: Path, mp: pytest.MonkeyPatch) -> Place:
        raise NotImplementedError

    def held(self, place: Place, run: ArchivedRun) -> Held:
        raise NotImplementedError

    def midway(self, place: Place, state: Path) -> bool:
        """A run is partly loaded, as the target (or the ledger's checkpoint of it) shows."""
        raise NotImplementedError

    @contextlib.contextmanager
    def slow(self, place: Place) -> Iterator[dict[str, Any]]:
        """While the load that is killed runs: extra options that widen a crash test's window."""
        yield {}


def checkpoints(state: Path) -> list[dict[str, Any]]:
    """The load checkpoints of runs still running, read without waiting for the writer."""
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            rows = db.execute("SELECT checkpoint FROM progress WHERE stage='load' AND status='running'").fetchall()
    except sqlite3.Error:
        return []
    return [json.loads(c) for (c,) in rows if c]


# -- MLflow ---------------------------------------------------------------------------------------------------
class MlflowKit(Kit):
    name = "mlflow"

    def start(self, base: Path, mp: pytest.MonkeyPatch) -> None:
        self.server = MlflowServer(base / "mlflow-server")
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def place(self, work: Path, mp: pytest.MonkeyPatch) -> Place:
        return Place({"mlflow_tracking_uri": self.server.uri, "experiment_prefix": f"c{uuid.uuid4().hex[:8]}-"},
                     work=work)

    def held(self, place: Place, run: ArchivedRun) -> Held:
        with opened(self.name, place.options) as (_target, verifier):
            found = verifier.find_runs(run)
            client = verifier.client
            points = files = 0
            for mlflow_run in found:
                run_id = mlflow_run.info.run_id
                points += sum(len(client.get_metric_history(run_id, key)) for key in mlflow_run.data.metrics)
                files += _artifacts(client, run_id, None)
        return Held(tuple(r.info.run_id for r in found), points, files)

    def midway(self, place: Place, state: Path) -> bool:
        return any(c.get("metric_batches_done", 0) >= 2 for c in checkpoints(state))


def _artifacts(client: Any, run_id: str, path: str | None) -> int:
    return sum(_artifacts(client, run_id, f.path) if f.is_dir else 1 for f in client.list_artifacts(run_id, path))


# -- W&B ------------------------------------------------------------------------------------------------------
def _wandb_env(base: Path, mp: pytest.MonkeyPatch) -> None:
    """As tests/wandb/conftest.py: wandb writes only under `base` and never reaches the internet."""
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (base / var.lower()).mkdir(parents=True, exist_ok=True)
        mp.setenv(var, str(base / var.lower()))
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_DISABLE_GIT", "true")
    mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # unroutable: a leak fails loudly
    mp.delenv("WANDB_API_KEY", raising=False)
    mp.delenv("WANDB_ENTITY", raising=False)


def _wandb_held(target: Any, run: ArchivedRun) -> Held:
    try:
        data = target.read_back(run)
    except FileNotFoundError:
        return Held()
    points = sum(len(v) for v in data.history.values())
    files = sum(len(a["files"]) for a in data.artifacts.values())
    return Held((data.run_id,), points, files)


class WandbOfflineKit(Kit):
    name = "wandb-offline"
    discards = False

    def start(self, base: Path, mp: pytest.MonkeyPatch) -> None:
        _wandb_env(base, mp)

    def place(self, work: Path, mp: pytest.MonkeyPatch) -> Place:
        return Place({"wandb_dir": work / "wandb"}, work=work)

    def held(self, place: Place, run: ArchivedRun) -> Held:
        with opened(self.name, place.options) as (target, _verifier):
            return _wandb_held(target, run)

    def midway(self, place: Place, state: Path) -> bool:
        # A run folder is written under a temporary name and renamed into place once whole.
        return any((place.options["wandb_dir"] / "wandb").glob(".tmp-*/*.wandb"))


class WandbKit(Kit):
    """`--to wandb` against the local W&B stand-in (tests/wandb/standin.py): the real `wandb sync` uploads to it
    and `wandb.Api` reads back from it."""

    name = "wandb"
    discards = False

    def start(self, base: Path, mp: pytest.MonkeyPatch) -> None:
        _wandb_env(base, mp)
        mp.syspath_prepend(str(TESTS / "wandb"))
        from standin import StandIn

        self.standin = StandIn().start()
        mp.setenv("WANDB_BASE_URL", self.standin.url)
        mp.setenv("WANDB_API_KEY", WANDB_KEY)

    def stop(self) -> None:
        self.standin.stop()

    def place(self, work: Path, mp: pytest.MonkeyPatch) -> Place:
        # The online target stages run folders under the temporary folder, by W&B run id (the same in every
        # test): each test gets its own.
        (work / "tmp").mkdir(parents=True, exist_ok=True)
        mp.setattr(tempfile, "tempdir", str(work / "tmp"))
        return Place({"wandb_project_prefix": f"c{uuid.uuid4().hex[:8]}-"}, {"TMPDIR": str(work / "tmp")}, work)

    def held(self, place: Place, run: ArchivedRun) -> Held:
        from wandb.errors import CommError

        with opened(self.name, place.options) as (target, _verifier):
            try:
                return _wandb_held(target, run)
            except CommError:  # no such run on the server
                return Held()

    def midway(self, place: Place, state: Path) -> bool:
        prefix = place.options["wandb_project_prefix"]
        return any(r.project.startswith(prefix) and r.streams.get("wandb-history.jsonl") and not r.complete
                   for r in list(self.standin.runs.values()))

    @contextlib.contextmanager
    def slow(self, place: Place) -> Iterator[dict[str, Any]]:
        self.standin.file_stream_delay = 0.3  # what wandb-core streams arrives slowly: a kill lands inside it
        try:
            yield {}
        finally:
            self.standin.file_stream_delay = 0.0


_AIM_HELD = """
import json, sys
from aim import Run
from neptune_migration.targets.aim.loader import AimTarget
from neptune_migration.targets.aim.mapping import ARTIFACTS_DIR
from neptune_migration.vocabulary import RunRef

repo, project, run_id = sys.argv[1:]
target = AimTarget(repo)
found = target.find_runs(RunRef(project, run_id))
points = files = 0
for run_hash in found:
    try:
        aim_run = Run(run_hash, repo=target.repo, read_only=True)
        points += sum(len(metric.values.values_list()) for metric in aim_run.metrics())
    except Exception:  # a run cut short by a kill may not read back whole: it holds nothing usable
        pass
    folder = target.path / ARTIFACTS_DIR / run_hash
    files += sum(1 for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0
target.close()
print(json.dumps([found, points, files]))
"""


# -- Aim: a local repository, read back with Aim's own SDK ---------------------------------------------------------
class AimKit(Kit):
    name = "aim"

    def place(self, work: Path, mp: pytest.MonkeyPatch) -> Place:
        return Place({"aim_repo": work / "aim"}, work=work)

    def held(self, place: Place, run: ArchivedRun) -> Held:
        # Read in a process of its own: Aim caches repositories and RocksDB handles per process, and a view this
        # process opened earlier can miss what a load wrote since.
        result = subprocess.run([sys.executable, "-c", _AIM_HELD, str(place.options["aim_repo"]), run.ref.project_id,
                                 run.ref.run_id], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        ids, points, files = json.loads(result.stdout)
        return Held(tuple(ids), points, files)

    def midway(self, place: Place, state: Path) -> bool:
        # Aim writes a run's points into its own RocksDB under seqs/chunks/<run hash>: once one holds a few
        # hundred kB (thousands of points), a run is partly in Aim.
        chunks = place.options["aim_repo"] / ".aim" / "seqs" / "chunks"
        try:
            return any(sum(f.stat().st_size for f in run.glob("*") if f.is_file()) > 200_000
                       for run in (chunks.iterdir() if chunks.exists() else ()))
        except FileNotFoundError:  # RocksDB replaced a file while we summed: look again on the next poll
            return False


# -- Comet offline archives, read back by the verifier's zip parser ------------------------------------------------
class CometOfflineKit(Kit):
    name = "comet-offline"

    def place(self, work: Path, mp: pytest.MonkeyPatch) -> Place:
        return Place({"comet_dir": work / "comet"}, work=work)

    def held(self, place: Place, run: ArchivedRun) -> Held:
        with opened(self.name, place.options) as (_target, verifier):
            archive = verifier.read(run)
            if archive is None:
                return Held()
            files = sum(len(v) for v in (*archive.files.values(), *archive.images.values()))
            return Held((archive.meta["offline_id"],), archive.metric_points, files)

    def midway(self, place: Place, state: Path) -> bool:
        # An archive is written in a staging folder `.tmp-<id>/` and renamed into place as a zip once whole: a
        # staging messages.json holding thousands of points is a run partly written.
        try:
            return any(m.stat().st_size > 100_000 for m in place.options["comet_dir"].glob(".tmp-*/messages.json"))
        except FileNotFoundError:  # renamed away while we looked: poll again
            return False


# -- the toy target (tests/plugins/toy_target), installed the way tests/test_plugins.py installs it -----------------
class ToyKit(Kit):
    name = "toy"

    def start(self, base: Path, mp: pytest.MonkeyPatch) -> None:
        site = base / "site"
        shutil.copytree(TOY, site / "toy_target")
        info = site / "toy_target-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-target\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[neptune_migration.targets]\ntoy = toy_target:plugin\n")
        self.site = str(site)
        mp.syspath_prepend(self.site)  # this process sees the entry point too
        plugins.reset()

    def stop(self) -> None:
        plugins.reset()

    def place(self, work: Path, mp: pytest.MonkeyPatch) -> Place:
        path = os.pathsep.join([self.site, *filter(None, [os.environ.get("PYTHONPATH")])])
        return Place({"toy_dir": work / "toy"}, {"PYTHONPATH": path}, work)

    def held(self, place: Place, run: ArchivedRun) -> Held:
        with opened(self.name, place.options) as (target, _verifier):
            if not target.file_for(run).exists():
                return Held()
            files = target.files_for(run)
            return Held((target.file_for(run).stem,), len(target.held_points(run)),
                        sum(1 for _ in files.iterdir()) if files.exists() else 0)

    def midway(self, place: Place, state: Path) -> bool:
        return any(c.get("points", 0) >= 1000 for c in checkpoints(state))

    @contextlib.contextmanager
    def slow(self, place: Place) -> Iterator[dict[str, Any]]:
        yield {"toy_pause": 0.1}


KITS: dict[str, type[Kit]] = {k.name: k for k in (MlflowKit, WandbKit, WandbOfflineKit, AimKit, CometOfflineKit,
                                                   ToyKit)}
