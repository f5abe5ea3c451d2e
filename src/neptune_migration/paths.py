"""Turning names that came from outside (archives, servers) into paths that cannot escape their root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from neptune_migration.errors import UnsafePathError

_FORBIDDEN_SEGMENTS = {"", ".", ".."}


def safe_segments(name: str) -> list[str]:
    """Split an attribute path or file name into path segments that are safe on any filesystem.

    `.`/`..`/empty segments and control characters are replaced, never interpreted, so
    `a/../../etc` becomes `a/_../_../etc`: readable, and still inside the root.
    """
    out = []
    for seg in name.replace("\\", "/").split("/"):
        seg = "".join(ch if ch.isprintable() else "_" for ch in seg)
        if seg in _FORBIDDEN_SEGMENTS:
            seg = "_" + seg
        # Most filesystems cap a name at 255 bytes.
        while len(seg.encode("utf-8")) > 200:
            seg = seg[:-1]
        out.append(seg)
    return out


def safe_relpath(name: str) -> str:
    return "/".join(safe_segments(name))


def resolve_inside(root: Path, relative: str) -> Path:
    """Resolve `relative` (as found in an archive) under `root`, refusing anything that leaves it.

    Absolute paths, `..` escapes and symlinks pointing outside the root are all refused.
    """
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or relative.startswith(("/", "\\")) or (len(relative) > 1 and relative[1] == ":"):
        raise UnsafePathError(f"refusing absolute path from archive: {relative!r}")
    if any(part == ".." for part in pure.parts):
        raise UnsafePathError(f"refusing path that leaves the archive: {relative!r}")
    root_resolved = root.resolve()
    candidate = (root_resolved / Path(*pure.parts)).resolve() if pure.parts else root_resolved
    if candidate != root_resolved and root_resolved not in candidate.parents:
        raise UnsafePathError(f"refusing path that leaves the archive through a link: {relative!r}")
    return candidate


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
