"""Rules shared by the targets that keep one tracker run per Neptune run with int64 steps and named files (Aim,
Comet): a Neptune step as an exact decimal and its per-series power-of-ten scale, millisecond times, the file names
of payloads, which files are pictures, and the run's tags. Pure functions: each target's loader and verifier read
them through its own `mapping` module, so both sides apply one rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun
from neptune_migration.selection import Selection
from neptune_migration.vocabulary import FILE_LIKE_TYPES

INT64_MAX = 2**63 - 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
SERIES_WITH_STEPS = ("float_series", "string_series", "histogram_series", "file_series")


def exact_step(step: Decimal | None, step_exact: float | None) -> Decimal:
    """A Neptune step as an exact decimal: the archive's float when decimal(18, 6) could not hold it."""
    if step_exact is not None:
        return Decimal(repr(step_exact))
    return Decimal(0) if step is None else step


def _decimals(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    return max(0, -int(exponent)) if isinstance(exponent, int) else 0


def step_decimals(steps: Iterable[Decimal]) -> int:
    """The power of ten that makes every step of a series an integer that fits an int64 step, as far as it can:
    the decimals the steps need, lowered until the largest scaled step fits (then steps are rounded)."""
    needed, largest = 0, Decimal(0)
    for step in steps:
        needed = max(needed, _decimals(step))
        largest = max(largest, abs(step))
    while needed > 0 and largest.scaleb(needed) > INT64_MAX:
        needed -= 1
    return needed


def scaled_step(step: Decimal, decimals: int) -> tuple[int, bool]:
    """(the target's int64 step, rounded?) of a Neptune step at a series' scale."""
    scaled = step.scaleb(decimals)
    whole = int(scaled.to_integral_value())
    clamped = max(min(whole, INT64_MAX), -INT64_MAX - 1)
    return clamped, clamped != scaled


def ms_of(value: datetime | None, default: int) -> int:
    if value is None:
        return default
    return round(value.astimezone(UTC).timestamp() * 1000)


def step_label(step: Decimal | None, step_exact: float | None) -> str:
    """The `step_<label>/` folder of one step of a file series: the exact step as Neptune had it."""
    if step_exact is not None:
        return repr(step_exact)
    return "none" if step is None else format(step.normalize(), "f")


def payload_entries(source: Path, file_name: str | None) -> list[tuple[Path, str]]:
    """A payload is a file, or a folder (2.x file sets, 3.x series folders): every file under it with its entry name
    (links skipped, so nothing outside the archive is copied)."""
    if source.is_dir():
        return [(p, p.relative_to(source).as_posix()) for p in sorted(source.rglob("*"))
                if p.is_file() and not p.is_symlink()]
    return [(source, (file_name or source.name).replace("/", "_"))]


def payload_name(path: str, type_: str, step: Decimal | None, step_exact: float | None, entry: str) -> str:
    """The target's name of one payload file: `<attribute path>/[step_<step>/]<entry>`."""
    folder = f"{path}/step_{step_label(step, step_exact)}" if type_ == "file_series" else path
    return f"{folder}/{entry}"


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def run_name(run: ArchivedRun) -> str:
    return run.ref.run_id


def dropped_tags(run: ArchivedRun) -> int:
    """Neptune tags no tracker keeps: the empty ones."""
    return sum(1 for t in run.atom_value("sys/tags") or [] if not t)


def selected_payloads(run: ArchivedRun, selection: Selection,
                      columns: list[str]) -> Iterator[tuple[dict[str, Any], Path, str, int, str]]:
    """Every payload file of the run the selection keeps, as the verifiers expect them: (the file row with
    `columns`, the local file, its entry name, its size, the target's name for it). Rows without a payload or
    whose payload is absent are passed over (the loader counted them as approximations)."""
    for row in run.table(FILE_LIKE_TYPES, columns).to_pylist():
        path, type_ = row["attribute_path"], row["attribute_type"]
        if not selection.wants_attribute(path, type_) or not (row["file_value"] or {}).get("path"):
            continue
        source = run.file_path(row["file_value"]["path"])
        if not source.exists():
            continue
        for local, entry in payload_entries(source, row["file_name"]):
            size = local.stat().st_size
            if selection.wants_file(path, entry, size):
                yield row, local, entry, size, payload_name(path, type_, row["step"], row["step_exact"], entry)
