"""Which entries a file attribute's payload becomes in its W&B artifact (docs/wandb.md, files).

Shared by the writer (folder.py) and the verifier (verify.py), so both agree on entry names and digests.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from neptune_migration.paths import safe_relpath


def payload_entries(source: Path, file_name: str | None) -> Iterator[tuple[Path, str]]:
    """A payload is a file, or a folder (2.x file sets, 3.x series folders): every file under it, with its
    entry name. Links are skipped so nothing outside the archive is uploaded."""
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.is_file() and not p.is_symlink():
                yield p, safe_relpath(p.relative_to(source).as_posix())
    else:
        yield source, safe_relpath(file_name or source.name).replace("/", "_")


def step_label(step: Decimal, exact: float | None) -> str:
    """The `step_<label>/` folder of one step of a file series: the exact float when the archive kept one."""
    if exact is not None:
        return repr(exact)
    return format(step.normalize(), "f")


def md5_b64(path: Path) -> str:
    """A file's MD5 as W&B's artifact manifests spell it (base64)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode("ascii")
