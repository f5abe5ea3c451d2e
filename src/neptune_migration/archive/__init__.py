"""Archives in neptune-exporter's layout: the hand-off point between sources and targets."""

from .reader import Archive, ArchivedRun, ArchiveScan, Atom, IncompleteRun
from .storage import archive_location, is_remote
from .writer import ArchiveWriter, RunWriter

__all__ = [
    "Archive",
    "ArchiveScan",
    "ArchiveWriter",
    "ArchivedRun",
    "Atom",
    "IncompleteRun",
    "RunWriter",
    "archive_location",
    "is_remote",
]
