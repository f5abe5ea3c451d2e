"""Name rules shared by targets: sanitising is a pure function, and collisions never merge two attributes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable


def short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def fit_length(name: str, limit: int) -> str:
    """Cut a name to `limit` characters, keeping it unique with a hash of the whole name."""
    if len(name) <= limit:
        return name
    suffix = "_" + short_hash(name)
    return name[: limit - len(suffix)] + suffix


def resolve_collisions(
    originals: Iterable[str], sanitize: Callable[[str], str], fold: Callable[[str], str] | None = None
) -> dict[str, str]:
    """Map each original name to a sanitised one, unique within the set.

    A name the target accepts as it is keeps it. The others follow in sorted order, so the result does not
    depend on the order rows arrived in: the first keeps the plain sanitised form, a later one that collides
    gets `_<hash of original>`. `fold` says when the target holds two names as one (a case-insensitive database
    collation): names that fold alike collide even when they differ, and the first in sorted order keeps its name.
    """
    same = fold or _identity
    names = sorted(set(originals))
    out: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        if sanitize(name) == name and same(name) not in taken:
            out[name] = name
            taken.add(same(name))
    for original in names:
        if original in out:
            continue
        name = sanitize(original)
        if same(name) in taken:
            name = sanitize(f"{name}_{short_hash(original, 6)}")
            while same(name) in taken:  # practically unreachable; keeps the guarantee unconditional
                name = sanitize(f"{name}_{short_hash(name, 6)}")
        taken.add(same(name))
        out[original] = name
    return out


def _identity(name: str) -> str:
    return name
