"""What a validation found for one run: the vocabulary shared by the validate stage and every target's verifier.

A target's verifier turns one archived run into a `RunCheck`: what was compared, every mismatch naming the run,
the Neptune attribute and what differs, and the documented approximations counted apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from neptune_migration.archive import ArchivedRun
from neptune_migration.selection import Selection
from neptune_migration.vocabulary import RunRef

# What a run's validation ends as (report.json `runs[].status`).
VALIDATED, MISMATCHED, ERROR = "validated", "mismatch", "error"
# Mismatches kept per run in the ledger and the report; the count is always exact.
MAX_MISMATCHES_KEPT = 200
# Examples a mismatch's text names (steps, points); the counts beside them are always complete.
EXAMPLES = 5


@dataclass
class Mismatch:
    """One difference between the archive and the target. `attribute` is the Neptune path (or `run`)."""

    attribute: str
    kind: str
    detail: str
    target_key: str | None = None
    expected: Any = None
    actual: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in asdict(self).items()}


# A copy of the run outside the place the command asks for (another MLflow experiment, another W&B project):
# `load --relocate` moves it (docs/validation.md).
ELSEWHERE = "run_elsewhere"


@dataclass
class RunCheck:
    """The outcome of reading one run back and comparing it with the archive."""

    ref: RunRef
    target_id: str | None = None
    # What was compared: params, tags, metric_series, points, series_artifacts, series_points, files, bytes.
    checked: dict[str, int] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)
    mismatch_count: int = 0
    approximations: dict[str, int] = field(default_factory=dict)
    # Things the target holds that the archive does not explain (not losses, but worth a look).
    warnings: list[str] = field(default_factory=list)
    # sha256 over every compared value, in a fixed order: equal digests mean equal data.
    digests: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.error is not None:
            return ERROR
        return MISMATCHED if self.mismatch_count else VALIDATED

    def count(self, what: str, n: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + n

    def approx(self, kind: str, n: int = 1) -> None:
        if n:
            self.approximations[kind] = self.approximations.get(kind, 0) + n

    def mismatch(self, attribute: str, kind: str, detail: str, target_key: str | None = None,
                 expected: Any = None, actual: Any = None) -> None:
        self.mismatch_count += 1
        if len(self.mismatches) < MAX_MISMATCHES_KEPT:
            self.mismatches.append(Mismatch(attribute, kind, detail, target_key, expected, actual))

    def summary_line(self) -> str:
        """One line for `status` and the error report: the first few mismatches, each naming its attribute."""
        if self.error is not None:
            return self.error
        shown = "; ".join(f"{m.attribute}: {m.detail}" for m in self.mismatches[:3])
        more = f"; and {self.mismatch_count - 3} more" if self.mismatch_count > 3 else ""
        return f"{self.mismatch_count} mismatch(es): {shown}{more}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "project_id": self.ref.project_id,
            "run_id": self.ref.run_id,
            "status": self.status,
            "target_id": self.target_id,
            "checked": dict(sorted(self.checked.items())),
            "mismatch_count": self.mismatch_count,
            "mismatches": [m.to_dict() for m in self.mismatches],
            "approximations": dict(sorted(self.approximations.items())),
            "warnings": list(self.warnings),
            "digests": dict(sorted(self.digests.items())),
            "error": self.error,
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunCheck:
        check = cls(RunRef(data["project_id"], data["run_id"]), data.get("target_id"))
        check.checked = dict(data.get("checked") or {})
        check.mismatches = [Mismatch(**m) for m in data.get("mismatches") or []]
        check.mismatch_count = int(data.get("mismatch_count") or len(check.mismatches))
        check.approximations = dict(data.get("approximations") or {})
        check.warnings = list(data.get("warnings") or [])
        check.digests = dict(data.get("digests") or {})
        check.error = data.get("error")
        check.seconds = float(data.get("seconds") or 0.0)
        return check


class Verifier(Protocol):
    """A target's read-back: compares one archived run with what the target holds."""

    def verify(self, run: ArchivedRun, selection: Selection) -> RunCheck: ...

    def discard(self, run: ArchivedRun) -> int:
        """Remove the target's copy of a run that holds wrong data, so `retry` loads it afresh; returns how many
        target runs were removed (0 where the target resumes instead, as W&B does)."""
        ...

    def close(self) -> None: ...


# -- text helpers the verifiers share for mismatch details and digests ---------------------------------------
def short(value: Any, limit: int = 120) -> str:
    """A value as text for a mismatch detail, cut so one huge param does not flood the report."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def examples(items: Iterable[str]) -> str:
    """The first `EXAMPLES` items, joined, and how many more there are."""
    items = list(items)
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")


def canonical(obj: Any) -> str:
    """One spelling per JSON value (sorted keys, no spaces), so equal data compares and digests equal."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=True, separators=(",", ":"), default=str)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
