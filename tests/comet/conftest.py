"""Shared by the Comet target's tests: comet_ml itself must be installed (the `[comet]` extra)."""

from __future__ import annotations

import pytest

pytest.importorskip("comet_ml", reason="the Comet target's tests need the [comet] extra")
