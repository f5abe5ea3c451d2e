"""What to migrate: the selection options every command that reads runs shares (sources and archives alike).

`Selection` is built once from the command line and checked up front, so a typo in a regex or a date
is a one-line error before any data moves.
"""

from __future__ import annotations

import fnmatch
import mimetypes
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from neptune_migration.errors import UsageError
from neptune_migration.options import option
from neptune_migration.vocabulary import CLASSES

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
          "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}


def compile_regex(pattern: str | None, option: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"{option}: invalid regular expression {pattern!r}: {exc}") from None


def parse_date(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option}: expected a date like 2024-01-31 or 2024-01-31T12:00:00Z, got {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_size(text: str | None, option: str = "--max-file-size") -> int | None:
    if text is None:
        return None
    m = _SIZE.match(text)
    unit = (m.group(2) or "").upper() if m else ""
    if not m or unit not in _UNITS:
        raise UsageError(f"{option}: expected a size like 500MB, 2GiB or 1048576, got {text!r}")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_classes(values: Sequence[str], option: str) -> set[str]:
    out = set()
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if name not in CLASSES:
                raise UsageError(f"{option}: unknown class {name!r}; choose from {', '.join(CLASSES)}")
            out.add(name)
    return out


@dataclass
class SelectionOptions:
    """The selection as the user states it: the same options on every command that reads runs."""

    project: list[str] = option((), short="-p", help="Neptune project id WS/PROJ to include (repeatable). Default: "
                                "all (or $NEPTUNE_PROJECT at a source).")
    runs: str | None = option(help="Regex on run ids (3.x custom run id, 2.x sys/id).")
    experiments: str | None = option(help="Regex on experiment names (sys/name).")
    since: str | None = option(help="Only runs created at or after this date (ISO-8601).")
    until: str | None = option(help="Only runs created at or before this date (ISO-8601).")
    tag: list[str] = option((), help="Only runs with this tag (repeatable; any of them).")
    all_tags: bool = option(False, help="With --tag: require every tag, not any.")
    attributes: str | None = option(help="Regex: only attributes whose path matches.")
    exclude_attributes: str | None = option(help="Regex: leave out attributes whose path matches.")
    include: list[str] = option((), help="Only these classes: params, metrics, series, files (repeatable).")
    exclude: list[str] = option((), help="Leave out these classes: params, metrics, series, files (repeatable).")
    limit: int | None = option(help="At most this many runs.")
    include_archived: bool = option(False, help="Also migrate archived and trashed runs.")
    max_file_size: str | None = option(help="Skip files larger than this (e.g. 500MB, 2GiB).")
    file_types: list[str] = option((), help="Only files with these extensions or MIME patterns (png,jpg or image/*).")
    file_pattern: str | None = option(help="Only files whose name (or path/name) matches this glob.")

    def build(self) -> Selection:
        """The checked selection (a bad regex, date or size is a one-line UsageError naming its option)."""
        def many(value: Sequence[str] | str) -> list[str]:
            return [value] if isinstance(value, str) else list(value or ())

        return Selection.from_options(
            projects=many(self.project), runs=self.runs, experiments=self.experiments, since=self.since,
            until=self.until, tags=many(self.tag), all_tags=self.all_tags, attributes=self.attributes,
            exclude_attributes=self.exclude_attributes, include=many(self.include), exclude=many(self.exclude),
            limit=self.limit, include_archived=self.include_archived, max_file_size=self.max_file_size,
            file_types=many(self.file_types), file_pattern=self.file_pattern)


@dataclass
class Selection:
    projects: list[str] = field(default_factory=list)
    runs: re.Pattern[str] | None = None
    experiments: re.Pattern[str] | None = None
    since: datetime | None = None
    until: datetime | None = None
    tags: list[str] = field(default_factory=list)
    all_tags: bool = False
    attributes: re.Pattern[str] | None = None
    exclude_attributes: re.Pattern[str] | None = None
    include_classes: set[str] = field(default_factory=set)
    exclude_classes: set[str] = field(default_factory=set)
    limit: int | None = None
    include_archived: bool = False
    max_file_size: int | None = None
    file_types: list[str] = field(default_factory=list)
    file_pattern: str | None = None

    @classmethod
    def from_options(
        cls,
        projects: Sequence[str] = (),
        runs: str | None = None,
        experiments: str | None = None,
        since: str | None = None,
        until: str | None = None,
        tags: Sequence[str] = (),
        all_tags: bool = False,
        attributes: str | None = None,
        exclude_attributes: str | None = None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        limit: int | None = None,
        include_archived: bool = False,
        max_file_size: str | None = None,
        file_types: Sequence[str] = (),
        file_pattern: str | None = None,
    ) -> Selection:
        if limit is not None and limit < 1:
            raise UsageError(f"--limit must be at least 1, got {limit}")
        sel = cls(
            projects=list(projects),
            runs=compile_regex(runs, "--runs"),
            experiments=compile_regex(experiments, "--experiments"),
            since=parse_date(since, "--since"),
            until=parse_date(until, "--until"),
            tags=list(tags),
            all_tags=all_tags,
            attributes=compile_regex(attributes, "--attributes"),
            exclude_attributes=compile_regex(exclude_attributes, "--exclude-attributes"),
            include_classes=parse_classes(include, "--include"),
            exclude_classes=parse_classes(exclude, "--exclude"),
            limit=limit,
            include_archived=include_archived,
            max_file_size=parse_size(max_file_size),
            file_types=[t.strip().lower().lstrip(".") for v in file_types for t in v.split(",") if t.strip()],
            file_pattern=file_pattern,
        )
        if sel.since and sel.until and sel.since > sel.until:
            raise UsageError("--since is later than --until: nothing can match")
        return sel

    # -- runs -------------------------------------------------------------------------------------------
    def matches_run(self, project_id: str, run_id: str, atoms: dict[str, Any]) -> bool:
        """Whether a run is selected, given its ids and its atoms ({path: value})."""
        if self.projects and project_id not in self.projects:
            return False
        if self.runs and not self.runs.search(run_id):
            return False
        if self.experiments and not self.experiments.search(str(atoms.get("sys/name") or "")):
            return False
        created = atoms.get("sys/creation_time")
        if (self.since or self.until) and created is None:
            return False
        if self.since and created < self.since:
            return False
        if self.until and created > self.until:
            return False
        if self.tags:
            have = set(atoms.get("sys/tags") or [])
            wanted = set(self.tags)
            if (self.all_tags and not wanted <= have) or (not self.all_tags and not wanted & have):
                return False
        return self.include_archived or not (atoms.get("sys/archived") or atoms.get("sys/trashed"))

    @property
    def needs_atoms(self) -> bool:
        return True  # archived/trashed runs are excluded by default, which needs the atoms

    # -- attributes -------------------------------------------------------------------------------------
    def wants_attribute(self, path: str, type_: str) -> bool:
        if path.startswith("sys/"):
            return True  # run metadata is never filtered away: targets need it for identity and state
        if self.attributes and not self.attributes.search(path):
            return False
        if self.exclude_attributes and self.exclude_attributes.search(path):
            return False
        classes = {name for name, types in CLASSES.items() if type_ in types}
        if self.include_classes and not classes & self.include_classes:
            return False
        return not (self.exclude_classes and classes & self.exclude_classes)

    def wants_file(self, path: str, name: str, size: int) -> bool:
        if self.max_file_size is not None and size > self.max_file_size:
            return False
        if self.file_types:
            ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            mime = (mimetypes.guess_type(name)[0] or "").lower()
            if not any(t == ext or (("/" in t) and fnmatch.fnmatch(mime, t)) for t in self.file_types):
                return False
        return not (
            self.file_pattern
            and not fnmatch.fnmatch(name, self.file_pattern)
            and not fnmatch.fnmatch(f"{path}/{name}", self.file_pattern)
        )
