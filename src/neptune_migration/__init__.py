"""neptune-migration: move Neptune experiment history into MLflow or Weights & Biases, and prove nothing was lost.

    import neptune_migration as nm
    nm.load(archive="./archive", to="mlflow", mlflow_tracking_uri="http://127.0.0.1:5000")
    print(nm.validate(archive="./archive", to="mlflow", mlflow_tracking_uri="http://127.0.0.1:5000").ok)

See docs/python-api.md. Importing this package imports no client library (mlflow, wandb, neptune): a target's
or a source's libraries load when a call uses it.
"""

from neptune_migration._version import __version__
from neptune_migration.api import (
    DiscoverResult,
    ExportResult,
    LoadResult,
    MigrationResult,
    RetryResult,
    StatusResult,
    ValidationResult,
    discover,
    export,
    load,
    migrate,
    retry,
    status,
    validate,
)
from neptune_migration.errors import ArchiveError, Interrupted, MigrationError, TargetError, UsageError
from neptune_migration.selection import Selection, SelectionOptions

__all__ = [
    "ArchiveError",
    "DiscoverResult",
    "ExportResult",
    "Interrupted",
    "LoadResult",
    "MigrationError",
    "MigrationResult",
    "RetryResult",
    "Selection",
    "SelectionOptions",
    "StatusResult",
    "TargetError",
    "UsageError",
    "ValidationResult",
    "__version__",
    "discover",
    "export",
    "load",
    "migrate",
    "retry",
    "status",
    "validate",
]
