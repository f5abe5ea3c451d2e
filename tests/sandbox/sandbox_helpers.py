"""Small helpers shared by the sandbox test modules."""

from __future__ import annotations

from typing import Any

import pytest


def ok(results: dict[str, Any], name: str) -> Any:
    """A client call's result, failing the test with the client's traceback if it raised."""
    value = results[name]
    if isinstance(value, Exception):
        pytest.fail(f"{name} raised in the client:\n{value}")
    return value
