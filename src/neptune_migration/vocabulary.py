"""The shared vocabulary: run identity, attribute types, the archive's Arrow schema, and step rules.

The archive schema is neptune-exporter's (see docs/archive.md); a few extra nullable columns carry what
its schema cannot hold. Every reader accepts archives without the extra columns.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pyarrow as pa

# The eleven Neptune attribute types, as neptune-exporter names them...
ATOM_TYPES = ("float", "int", "string", "bool", "datetime", "string_set")
SERIES_TYPES = ("float_series", "string_series", "histogram_series")
FILE_TYPES = ("file", "file_series")
ATTRIBUTE_TYPES = ATOM_TYPES + SERIES_TYPES + FILE_TYPES
# ...plus the two that only Neptune 2.x has (neptune-exporter writes them from the 2.x client).
FILE_SET = "file_set"
ARTIFACT = "artifact"
ALL_TYPES = (*ATTRIBUTE_TYPES, FILE_SET, ARTIFACT)
FILE_LIKE_TYPES = ("file", "file_series", FILE_SET, ARTIFACT)

# What `--include` / `--exclude` name: the user's words for groups of attribute types.
CLASSES: dict[str, tuple[str, ...]] = {
    "params": ATOM_TYPES,
    "metrics": ("float_series",),
    "series": ("string_series", "histogram_series"),
    "files": FILE_LIKE_TYPES,
}

STEP_TYPE = pa.decimal128(18, 6)
TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")
HISTOGRAM_TYPE = pa.struct(
    [("type", pa.string()), ("edges", pa.list_(pa.float64())), ("values", pa.list_(pa.float64()))]
)

EXPORTER_FIELDS = [
    pa.field("project_id", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("attribute_path", pa.string()),
    pa.field("attribute_type", pa.string()),
    pa.field("step", STEP_TYPE),
    pa.field("timestamp", TIMESTAMP_TYPE),
    pa.field("int_value", pa.int64()),
    pa.field("float_value", pa.float64()),
    pa.field("string_value", pa.string()),
    pa.field("bool_value", pa.bool_()),
    pa.field("datetime_value", TIMESTAMP_TYPE),
    pa.field("string_set_value", pa.list_(pa.string())),
    pa.field("file_value", pa.struct([("path", pa.string())])),
    pa.field("histogram_value", HISTOGRAM_TYPE),
]
# Columns we add where the exporter's schema cannot hold the truth. All nullable, all optional on read.
EXTRA_FIELDS = [
    # The step as Neptune sent it, set only when decimal(18, 6) cannot hold it exactly.
    pa.field("step_exact", pa.float64()),
    pa.field("is_preview", pa.bool_()),
    pa.field("completion_ratio", pa.float64()),
    pa.field("file_name", pa.string()),
    pa.field("file_size", pa.int64()),
    pa.field("file_mime", pa.string()),
    pa.field("file_sha256", pa.string()),
]
EXPORTER_SCHEMA = pa.schema(EXPORTER_FIELDS)
ARCHIVE_SCHEMA = pa.schema(EXPORTER_FIELDS + EXTRA_FIELDS)


@dataclass(frozen=True, order=True)
class RunRef:
    """A run's identity everywhere: the ledger key, the target's lookup tag, the archive's columns."""

    project_id: str
    run_id: str

    @property
    def key(self) -> str:
        return f"{self.project_id}/{self.run_id}"


def folder_name(identifier: str) -> str:
    """neptune-exporter's folder name for a project or run id: readable, filesystem-safe and unique.

    Every character is kept if it is alphanumeric (Unicode-aware), `_` or `-`; the rest become `_`;
    then a short blake2b digest of the original keeps distinct ids apart.
    """
    readable = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in identifier)
    digest = hashlib.blake2b(identifier.encode("utf-8"), digest_size=8).hexdigest()
    return f"{readable}-{digest}"


_MICRO = Decimal("0.000001")


def step_to_decimal(step: float) -> tuple[Decimal, float | None]:
    """Split a Neptune step into decimal(18, 6) and, if that loses anything, the exact float."""
    if not math.isfinite(step):
        raise ValueError(f"step {step!r} is not a finite number")
    dec = Decimal(repr(step)).quantize(_MICRO) if abs(step) < 1e12 else None
    if dec is not None and float(dec) == step:
        return dec, None
    # Out of decimal(18, 6) range or more than 6 decimals: keep the nearest decimal and the exact float.
    clamped = max(min(step, 999_999_999_999.0), -999_999_999_999.0)
    return Decimal(repr(clamped)).quantize(_MICRO), step


def file_part(path: str, step: Any, name: str | None) -> str:
    """One archived file as the ledger records what a target run holds: attribute, step and name. The load stage
    and the targets build it from the same archive row, so the two always agree."""
    return f"{path}\x1f{'' if step is None else step}\x1f{name or ''}"
