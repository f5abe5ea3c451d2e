"""One step scale per metric key across an MLflow experiment, so that runs drawn together line up.

MLflow steps are integers; a Neptune series with fractional steps is logged at `step * 10**d`. If each run chose
its own `d`, a half-epoch run (x10) and a quarter-epoch run (x100) of the same metric would be drawn a factor of
ten apart. So the experiment holds the scale of each key (tags `neptune.step_scale`, `.1`, `.2`, ... holding one
JSON object {metric key: 10**d}; only keys with d > 0), every run logs that key at that scale, and the scale only
ever grows: the smallest power of ten that makes every step of the key integral in every run loaded so far.

A run loaded while the experiment's scale for one of its keys was smaller is stale: its run tag
`neptune.step_scale` says so. The loader replaces such a run when it is loaded again, the load and migrate stages
reload the stale runs they can, and validation flags the others.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neptune_migration.targets.base import LoadResult
from neptune_migration.targets.mlflow.mapping import SCALE_ARTIFACT, SCALE_IN_ARTIFACT, SCALE_TAG
from neptune_migration.vocabulary import RunRef

EXPERIMENT_SCALE_TAG = "neptune.step_scale"
# MLflow's limit on an experiment tag's value is 5000 characters; the JSON is cut into tags well inside it.
_CHUNK = 4000
_MAX_CHUNKS = 1000
_ATTEMPTS = 5


def decode(tags: dict[str, str]) -> dict[str, int]:
    """{metric key: decimals} from an experiment's tags (nothing recorded: every key at scale 1)."""
    text = ""
    for i in range(_MAX_CHUNKS):
        part = tags.get(EXPERIMENT_SCALE_TAG if i == 0 else f"{EXPERIMENT_SCALE_TAG}.{i}")
        if part is None:
            break
        text += part
    if not text:
        return {}
    try:
        scales = json.loads(text)
    except json.JSONDecodeError:
        return {}  # a torn write of another version: treated as unscaled, and raised again below
    return {key: _decimals(int(scale)) for key, scale in scales.items()}


def encode(decimals: dict[str, int]) -> dict[str, str]:
    text = json.dumps({k: 10**d for k, d in sorted(decimals.items()) if d}, sort_keys=True)
    chunks = [text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK)] or ["{}"]
    return {EXPERIMENT_SCALE_TAG if i == 0 else f"{EXPERIMENT_SCALE_TAG}.{i}": c for i, c in enumerate(chunks)}


def _decimals(scale: int) -> int:
    d = len(str(scale)) - 1
    if scale <= 0 or 10**d != scale:
        raise ValueError(f"step scale {scale} is not a power of ten")
    return d


@dataclass
class StepPlan:
    """One run's metrics: {attribute path: decimals its steps are scaled by}, {path: MLflow key}, and the keys whose
    experiment-wide scale this run raised (earlier runs holding them are now stale)."""

    decimals: dict[str, int]
    names: dict[str, str]
    raised: dict[str, int]

    @property
    def run_tag(self) -> dict[str, int]:
        """{MLflow key: scale} for the scaled keys, as the run tag `neptune.step_scale` holds it."""
        return {self.names[p]: 10**d for p, d in sorted(self.decimals.items()) if d}

    def record(self, result: LoadResult) -> None:
        scaled = sum(1 for d in self.decimals.values() if d)
        if scaled:
            result.approx("series_with_scaled_steps", scaled)


def run_scales(mlflow_run: Any, client: Any) -> dict[str, int]:
    """{MLflow key: scale} a loaded run says its points were logged at ({} for none). Anything unreadable gives a
    plan no real one equals, so the run is replaced rather than trusted."""
    text = mlflow_run.data.tags.get(SCALE_TAG)
    if text == SCALE_IN_ARTIFACT:
        try:
            with tempfile.TemporaryDirectory(prefix="neptune-migrate-") as tmp:
                local = client.download_artifacts(mlflow_run.info.run_id, SCALE_ARTIFACT, tmp)
                text = Path(local).read_text(encoding="utf-8")
        except Exception:  # not uploaded yet: the run is incomplete
            return _UNREADABLE
    if not text:
        return {}
    try:
        return {k: int(v) for k, v in json.loads(text).items()}
    except (ValueError, AttributeError):
        return _UNREADABLE


_UNREADABLE = {"": 0}


class ExperimentScales:
    """The experiments' step scales as this target instance knows them; raised with a read-modify-write under a
    lock (the experiment lease already keeps other processes out of an experiment this one writes)."""

    def __init__(self, client: Any, retry: Callable[[Callable[[], Any]], Any]) -> None:
        self.client = client
        self.retry = retry
        self._known: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def read(self, experiment_id: str, fresh: bool = False) -> dict[str, int]:
        with self._lock:
            if fresh or experiment_id not in self._known:
                self._known[experiment_id] = self._fetch(experiment_id)
            return dict(self._known[experiment_id])

    def raise_to(self, experiment_id: str, wanted: dict[str, int]) -> dict[str, int]:
        """Make every key's scale at least `wanted`'s; returns the keys whose scale this call raised and their new
        decimals (empty when the experiment already covers them).

        Writers sharing one experiment claim (a cluster's drivers and workers) can raise the same experiment at
        the same moment: a tag insert that loses that race fails in MLflow's store, and a write based on an older
        read can undo another's raise. So the tag is read back after writing and written again until it covers
        `wanted`; a raise still lost to a writer that read before it shows in validation as a `step_scale`
        mismatch, which `retry` repairs."""
        raised: dict[str, int] = {}
        with self._lock:
            for attempt in range(_ATTEMPTS):
                exp = self.retry(lambda: self.client.get_experiment(experiment_id))
                current = decode(dict(exp.tags))
                missing = {k: d for k, d in wanted.items() if d > current.get(k, 0)}
                if not missing:
                    self._known[experiment_id] = current
                    return raised
                raised |= missing
                merged = current | missing
                old_chunks = sum(1 for t in exp.tags if t == EXPERIMENT_SCALE_TAG
                                 or t.startswith(EXPERIMENT_SCALE_TAG + "."))
                tags = encode(merged)
                try:
                    # Later chunks first: a reader between two writes sees the old head, never a torn new one.
                    for name, value in sorted(tags.items(), reverse=True):
                        self.retry(lambda n=name, v=value: self.client.set_experiment_tag(experiment_id, n, v))
                    for i in range(len(tags), old_chunks):
                        self.retry(lambda n=f"{EXPERIMENT_SCALE_TAG}.{i}":
                                   self.client.delete_experiment_tag(experiment_id, n))
                except Exception:
                    if attempt == _ATTEMPTS - 1:
                        raise
                    time.sleep(0.2 * (attempt + 1))  # another writer's insert won: read theirs, merge, write
            # Written as often as allowed, never yet read back covering `wanted`: keep what the experiment holds.
            self._known[experiment_id] = self._fetch(experiment_id)
            return raised

    def _fetch(self, experiment_id: str) -> dict[str, int]:
        exp = self.retry(lambda: self.client.get_experiment(experiment_id))
        return decode(dict(exp.tags))

    def stale_runs(self, experiment_id: str, raised: dict[str, int], run_scales: Callable[[Any], dict[str, int]],
                   skip: Iterable[str] = ()) -> list[RunRef]:
        """Runs of the experiment that hold one of the `raised` keys at a smaller scale than it now has."""
        skip = set(skip)
        stale = []
        token = None
        while True:
            page = self.retry(lambda t=token: self.client.search_runs(
                [experiment_id], max_results=1000, page_token=t))
            for run in page:
                if run.info.run_id in skip:
                    continue
                mine = run_scales(run)
                if any(key in run.data.metrics and mine.get(key, 1) < 10**d for key, d in raised.items()):
                    tags = run.data.tags
                    if "neptune.project" in tags and "neptune.run_id" in tags:
                        stale.append(RunRef(tags["neptune.project"], tags["neptune.run_id"]))
            token = page.token
            if not token:
                return stale
