"""Where each Neptune value lands in an Aim run (docs/aim.md): the pure rules shared by the loader and the verifier,
so the verifier recomputes the expected side from the archive instead of trusting what the loader wrote.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
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

def seconds(ms: int) -> float:
    """Aim's point time (float seconds since the epoch) of a millisecond timestamp; `round(s * 1000)` gives it back."""
    return ms / 1000.0


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


def even_edges(edges: list[float], bins: int) -> bool:
    """Whether Aim's evenly spaced bins from the first to the last edge are exactly a histogram's edges."""
    import numpy as np

    return len(edges) == bins + 1 and bool(np.array_equal(np.linspace(edges[0], edges[-1], num=bins + 1),
                                                              np.asarray(edges)))


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


def experiment_name(run: ArchivedRun) -> str:
    """Aim's experiment of a run: its Neptune project."""
    return run.ref.project_id


def run_tags(run: ArchivedRun) -> list[str]:
    """Neptune's tags as Aim tags (Aim keeps a tag once and refuses an empty name)."""
    return sorted({t for t in run.atom_value("sys/tags") or [] if t})


