"""The rerun rule: a rerun converges the target on what THIS command asks, whatever earlier commands asked.

The ledger's `loaded` record says what each target run holds: where it is (the plug-in's `Placement`) and the
filters of every load that wrote it (with the parts they let through when the list is short, and a fingerprint).
A rerun compares that with what it asks:
- more asked: the missing parts go into the same target run (`LoadContext.held` names what is there already);
- less asked: nothing is deleted, and one summary line says what stays;
- another placement for runs the target holds: refused before anything is written, unless `--relocate` (load at
  the new place, validate it there, then delete the old copies), so no Neptune run is ever active twice.
The record is progress; the target is the truth: a conflict the record claims is confirmed against the target.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from neptune_migration.archive import ArchivedRun
from neptune_migration.errors import UsageError
from neptune_migration.ledger import Ledger, Loaded
from neptune_migration.plugins import target as target_plugin
from neptune_migration.selection import Selection
from neptune_migration.targets.base import Copy, Placement
from neptune_migration.vocabulary import FILE_LIKE_TYPES, SERIES_TYPES, file_part

# Up to this many parts the record keeps the list itself; beyond, the filters rebuild it from the archive.
SHORT_LIST = 256
_FILE_COLUMNS = ["attribute_path", "attribute_type", "step", "step_exact", "file_value", "file_name", "file_size"]


def filters(selection: Selection) -> dict[str, Any]:
    """The part of a selection that decides what of a run is loaded (not which runs)."""
    return {
        "attributes": selection.attributes.pattern if selection.attributes else None,
        "exclude_attributes": selection.exclude_attributes.pattern if selection.exclude_attributes else None,
        "include": sorted(selection.include_classes),
        "exclude": sorted(selection.exclude_classes),
        "max_file_size": selection.max_file_size,
        "file_types": sorted(selection.file_types),
        "file_pattern": selection.file_pattern,
    }


def selection_of(recorded: dict[str, Any]) -> Selection:
    def regex(text: str | None) -> re.Pattern[str] | None:
        return re.compile(text) if text else None

    return Selection(attributes=regex(recorded.get("attributes")),
                     exclude_attributes=regex(recorded.get("exclude_attributes")),
                     include_classes=set(recorded.get("include") or ()),
                     exclude_classes=set(recorded.get("exclude") or ()),
                     max_file_size=recorded.get("max_file_size"), file_types=list(recorded.get("file_types") or ()),
                     file_pattern=recorded.get("file_pattern"))


def parts(run: ArchivedRun, selections: list[Selection]) -> list[set[str]]:
    """What each selection lets through of one run: attribute paths, and one `file_part` per archived file. The
    archive is read once for all of them."""
    out: list[set[str]] = [set() for _ in selections]
    attributes: set[tuple[str, str]] = {(p, a.type) for p, a in run.atoms().items() if not p.startswith("sys/")}
    for batch in run.batches(SERIES_TYPES, ["attribute_path", "attribute_type"]):
        pairs = pa.table({"p": batch.column("attribute_path"), "t": batch.column("attribute_type")})
        grouped = pairs.group_by(["p", "t"]).aggregate([])
        attributes |= set(zip(grouped.column("p").to_pylist(), grouped.column("t").to_pylist(), strict=True))
    for held, selection in zip(out, selections, strict=True):
        held |= {path for path, type_ in attributes if selection.wants_attribute(path, type_)}
    for batch in run.batches(FILE_LIKE_TYPES, _FILE_COLUMNS):
        for row in batch.to_pylist():
            path, type_ = row["attribute_path"], row["attribute_type"]
            if row["file_value"] is None:
                continue
            step = row["step_exact"] if row["step_exact"] is not None else row["step"]
            key = file_part(path, step, row["file_name"])
            for held, selection in zip(out, selections, strict=True):
                if selection.wants_attribute(path, type_) and selection.wants_file(
                        path, row["file_name"] or "", row["file_size"] or 0):
                    held.add(key)
    return out


def held_parts(run: ArchivedRun, recorded: dict[str, Any]) -> set[str]:
    """What the loads recorded in `recorded` put into the target run."""
    if recorded.get("parts") is not None:
        return set(recorded["parts"])
    return set().union(*parts(run, [selection_of(f) for f in recorded.get("passes", ())]))


def record(run: ArchivedRun, selection: Selection, earlier: dict[str, Any] | None) -> dict[str, Any]:
    """The selection record after a load with `selection` finished (`earlier`: what the run held before, None
    when the run was created afresh)."""
    passes = list((earlier or {}).get("passes", ()))
    mine = filters(selection)
    if mine not in passes:
        passes.append(mine)
    held = set().union(*parts(run, [selection_of(f) for f in passes]))
    listed = sorted(held)
    return {"passes": passes, "count": len(listed),
            "fingerprint": hashlib.sha256("\n".join(listed).encode()).hexdigest()[:32],
            "parts": listed if len(listed) <= SHORT_LIST else None}


@dataclass
class Gap:
    """What this command asks of a run against what its target run holds."""

    held: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    stays: set[str] = field(default_factory=set)


def gap(run: ArchivedRun, selection: Selection, loaded: Loaded | None, where: str | None) -> Gap | None:
    """None: nothing to compare (no record, or the run is at another place); the parts otherwise."""
    if loaded is None or not loaded.selection or not same_place(loaded, where):
        return None
    passes = loaded.selection.get("passes", ())
    if passes == [filters(selection)]:
        return Gap()  # the one load that wrote it asked exactly this: nothing read
    held = held_parts(run, loaded.selection)
    asked = parts(run, [selection])[0]
    return Gap(held, asked - held, held - asked)


def keeping(selection: Selection, held: set[str]) -> tuple[Any, Any]:
    """(wants_attribute, wants_file) of a load into a run that holds `held`: what this selection asks plus what
    the run holds, so a target that rewrites a run whole (a W&B offline folder) keeps it; a target that adds to
    the run skips the held parts (`LoadContext.held`)."""
    if not held:
        return selection.wants_attribute, selection.wants_file
    split = [part.split("\x1f") for part in held]
    paths = {bits[0] for bits in split}
    files = {(bits[0], bits[2]) for bits in split if len(bits) == 3}

    def wants_attribute(path: str, type_: str) -> bool:
        return selection.wants_attribute(path, type_) or path in paths

    def wants_file(path: str, name: str, size: int) -> bool:
        return selection.wants_file(path, name, size) or (path, name) in files

    return wants_attribute, wants_file


def same_place(loaded: Loaded | None, where: str | None) -> bool:
    return loaded is None or not loaded.placement or where is None or loaded.placement.get("where") == where


def describe_part(part: str) -> str:
    if "\x1f" not in part:
        return part
    path, step, name = part.split("\x1f")
    return f"{path}" + (f" step {step}" if step else "") + (f" ({name})" if name else "")


def placement(target: Any, run: ArchivedRun) -> Placement | None:
    plugin = target_plugin(target.name)
    return plugin.placement(target, run) if plugin.placement is not None else None


def as_record(place: Placement | None) -> dict[str, Any] | None:
    return {"where": place.where, "options": place.options} if place is not None else None


@dataclass
class Elsewhere:
    """A selected run whose target copies are all, or also, outside the place this command asks for."""

    run: ArchivedRun
    here: Placement
    copies: list[Copy]
    options: str  # the options that placed them, when the ledger knows


def may_be_elsewhere(ledger: Ledger, canonical: str, ref: Any, options: str | None) -> bool:
    """Whether the ledger leaves a run's place in doubt without reading the run: it was loaded into this target
    and its recorded placement options (which, with the run, decide the place) are not `options` or not known."""
    loaded = ledger.loaded(ref, canonical)
    if loaded is None:
        return ledger.get(ref, "load", canonical) is not None
    return not loaded.placement or options is None or loaded.placement.get("options") != options


def find_elsewhere(runs: Iterable[ArchivedRun], target: Any, ledger: Ledger, canonical: str,
                   stage: str) -> list[Elsewhere]:
    """The runs this command would place anew while the target holds them elsewhere. The ledger says where a run
    was put; the target confirms it (a copy someone deleted is no conflict). A run loaded before the ledger kept
    placements is looked up in the target."""
    plugin = target_plugin(target.name)
    if plugin.placement is None or plugin.copies is None:
        return []
    out = []
    for run in runs:
        here = plugin.placement(target, run)
        loaded = ledger.loaded(run.ref, canonical)
        recorded = loaded.placement if loaded is not None else None
        if recorded and recorded.get("where") == here.where:
            continue
        if recorded is None and loaded is None and ledger.get(run.ref, stage, canonical) is None:
            continue  # never loaded into this target from this ledger
        found = [c for c in plugin.copies(target, run.ref) if c.ours(ledger.identity())]
        copies = [c for c in found if c.where != here.where]
        if copies:
            out.append(Elsewhere(run, here, copies, (recorded or {}).get("options", "")))
        elif recorded:
            # The target holds nothing at the recorded place: the record is out of date, the target is the truth.
            ledger.forget_loaded(run.ref, canonical)
        elif found:
            # Loaded before placements were kept, and here: recorded, so the next rerun need not ask the target.
            ledger.record_loaded(run.ref, canonical, as_record(here))
    return out


def refusal(found: list[Elsewhere], target: str, command: str | None = None) -> UsageError:
    """The one line refusing another placement. `command`: the command that offers --relocate, when it is not
    the one refused (migrate refuses; `load --relocate` on its archive moves the runs)."""
    first = found[0]
    where = sorted({c.where for f in found for c in f.copies})
    placed = f" (placed by {first.options})" if first.options else ""
    how = f"run `{command} ... --relocate`" if command else "add --relocate"
    head = (f"{len(found)} run(s) of this selection are already in {target} at {', '.join(where[:3])}"
            f"{'...' if len(where) > 3 else ''}{placed}, e.g. {first.run.ref.key}; this command puts them at "
            f"{first.here.where} ({first.here.options})")
    why = _no_relocate(target)
    if why is not None:
        return UsageError(f"{head}: repeat the options that placed them (--relocate is not available: {why})")
    return UsageError(f"{head}: {how} to move them there (loaded, validated, then the old copies deleted), or "
                      "repeat the options that placed them")


def _no_relocate(target: str) -> str | None:
    """Why a target that finds copies elsewhere cannot delete them (None: it can, or it has one place only)."""
    plugin = target_plugin(target)
    if plugin.copies is None or plugin.delete_copy is not None:
        return None
    return plugin.no_relocate or f"{target} cannot delete a copy of a run"


def check_relocate(target: str) -> None:
    """`--relocate` for a target that cannot delete the old copies: refused before anything is written."""
    why = _no_relocate(target)
    if why is not None:
        raise UsageError(f"--relocate is not available for --to {target}: {why}")


def remove_elsewhere(target: Any, run: ArchivedRun, here: str, migration: str) -> list[Copy]:
    """Delete every copy this migration made of `run` outside `here` (once the copy at `here` validated)."""
    plugin = target_plugin(target.name)
    if plugin.copies is None or plugin.delete_copy is None:
        return []
    gone = [c for c in plugin.copies(target, run.ref) if c.where != here and c.ours(migration)]
    for copy in gone:
        plugin.delete_copy(target, copy)
    return gone


__all__ = ["Elsewhere", "Gap", "check_relocate", "describe_part", "filters", "find_elsewhere", "gap", "held_parts",
           "parts", "placement", "record", "refusal", "remove_elsewhere"]
