"""How a Neptune atom's value is written into a W&B run's config (docs/wandb.md, config).

One encoder for the writer (folder.py) and the verifier (verify.py): validation expects exactly this.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any


def config_value(type_: str, value: Any) -> Any:
    """The JSON value an atom has in the config: datetimes as ISO-8601 UTC with `Z`, string sets sorted, and
    non-finite floats as the strings `NaN` / `Infinity` / `-Infinity` (W&B's config is strict JSON)."""
    if type_ == "datetime" and isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if type_ == "string_set":
        return sorted(value or [])
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value).replace("inf", "Infinity").replace("nan", "NaN")
    return value
