"""Shared by the Aim target's tests: aim itself must be installed (the `[aim]` extra)."""

from __future__ import annotations

import pytest

pytest.importorskip("aim", reason="the Aim target's tests need the [aim] extra")
