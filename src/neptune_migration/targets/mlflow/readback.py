"""Metric points read back in batches from an MLflow store opened in-process (`sqlite:///`, `postgresql://`,
`mysql://`): one query per run for all its keys, through a session of MLflow's own `SqlAlchemyStore`.

MLflow's `get_metric_history` costs a request (or a query) and an entity object per point, per key; a run of many
keys or points was read back more slowly than the bulk path had written it. Here a run's points come back as one
result set, turned into numpy columns per key. A run holding more points than `MAX_POINTS_PER_QUERY` is read key
by key instead, so memory holds one key's points beside the archive's, as before. Stores behind a tracking server
(REST) are not reachable this way; `verify` keeps reading those key by key over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# About 100 MB of Python rows at the peak of one query.
MAX_POINTS_PER_QUERY = 2_000_000

Columns = tuple[np.ndarray, np.ndarray, np.ndarray]  # steps (int64), timestamps (int64), values (float64, NaN kept)


def empty_columns() -> Columns:
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64)


class MetricReader:
    """Reads through the client's store when it is MLflow's SQLAlchemy store; `batched` says whether it is."""

    def __init__(self, client: Any) -> None:
        store = client._tracking_client.store  # MLflow exposes its store no other way
        self._store = store if hasattr(store, "ManagedSessionMaker") and hasattr(store, "engine") else None

    @property
    def batched(self) -> bool:
        return self._store is not None

    def run(self, run_id: str, keys: Iterable[str], expected_points: int = 0) -> dict[str, Columns]:
        """Every stored point of the run's metrics `keys` ({key: columns}; a key with no point is absent)."""
        wanted = list(keys)
        if not wanted:
            return {}
        if expected_points > MAX_POINTS_PER_QUERY and len(wanted) > 1:
            out: dict[str, Columns] = {}
            for key in wanted:
                out.update(self._query(run_id, [key]))
            return out
        return self._query(run_id, wanted)

    def _query(self, run_id: str, keys: list[str]) -> dict[str, Columns]:
        from mlflow.store.tracking.dbmodels.models import SqlMetric
        from sqlalchemy import select

        assert self._store is not None
        stmt = select(SqlMetric.key, SqlMetric.step, SqlMetric.timestamp, SqlMetric.value, SqlMetric.is_nan).where(
            SqlMetric.run_uuid == run_id)
        if len(keys) == 1:
            stmt = stmt.where(SqlMetric.key == keys[0])
        with self._store.ManagedSessionMaker() as session:
            rows = session.execute(stmt).all()
        if not rows:
            return {}
        key_col, steps, stamps, values, nans = zip(*rows, strict=True)
        encoded = pc.dictionary_encode(pa.array(key_col, pa.string()))
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        steps_a = np.array(steps, dtype=np.int64)
        stamps_a = np.array(stamps, dtype=np.int64)
        values_a = np.array(values, dtype=np.float64)
        values_a[np.array(nans, dtype=bool)] = np.nan
        wanted = set(keys)
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        out = {}
        for rows_of_key in np.split(order, bounds):
            key = encoded.dictionary[int(codes[rows_of_key[0]])].as_py()
            if key in wanted:
                out[key] = (steps_a[rows_of_key], stamps_a[rows_of_key], values_a[rows_of_key])
        return out
