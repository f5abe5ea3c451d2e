"""What the bulk path's database writers share with its target (`bulk`): the pinned schema, the progress tag,
one chunk of rows and the session every writer offers (`bulk_sqlite`, `bulk_postgres`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from neptune_migration.errors import TargetError
from neptune_migration.targets.mlflow.loader import MetricColumns

# The alembic heads (mlflow/store/db_migrations/versions) of the MLflow clients the bulk tests run: the schemas the
# inserts were checked on. A store is also at our client's own head (store_schema.py), so this list only grows with
# the client range in pyproject.toml; the tables are checked as well (`TABLES`), whatever the revision says.
SCHEMA_REVISIONS = {"dc11669786a5": "3.17.2", "f4a9b2c7d1e6": "3.18.0"}
# What the writers insert and upsert, and the keys their conflict rules rely on: every column of `metrics` is its
# primary key (an exact repeat is dropped), `latest_metrics` and `tags` are keyed by (key, run_uuid).
TABLES = {
    "metrics": ({"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
                {"key", "value", "timestamp", "step", "is_nan", "run_uuid"}),
    "latest_metrics": ({"key", "value", "timestamp", "step", "is_nan", "run_uuid"}, {"key", "run_uuid"}),
    "tags": ({"key", "value", "run_uuid"}, {"key", "run_uuid"}),
}
MAX_DOUBLE = 1.7976931348623157e308
CHECKPOINT_KEY = "bulk_rows_done"
PROGRESS_TAG = "neptune.bulk_rows"


@dataclass
class Chunk:
    """Rows [start:stop) of one archive batch, as stored (`value` clamped, NaN as 0 with `is_nan`), with their
    effect on `latest_metrics` ({key: (step, timestamp, value, is_nan)})."""

    run_id: str
    cols: MetricColumns
    value: np.ndarray
    is_nan: np.ndarray
    start: int
    stop: int
    latest: dict[str, tuple[int, int, float, int]]

    @property
    def size(self) -> int:
        return self.stop - self.start


class BulkSession(Protocol):
    """One connection of the bulk writer; used by one thread at a time."""

    def progress(self, run_id: str) -> str | None: ...

    def has_points(self, run_id: str) -> bool: ...

    def write(self, chunk: Chunk, progress: tuple[int, int] | None) -> int:
        """The chunk's rows, its latest values and, unless `progress` is None, the progress tag, in one
        transaction; returns the rows the primary key dropped as exact repeats. `progress` is (archive rows done
        with this chunk, repeats dropped before it): the tag is `progress_value(...)` of them and this chunk's."""
        ...

    def stored_counts(self, run_id: str) -> dict[str, int]: ...

    def latest_stored(self, run_id: str) -> dict[str, tuple[int, int]]: ...

    def close(self) -> None: ...


class BulkStore(Protocol):
    uri: str  # the user's tracking URI
    client_uri: str  # what MLflow's client opens (PostgreSQL: the same, naming our sessions)

    def check_before_open(self) -> None:
        """Refuse a store MLflow should not even open for us (another schema, another writer)."""
        ...

    def check_opened(self) -> None:
        """After MLflow's client created or opened it: the schema is the pinned one."""
        ...

    def session(self) -> BulkSession:
        """A connection for one run's points; refuses (TargetError) while another writer is connected."""
        ...


def progress_value(progress: tuple[int, int], dropped: int) -> str:
    rows_done, ignored_before = progress
    return f"{rows_done}:{ignored_before + dropped}"


def accepted() -> str:
    return ", ".join(f"{rev} (MLflow {version})" for rev, version in SCHEMA_REVISIONS.items())


def refuse_schema(where: str, found: str | None) -> TargetError:
    return TargetError(
        f"MLflow bulk path refused: {where} has schema version {found or 'none'}, this tool writes only "
        f"{accepted()}; load without the bulk option"
    )


def check_schema(where: str, found: str | None) -> None:
    if found not in SCHEMA_REVISIONS:
        raise refuse_schema(where, found)


def check_tables(client_uri: str, where: str) -> None:
    """Refuse a store whose tables lack a column the writers insert or a key their conflict rules rely on: what
    the SQL is written against, checked on the store itself rather than trusted from its revision."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(client_uri, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            found = sqlalchemy.inspect(conn)
            for table, (columns, key) in TABLES.items():
                has = {c["name"] for c in found.get_columns(table)}
                keyed = set(found.get_pk_constraint(table).get("constrained_columns") or ())
                if not columns <= has or keyed != key:
                    raise TargetError(
                        f"MLflow bulk path refused: {where}'s table {table} has columns {sorted(has)} keyed by "
                        f"{sorted(keyed)}, this tool writes {sorted(columns)} keyed by {sorted(key)}; load without "
                        "the bulk option"
                    )
    except sqlalchemy.exc.NoSuchTableError as exc:
        raise TargetError(f"MLflow bulk path refused: {where} has no table {exc}; load without the bulk option") \
            from None
    finally:
        engine.dispose()


