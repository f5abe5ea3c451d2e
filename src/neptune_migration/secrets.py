"""Keeping tokens out of everything we write: logs, reports, the ledger and error messages."""

from __future__ import annotations

import os
import re
import threading
from typing import Any

_ENV_SECRETS = (
    "NEPTUNE_API_TOKEN",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
_registered: set[str] = set()
_lock = threading.Lock()
# Bearer tokens and JWTs can appear in error texts produced by HTTP libraries.
_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)((?:api[_-]?key|token|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',&]{4,}"),
]


def register(secret: str | None) -> None:
    """Remember a secret that did not come from the usual environment variables (e.g. read from a file)."""
    if secret and len(secret) >= 4:
        with _lock:
            _registered.add(secret)


def _known() -> list[str]:
    values = {os.environ.get(name, "") for name in _ENV_SECRETS}
    with _lock:
        values |= _registered
    return sorted((v for v in values if len(v) >= 4), key=len, reverse=True)


def redact(text: str) -> str:
    for secret in _known():
        if secret in text:
            text = text.replace(secret, "***")
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


def redact_tree(value: Any) -> Any:
    """Every string inside a JSON-like value redacted (redacting the JSON text could break its quoting)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    return value
