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
from datetime import UTC, datetime
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

def run_tags(run: ArchivedRun) -> list[str]:
    """Neptune's non-empty tags, and the run's identity as a tag (`neptune-run:<run key>`)."""
    return sorted({t for t in run.atom_value("sys/tags") or [] if t} | {TAG_PREFIX + run.ref.key})


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
