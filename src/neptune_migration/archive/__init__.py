"""Archives in neptune-exporter's layout: the hand-off point between sources and targets."""

from neptune_migration.archive.reader import Archive, ArchivedRun, ArchiveScan, Atom, IncompleteRun, UnreadableRun
from neptune_migration.archive.storage import archive_location, is_remote
from neptune_migration.archive.writer import ArchiveWriter, RunWriter

__all__ = [
    "Archive",
    "ArchiveScan",
    "ArchiveWriter",
    "ArchivedRun",
    "Atom",
    "IncompleteRun",
    "RunWriter",
    "UnreadableRun",
    "archive_location",
    "is_remote",
]
