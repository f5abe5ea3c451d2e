"""Pure functions that turn Neptune values and names into what MLflow accepts (docs/mlflow.md is the table)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np

from neptune_migration.naming import fit_length

MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_EXPERIMENT_NAME = 500
INT64_MAX = 2**63 - 1

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_DOTS_ONLY = re.compile(r"^\.+$")


def sanitize_key(name: str) -> str:
    """A Neptune attribute path as an MLflow param/metric/tag key: `/` kept, anything MLflow rejects replaced.

    MLflow allows `^[/\\w.\\- :]*$` and refuses keys that normalise to another path (`/a`, `a/`, `a//b`, `a/./b`).
    """
    segments = []
    for seg in name.split("/"):
        seg = _BAD_KEY_CHARS.sub("_", seg)
        if seg == "":
            continue
        if _DOTS_ONLY.match(seg):
            seg = seg.replace(".", "_")
        segments.append(seg)
    key = "/".join(segments) or "_"
    return fit_length(key, MAX_KEY_LENGTH)


def metric_key(name: str) -> str:
    """Like `sanitize_key`; Neptune's `monitoring/*` goes to `system/*`, which MLflow shows as system metrics."""
    if name.startswith("monitoring/"):
        name = "system/" + name[len("monitoring/") :]
    return sanitize_key(name)


def param_text(type_: str, value: Any) -> str:
    """The text an atom has as a param: ints stay ints, floats round-trip, datetimes are ISO-8601."""
    if type_ == "int":
        return str(int(value))
    if type_ == "float":
        return _float_text(float(value))
    if type_ == "bool":
        return "True" if value else "False"
    if type_ == "datetime":
        return iso(value)
    if type_ == "string_set":
        return ",".join(sorted(value))
    return str(value)


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def truncate_with_marker(text: str, limit: int, where: str) -> str:
    marker = f"... [truncated from {len(text)} chars; full value in artifact {where}]"
    return text[: max(0, limit - len(marker))] + marker


_ARTIFACT_ESCAPES = {"~": "~7E", "#": "~23", "?": "~3F", "%": "~25"}


def artifact_name(segment: str) -> str:
    """Encode the characters the MLflow server changes in artifact names (`#`, `?`, `%`) reversibly."""
    return "".join(_ARTIFACT_ESCAPES.get(ch, ch) for ch in segment)


def decimals_needed(micros: np.ndarray) -> np.ndarray:
    """For each step given in millionths, how many decimal places it needs (0 for whole steps, up to 6)."""
    needed = np.full(micros.shape, 6, dtype=np.int8)
    for j in range(1, 7):
        needed[micros % (10**j) == 0] = 6 - j
    return needed


def exact_decimals(step: float) -> int:
    """Decimal places of a float step as written (shortest repr), for steps outside decimal(18, 6)."""
    exponent = Decimal(repr(step)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def scale_micros(micros: np.ndarray, decimals: int) -> np.ndarray:
    """Steps in millionths -> integers scaled by 10**decimals, exactly (the caller checked divisibility)."""
    if decimals <= 6:
        return micros // (10 ** (6 - decimals))
    factor = 10 ** (decimals - 6)
    if micros.size and np.abs(micros).max() > INT64_MAX // factor:
        raise OverflowError("step beyond int64 after scaling")
    return micros * factor


def scale_exact(step: float, decimals: int) -> int:
    scaled = Decimal(repr(step)) * (Decimal(10) ** decimals)
    if scaled != scaled.to_integral_value():
        raise ArithmeticError(f"step {step!r} is not a multiple of 10^-{decimals}")
    value = int(scaled)
    if abs(value) > INT64_MAX:
        raise OverflowError(f"step {step!r} scaled by 10^{decimals} is beyond int64")
    return value
