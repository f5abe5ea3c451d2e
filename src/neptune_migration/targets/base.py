"""What every target offers the stages, and how a target package declares itself.

Adding a target means one package under `targets/` (or in another distribution) exposing a `TargetPlugin`
in the `neptune_migration.targets` entry point group: its name for `--to`, its options (a dataclass of
`options.option` fields), a factory for the `Target`, and the `Verifier` that reads the target back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from neptune_migration.archive import ArchivedRun
from neptune_migration.checks import Verifier
from neptune_migration.vocabulary import RunRef


@dataclass
class LoadResult:
    """What a target did with one run; stored in the ledger and shown in reports."""

    target_id: str
    points: int = 0
    files: int = 0
    bytes: int = 0
    # Documented approximations, counted so the report can show them (e.g. {"inf_clamped": 3}).
    approximations: dict[str, int] = field(default_factory=dict)
    # Names changed by the target's sanitising: {original attribute path: name in the target}.
    renamed: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Runs already in the target that this load made inconsistent (e.g. an MLflow experiment's step scale rose):
    # the stage loads them again when it can.
    stale: list[RunRef] = field(default_factory=list)

    def approx(self, kind: str, n: int = 1) -> None:
        self.approximations[kind] = self.approximations.get(kind, 0) + n


@dataclass
class LoadContext:
    """The pipeline's side of a run load: progress reporting and a resumable checkpoint.

    `checkpoint` is the last value stored with `save_checkpoint` by an earlier, interrupted attempt of
    the same run and target (None on a first attempt). Targets store whatever lets them resume exactly.
    """

    checkpoint: dict[str, Any] | None = None
    save_checkpoint: Callable[[dict[str, Any]], None] = lambda _state: None
    on_points: Callable[[int], None] = lambda _n: None
    on_bytes: Callable[[int], None] = lambda _n: None
    # Attribute filter from the selection: returns True when an attribute path (and type) is wanted.
    wants_attribute: Callable[[str, str], bool] = lambda _path, _type: True
    # File filter from the selection: (attribute path, file name, size) -> wanted.
    wants_file: Callable[[str, str, int], bool] = lambda _path, _name, _size: True
    # The run changed at the source since it was loaded (`--refresh`): replace the target's copy.
    replace: bool = False
    # Parts the target run already holds from earlier loads (attribute paths, and `vocabulary.file_part` keys for
    # files): a wider rerun sends only what is missing, into the same target run. Ignored when the run is created.
    held: Callable[[str], bool] = lambda _part: False
    # The ledger's identity (`Ledger.identity`), kept on each target run created, so copies another migration made
    # of the same Neptune run are told apart from this one's (`Copy.migration`).
    migration: str | None = None
    # True once Ctrl-C or SIGTERM asked for a stop. A target may look between batches and call save_checkpoint;
    # save_checkpoint itself then unwinds the run (the stage records it `interrupted`, to resume later).
    stop_requested: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class Placement:
    """Where a target puts a run: `where` names the place (an MLflow experiment, a W&B entity/project), `options`
    the command-line options that chose it (what the one line refusing another placement repeats)."""

    where: str
    options: str


@dataclass(frozen=True)
class Copy:
    """One active copy of a Neptune run in a target: where it is, and its id there."""

    where: str
    target_id: str
    # The identity of the ledger that created it (None: a run from before the tool kept it).
    migration: str | None = None

    def ours(self, migration: str | None) -> bool:
        """Made by this migration (or by a version that did not say)."""
        return self.migration is None or migration is None or self.migration == migration


class ReplaceNeeded(Exception):
    """Raised by `sync_run` when a target cannot append this change to the run it holds (an MLflow param that
    changed, a step scale that no longer fits): the sync stage replaces the run instead, as `--refresh` does.
    `stale`: runs already in the target that the attempt made inconsistent (see LoadResult.stale)."""

    def __init__(self, reason: str, stale: list[RunRef] | None = None) -> None:
        super().__init__(reason)
        self.stale = stale or []


class Target(Protocol):
    name: str

    @property
    def canonical(self) -> str:
        """A stable string naming this target (URI or folder), part of the ledger key. Holds no secret."""
        ...

    def check(self) -> None:
        """Fail fast with a TargetError if the target cannot be reached or refuses our credentials."""
        ...

    def load_run(self, run: ArchivedRun, ctx: LoadContext) -> LoadResult:
        """Write one archived run, completing (never duplicating) anything an interrupted attempt left."""
        ...

    def close(self) -> None: ...



@dataclass(frozen=True)
class TargetSettings:
    """What every target is built with besides its own options: the stage's concurrency."""

    workers: int = 4
    # Concurrent uploads into the target (MLflow artifact files, W&B syncs); None: the target's default.
    upload_workers: int | None = None
    # One writer's name shared by every process of one migration (a cluster's workers): a target that keeps other
    # writers out (MLflow's experiment claim) lets these in together. None: this process alone.
    writer: str | None = None


@dataclass(frozen=True)
class TargetPlugin:
    """A target as the registry sees it. `build` and `verifier` import the target's libraries lazily, so listing
    targets (for `--help`) never imports mlflow or wandb."""

    name: str
    summary: str
    options: type
    build: Callable[[Any, TargetSettings], Target]
    verifier: Callable[[Any], Verifier]
    # What to tell the user once runs have arrived (how to open the UI, how to upload); None: nothing.
    hint: Callable[[Any], str | None] = lambda _target: None
    # A link to one run in the target's UI, from the target and the run's id there (the ledger's target_id), for
    # the report; None where the target has no UI to link to (a local store, offline folders).
    run_url: Callable[[Any, str], str | None] = lambda _target, _target_id: None
    # The target can hold Neptune 2.x's model registry (models and versions): the load stage sends it.
    model_registry: bool = False
    # Called by the load stage with every run it is about to load (and the selection's attribute filter), before
    # any is loaded: a target that keeps settings across runs (MLflow's per-experiment step scale) fixes them here
    # so that no run of this load needs loading twice. Returns the runs already in the target that this made stale.
    # Raised whenever a change to the target alters what lands where. Each target run records the version it was
    # loaded with (and the ledger too), so a rerun after an upgrade lists the runs loaded with an older mapping and
    # reloads them only when asked (`--refresh`): one experiment never silently mixes two mappings.
    mapping_version: int = 1
    # `migrate --sync`: `sync_run(target, run, delta, ctx) -> LoadResult` appends `delta` (the run's parts the
    # target does not hold yet) to the target's copy of `run` (all its parts), sending only the delta's points;
    # raises ReplaceNeeded when that cannot be done in place. None: a changed run is replaced.
    sync_run: Callable[[Any, ArchivedRun, ArchivedRun, LoadContext], LoadResult] | None = None
    prepare: Callable[[Any, list[ArchivedRun], Callable[[str, str], bool]], list[RunRef]] = (
        lambda _target, _runs, _wants: [])
    # Where this target (as configured) puts a run; None: one place only, so a run can never be elsewhere.
    placement: Callable[[Any, ArchivedRun], Placement] | None = None
    # Every active copy of a Neptune run in the target, wherever it is (other experiments, other projects).
    copies: Callable[[Any, RunRef], list[Copy]] | None = None
    # Delete one copy (`--relocate`, once the copy at the new place validated).
    delete_copy: Callable[[Any, Copy], None] | None = None
    # Why a target with `copies` but no `delete_copy` cannot honour `--relocate` (the one line refusing it).
    no_relocate: str | None = None
