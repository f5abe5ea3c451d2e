"""CLI commands for validation and repair: `validate` and `retry` (registered on the main app)."""

from __future__ import annotations
