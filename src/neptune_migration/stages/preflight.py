"""Preflight: the usage errors a command can find before it writes anything.

A command checks, in this order: options that conflict (`check_options`), the archive it reads (`check_archive`:
it exists, holds runs, and has a files root when its runs reference files) or writes (`check_output`), and the
ledger's path (`check_state`). The API then builds the target and calls its check. Only after all of these is a
store, a ledger, an archive folder or a run created, so a mistyped command leaves nothing behind. Each failure is
one line naming the option at fault.
"""

from __future__ import annotations

import os
from pathlib import Path

from neptune_migration.archive import Archive
from neptune_migration.archive.reader import part_number, references_files
from neptune_migration.archive.storage import DIR, FILE, Storage, StoragePath, is_remote
from neptune_migration.errors import MigrationError, UsageError
from neptune_migration.ledger import default_state_path, is_database_uri
from neptune_migration.selection import Selection
from neptune_migration.vocabulary import folder_name

_SQLITE_HEADER = b"SQLite format 3\x00"


def state_of(state: str | Path | None) -> str | Path | None:
    """`--state` as given, else $NEPTUNE_MIGRATION_STATE; None means the default file."""
    return state if state is not None else (os.environ.get("NEPTUNE_MIGRATION_STATE") or None)


def check_options(cluster: str | None, state: str | Path | None) -> None:
    """Options that cannot go together, whatever the archive or target."""
    uri = state_of(state)
    if cluster is not None and (uri is None or not is_database_uri(str(uri))):
        raise UsageError("--cluster needs the ledger in PostgreSQL, where every worker records its runs: "
                         "--state postgresql://USER:PASSWORD@HOST:PORT/DB")


def check_archive(archive: str | Path, files: str | Path | None, selection: Selection) -> None:
    """The archive to read exists, holds runs of the selected projects, and has a files root when those runs
    reference files. Reads folder listings, parquet footers and the file columns only."""
    found = _open(archive, None, "--archive")
    if files is not None:
        found = _open(archive, files, "--files")
    parts = _parts(found, selection)
    if not parts:
        raise UsageError(f"--archive {archive} holds no runs: expected one folder per project with "
                         "<run>_part_0.parquet files in it, or the data/ and files/ of `neptune-migrate export`")
    if found.files_root is None and _wants_files(selection):
        for part in parts:
            if references_files(found.storage, part):
                raise UsageError(
                    f"--files is needed: run {part.name.rsplit('_part_', 1)[0]} in --archive {archive} references "
                    "files, and a neptune-exporter archive keeps them in a separate files root; pass --files DIR "
                    "(or --exclude files to leave them out)")


def check_output(archive: str | Path) -> None:
    """An archive to write (export, migrate): a folder or an object-store prefix, not an existing file."""
    if is_remote(str(archive)):
        return
    path = Path(archive)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--archive {path} is a file, not a folder")
    _creatable(path, "--archive")


def check_state(state: str | Path | None, must_exist: bool = False) -> None:
    """The ledger's path: a PostgreSQL URI (checked when opened), or a SQLite file that is one or can be created."""
    given = state_of(state)
    if given is not None and is_database_uri(str(given)):
        return
    text = str(given) if given is not None else ""
    if text.split(":", 1)[0].lower() in ("s3", "gs", "gcs") and ":/" in text:
        raise UsageError("--state must be a local file: the ledger never lives on object storage "
                         "(the archive can; see docs/object-storage.md)")
    path = Path(given) if given is not None else default_state_path()
    if path.is_dir():
        raise UsageError(f"--state {path} is a folder: name the ledger file, for example --state {path / 'state.db'}")
    if path.exists():
        _refuse_non_ledger(path)
        return
    if must_exist:
        raise UsageError(f"no ledger at {path}: nothing has run yet (or pass --state)")
    _creatable(path.parent, "--state")


def _open(archive: str | Path, files: str | Path | None, option: str) -> Archive:
    try:
        return Archive(str(archive), str(files) if files is not None else None)
    except MigrationError as exc:
        raise type(exc)(f"{option}: {exc}") from None


def _parts(archive: Archive, selection: Selection) -> list[StoragePath]:
    """Every run part of the selected projects' folders (each run's part_0 first)."""
    storage = archive.storage
    projects = [p for p, kind in storage.listdir(archive.data_root) if kind == DIR]
    if selection.projects:
        by_folder = {p.name: p for p in projects}
        missing = [p for p in selection.projects if folder_name(p) not in by_folder]
        if missing:
            raise UsageError(f"--project: project {missing[0]!r} is not in the archive (projects there: "
                             f"{_project_ids(storage, projects) or 'none'})")
        projects = [by_folder[folder_name(p)] for p in selection.projects]
    found: list[tuple[int, StoragePath]] = []
    for project in projects:
        found += [(n, p) for p, kind in storage.listdir(project)
                  if kind == FILE and (n := part_number(p.name)) is not None]
    return [p for _, p in sorted(found, key=lambda x: (x[0], str(x[1])))]


def _project_ids(storage: Storage, projects: list[StoragePath]) -> str:
    """The projects' real ids (folder names are one-way), from one row of one part in each."""
    ids = []
    for project in projects:
        part = next((p for p, kind in storage.listdir(project) if kind == FILE and part_number(p.name) == 0), None)
        if part is None:
            continue
        try:
            pf = storage.open_parquet(part)
            batch = next(pf.iter_batches(batch_size=1, columns=["project_id"]), None)
        except Exception:  # a damaged part: the load itself reports it against its run
            continue
        if batch is not None and batch.num_rows:
            ids.append(str(batch.column(0)[0].as_py()))
    return ", ".join(sorted(set(ids)))


def _wants_files(selection: Selection) -> bool:
    if "files" in selection.exclude_classes:
        return False
    return not selection.include_classes or "files" in selection.include_classes


def _refuse_non_ledger(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise UsageError(f"--state {path}: cannot read it ({exc.strerror})") from None
    if head and head != _SQLITE_HEADER:
        raise UsageError(f"--state {path} is not a ledger (not a SQLite file); name a new file or an existing "
                         "ledger")


def _creatable(path: Path, option: str) -> None:
    """The nearest existing folder above `path` can take new entries."""
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: cannot create it, {existing} is not writable")
