"""Helpers the source tests share: a digest of an archive's content and the ledger's count of exported runs."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from neptune_migration.archive import Archive


def archive_digest(root: Path) -> dict[str, str]:
    """Per run, a hash of every row (file paths left out: they name folders, not content). Equal digests mean
    equal archives, whatever order the rows were written in."""
    out = {}
    for run in Archive(root).scan().runs:
        rows = run.table().drop_columns(["file_value"]).to_pylist()
        rows.sort(key=lambda r: json.dumps(r, default=str, sort_keys=True))
        out[run.ref.key] = hashlib.sha256(json.dumps(rows, default=str, sort_keys=True).encode()).hexdigest()
    return out


def exported_runs(state: Path) -> int:
    """Runs the ledger records as exported; 0 while the ledger does not exist yet or is locked for a moment."""
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM progress WHERE stage='export' AND status='done'").fetchone()[0]
    except sqlite3.Error:
        return 0
