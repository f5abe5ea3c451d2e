"""Where each Neptune value lands in an Aim run (docs/aim.md): the pure rules shared by the loader and the verifier,
so the verifier recomputes the expected side from the archive instead of trusting what the loader wrote.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun

# The run param holding the run's identity and load state; Neptune's own paths all contain a `/` or start with
# `sys`, so a top-level key without one cannot collide with an attribute.
STATE_KEY = "neptune_migration"
COMPLETE = "complete"
LOADING = "loading"
# The Aim folder holding the file payloads, inside the repository folder (`<repo>/<ARTIFACTS_DIR>/<run hash>/...`).
ARTIFACTS_DIR = "neptune-artifacts"
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
    """The power of ten that makes every step of a series an integer that fits Aim's int64 step, as far as it can:
    the decimals the steps need, lowered until the largest scaled step fits (then steps are rounded)."""
    needed, largest = 0, Decimal(0)
    for step in steps:
        needed = max(needed, _decimals(step))
        largest = max(largest, abs(step))
    while needed > 0 and largest.scaleb(needed) > INT64_MAX:
        needed -= 1
    return needed


def aim_step(step: Decimal, decimals: int) -> tuple[int, bool]:
    """(Aim step, rounded?) of a Neptune step at a series' scale."""
    scaled = step.scaleb(decimals)
    whole = int(scaled.to_integral_value())
    clamped = max(min(whole, INT64_MAX), -INT64_MAX - 1)
    return clamped, clamped != scaled


def seconds(ms: int) -> float:
    """Aim's point time (float seconds since the epoch) of a millisecond timestamp; `round(s * 1000)` gives it back."""
    return ms / 1000.0


def ms_of(value: datetime | None, default: int) -> int:
    if value is None:
        return default
    return round(value.astimezone(UTC).timestamp() * 1000)


def param_value(type_: str, value: Any) -> tuple[Any, str | None]:
    """(Aim param value, approximation kind or None) of a Neptune atom."""
    if type_ == "datetime" and isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"), \
            "aim_datetime_param_as_text"
    if type_ == "string_set":
        return sorted(value or []), None
    return value, None


def value_key(value: Any) -> Any:
    """A value as comparable data: floats by their bits (NaN equal to NaN, -0.0 apart from 0.0)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return ("nan",) if math.isnan(value) else ("f", struct.pack("<d", value))
    if isinstance(value, list | tuple):
        return [value_key(v) for v in value]
    return value


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


def artifact_name(path: str, type_: str, step: Decimal | None, step_exact: float | None, entry: str) -> str:
    """The artifact name of one payload file: `<attribute path>/[step_<step>/]<entry>`."""
    folder = f"{path}/step_{step_label(step, step_exact)}" if type_ == "file_series" else path
    return f"{folder}/{entry}"


def even_edges(edges: list[float], bins: int) -> bool:
    """Whether Aim's evenly spaced bins from the first to the last edge are exactly a histogram's edges."""
    import numpy as np

    return len(edges) == bins + 1 and bool(np.array_equal(np.linspace(edges[0], edges[-1], num=bins + 1),
                                                              np.asarray(edges)))


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def decodable_image(path: Path) -> bool:
    """Whether Aim can make an image of a file (Aim decodes with Pillow, its own dependency): a file named `.png`
    that is not one stays a file only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
    return True


def run_name(run: ArchivedRun) -> str:
    return run.ref.run_id


def experiment_name(run: ArchivedRun) -> str:
    """Aim's experiment of a run: its Neptune project."""
    return run.ref.project_id


def run_tags(run: ArchivedRun) -> list[str]:
    """Neptune's tags as Aim tags (Aim keeps a tag once and refuses an empty name)."""
    return sorted({t for t in run.atom_value("sys/tags") or [] if t})


def dropped_tags(run: ArchivedRun) -> int:
    return sum(1 for t in run.atom_value("sys/tags") or [] if not t)
