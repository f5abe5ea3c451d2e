"""Where each Neptune value lands in a comet_ml offline experiment archive (docs/comet.md): the pure rules shared by
the writer and the verifier, so the verifier recomputes the expected side from the archive instead of trusting what
the writer wrote.

The archive is comet_ml's own offline format (`comet_ml/offline.py`, its schemas in `comet_ml/schemas/`): a zip
holding `experiment.json` (ids, project, start and stop time, tags), `messages.json` (one JSON message a line) and
one member per uploaded file, named by the `file_path` of its `file_upload` message.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from neptune_migration.archive import ArchivedRun

EXPERIMENT_JSON = "experiment.json"
MESSAGES_JSON = "messages.json"
# Other values (`log_other`) holding the run's identity; Neptune's own paths never start with this.
IDENTITY = "neptune_migration/"
RUN_KEY = IDENTITY + "run_key"
MAPPING_KEY = IDENTITY + "mapping_version"
STEP_SCALES = IDENTITY + "step_decimals"
TAG_PREFIX = "neptune-run:"
INT64_MAX = 2**63 - 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
SERIES_WITH_STEPS = ("float_series", "string_series", "histogram_series", "file_series")
FAILED_MESSAGE = "Neptune run failed (sys/failed is True)"


def offline_id(run_key: str) -> str:
    """The archive's experiment id (32 hex characters, the shape of a Comet experiment key): the same for a run on
    every attempt, so a rerun finds its archive by name."""
    return hashlib.sha256(run_key.encode()).hexdigest()[:32]


def archive_name(run_key: str) -> str:
    return f"{offline_id(run_key)}.zip"


def project_name(neptune_project: str, override: str | None) -> str:
    """Comet project names are lower case letters, digits, `-` and `_`."""
    if override:
        return override
    return re.sub(r"[^a-z0-9_-]+", "-", neptune_project.lower()).strip("-") or "neptune-migration"


def file_id(experiment: str, n: int) -> str:
    """An asset's id, the same on every attempt (comet_ml draws a random one)."""
    return hashlib.sha256(f"{experiment}\0{n}".encode()).hexdigest()[:32]


# -- steps: a per-series power of ten, as the Aim target does -------------------------------------------------------
def exact_step(step: Decimal | None, step_exact: float | None) -> Decimal:
    """A Neptune step as an exact decimal: the archive's float when decimal(18, 6) could not hold it."""
    if step_exact is not None:
        return Decimal(repr(step_exact))
    return Decimal(0) if step is None else step


def _decimals(step: Decimal) -> int:
    exponent = step.normalize().as_tuple().exponent
    return max(0, -int(exponent)) if isinstance(exponent, int) else 0


def step_decimals(steps: Iterable[Decimal]) -> int:
    """The power of ten that makes every step of a series an integer within int64, as far as it can (then rounded)."""
    needed, largest = 0, Decimal(0)
    for step in steps:
        needed = max(needed, _decimals(step))
        largest = max(largest, abs(step))
    while needed > 0 and largest.scaleb(needed) > INT64_MAX:
        needed -= 1
    return needed


def comet_step(step: Decimal, decimals: int) -> tuple[int, bool]:
    """(Comet step, rounded?) of a Neptune step at its series' scale."""
    scaled = step.scaleb(decimals)
    whole = int(scaled.to_integral_value())
    clamped = max(min(whole, INT64_MAX), -INT64_MAX - 1)
    return clamped, clamped != scaled


def ms_of(value: datetime | None, default: int) -> int:
    if value is None:
        return default
    return round(value.astimezone(UTC).timestamp() * 1000)


# -- values ---------------------------------------------------------------------------------------------------------
def number(value: float) -> float | str:
    """A float as comet_ml writes it into messages.json: NaN and infinities as the strings its encoder writes."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def param_value(type_: str, value: Any) -> tuple[Any, str | None]:
    """(Comet parameter or other value, approximation kind or None) of a Neptune atom. Comet's values are a number,
    a string, a boolean or null."""
    if type_ == "datetime" and isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"), \
            "comet_datetime_as_text"
    if type_ == "string_set":
        return json.dumps(sorted(value or []), ensure_ascii=False), "comet_string_set_as_json_text"
    if isinstance(value, float):
        return number(value), None
    return value, None


def value_key(value: Any) -> Any:
    """A value as comparable data: floats by their repr (-0.0 apart from 0.0), numbers apart from booleans."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return ("f", repr(value))
    if isinstance(value, int):
        return ("i", value)
    return value


# -- names ----------------------------------------------------------------------------------------------------------
def run_name(run: ArchivedRun) -> str:
    return run.ref.run_id


def run_tags(run: ArchivedRun) -> list[str]:
    """Neptune's non-empty tags, and the run's identity as a tag (`neptune-run:<run key>`)."""
    return sorted({t for t in run.atom_value("sys/tags") or [] if t} | {TAG_PREFIX + run.ref.key})


def dropped_tags(run: ArchivedRun) -> int:
    return sum(1 for t in run.atom_value("sys/tags") or [] if not t)


def step_label(step: Decimal | None, step_exact: float | None) -> str:
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


def asset_name(path: str, type_: str, step: Decimal | None, step_exact: float | None, entry: str) -> str:
    """The Comet file name of one payload file: `<attribute path>/[step_<step>/]<entry>`."""
    folder = f"{path}/step_{step_label(step, step_exact)}" if type_ == "file_series" else path
    return f"{folder}/{entry}"


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def decodable_image(path: Path) -> bool:
    """Whether a file named like an image is one (Pillow, when installed, decodes it); else it stays an asset."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return True
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
    return True


def histogram_metadata(hist: dict[str, Any]) -> dict[str, Any]:
    """Neptune's exact histogram, kept in the metadata of its Comet histogram (whose own bins are fixed)."""
    return {"neptune_type": hist.get("type") or "", "edges": [number(float(e)) for e in hist.get("edges") or []],
            "values": [number(float(v)) for v in hist.get("values") or []]}
