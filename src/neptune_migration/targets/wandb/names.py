"""Pure naming rules for W&B: projects, run ids, metric keys and tags (documented in docs/wandb.md)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

# W&B refuses these in project names; we also drop whitespace so names stay URL-friendly.
_PROJECT_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
_RUN_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")
# Metric keys keep `/` (W&B groups panels by it); `.` is refused because W&B reads it as nesting.
_KEY_BAD = re.compile(r"[^A-Za-z0-9_/-]")
MAX_TAG = 64
MAX_PROJECT = 128
# Keys we write ourselves next to the user's metrics; a Neptune path mapping to one of them is renamed.
STEP_KEY = "neptune_step"
RESERVED_KEYS = frozenset({STEP_KEY, "neptune_migration"})


def _digest(text: str, n: int) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=n).hexdigest()


def project_name(neptune_project: str, prefix: str = "") -> str:
    """`workspace/project` -> `<prefix>project`: the project part, unsafe characters replaced by `-`."""
    base = neptune_project.rsplit("/", 1)[-1]
    name = _PROJECT_BAD.sub("-", prefix + base).strip("-.") or "neptune"
    if len(name) > MAX_PROJECT:
        name = name[: MAX_PROJECT - 9] + "-" + _digest(neptune_project, 4)
    return name


def run_id(run_key: str, generation: str | None = None) -> str:
    """A W&B run id derived only from the run key: readable part + a digest that keeps ids apart.

    `generation` (e.g. the Neptune modification time of a re-exported run) yields a fresh id, since W&B
    never lets a deleted id be reused soon.
    """
    readable = _RUN_ID_BAD.sub("-", run_key.rsplit("/", 1)[-1]).strip("-")[:40] or "run"
    seed = run_key if generation is None else f"{run_key}\x00{generation}"
    return f"{readable}-{_digest(seed, 5)}"


def clean_key(path: str) -> str:
    key = _KEY_BAD.sub("_", path)
    if key.startswith("_"):
        key = "n" + key  # `_step`, `_timestamp`, `_runtime`... belong to W&B
    return key or "n_"


def metric_keys(paths: Iterable[str]) -> dict[str, str]:
    """Map attribute paths to W&B keys; names colliding after cleaning (case-insensitive, as W&B compares
    them) all survive: the first path in sorted order keeps the clean key, later ones get a suffix."""
    taken: set[str] = {k.lower() for k in RESERVED_KEYS}
    out: dict[str, str] = {}
    for path in sorted(set(paths)):
        key = clean_key(path)
        if key.lower() in taken:
            key = f"{key}__{_digest(path, 3)}"
            n = 2
            while key.lower() in taken:
                key = f"{clean_key(path)}__{_digest(path, 3)}_{n}"
                n += 1
        taken.add(key.lower())
        out[path] = key
    return out


def artifact_name(wandb_run_id: str, key: str) -> str:
    """Artifact names allow letters, digits, `-`, `_` and `.`: one artifact per run and attribute."""
    return f"run-{wandb_run_id}-" + re.sub(r"[^A-Za-z0-9_.-]", "-", key)


def tags(values: Iterable[str]) -> tuple[list[str], int]:
    """W&B tags are 1-64 characters: empty tags are dropped, long ones cut. Returns (tags, changed count);
    the full Neptune tags stay in the config."""
    out: list[str] = []
    changed = 0
    for tag in sorted(set(values)):
        if not tag.strip():
            changed += 1
            continue
        if len(tag) > MAX_TAG:
            tag = tag[: MAX_TAG - 7] + "~" + _digest(tag, 3)
            changed += 1
        if tag not in out:
            out.append(tag)
    return out, changed
