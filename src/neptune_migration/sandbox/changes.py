"""Change a project while the sandbox serves it: what a team still logging to Neptune does during a migration.

    with Sandbox([project]) as sb:
        ...                                   # a first migration
        sb.changes.append("ws/proj", "run-1", "train/loss", [(100, 0.1), (101, 0.09)])
        sb.changes.add_run("ws/proj", "run-9", experiment_name="exp")
        sb.changes.set("ws/proj", "run-1", "params/lr", 0.02)
        sb.changes.add_file("ws/proj", "run-1", "checkpoints/best", b"...", "best.pt")
        sb.changes.rewrite("ws/proj", "run-1", "train/acc", [(0, 0.5)])   # history no append can reach
        sb.changes.start("ws/proj", "run-1")  ...  sb.changes.finish("ws/proj", "run-1")   # live, then done
        ...                                   # `migrate --sync`

Every change bumps the run's `sys/modification_time` (and `sys/ping_time`) past its previous value, as Neptune
does, and is visible to both API layers at once (3.x addresses runs by custom run id, 2.x by sys/id: both are
accepted here). Requests read the model without locks, so changes are copy-on-write: a series gets a new list,
an attribute a new object, a file its storage path before the run can be seen. A request already being answered
sees the state before or after a change, never half of one.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterable
from typing import Any

from neptune_migration.sandbox.store import Store
from neptune_migration.sandbox.world import (
    SERIES_TYPES,
    Attribute,
    FileValue,
    Histogram,
    Point,
    Run,
    _safe_name,
    from_ms,
    infer_type,
    normalise_atom,
    to_ms,
)

PointLike = Point | tuple[float, Any] | tuple[float, Any, int]


class Changes:
    """Mutations of a served project, for tests and demos (`Sandbox.changes`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()  # changes are serialised among themselves; readers never wait

    # -- lookups ----------------------------------------------------------------------------------------
    def run(self, project_id: str, run_id: str) -> Run:
        """A run by custom run id (3.x) or sys/id (2.x)."""
        project = self.store.projects.get(project_id)
        if project is None:
            raise KeyError(f"project {project_id} is not served")
        run = project.run_by_custom_id(run_id) or project.run_by_sys_id(run_id)
        if run is None:
            raise KeyError(f"run {run_id} is not in {project_id}")
        return run

    # -- changes ----------------------------------------------------------------------------------------
    def append(
        self, project_id: str, run_id: str, path: str, points: Iterable[PointLike], type_: str = "float_series"
    ) -> list[Point]:
        """Append points (steps must follow the series' last step); a new series is created. Points are
        `Point`s, `(step, value)` (timestamped now, one millisecond apart) or `(step, value, timestamp_ms)`."""
        if type_ not in SERIES_TYPES or type_ == "file_series":
            raise ValueError(f"append takes float, string or histogram series, not {type_}")
        with self._lock:
            run = self.run(project_id, run_id)
            added = _points(points, type_)
            attr = run.attributes.get(path)
            old = list(attr.value) if attr is not None else []
            if attr is not None and attr.type != type_:
                raise TypeError(f"{path} is {attr.type}, not {type_}")
            last = old[-1].step if old else None
            for p in added:
                if last is not None and not p.step > last:
                    raise ValueError(f"{path}: step {p.step} does not follow {last}")
                last = p.step
            run.attributes[path] = Attribute(path, type_, old + added)
            self._touch(run, max((p.timestamp_ms for p in added), default=None))
            return added

    def rewrite(
        self, project_id: str, run_id: str, path: str, points: Iterable[PointLike], type_: str | None = None
    ) -> None:
        """Replace a series' history (fewer points, steps starting over): what no append can produce."""
        with self._lock:
            run = self.run(project_id, run_id)
            attr = run.attributes.get(path)
            type_ = type_ or (attr.type if attr is not None else "float_series")
            new = _points(points, type_)
            run.attributes[path] = Attribute(path, type_, new)
            self._touch(run, max((p.timestamp_ms for p in new), default=None))

    def set(self, project_id: str, run_id: str, path: str, value: Any, type_: str | None = None) -> None:
        """Set an atom (a param, `sys/tags`, `sys/description`, `sys/failed`, ...)."""
        type_ = type_ or infer_type(value)
        if type_ in SERIES_TYPES or type_ == "file":
            raise ValueError(f"set takes atoms; use append or add_file for {type_}")
        with self._lock:
            run = self.run(project_id, run_id)
            run.attributes[path] = Attribute(path, type_, normalise_atom(type_, value))
            self._touch(run)

    def start(self, project_id: str, run_id: str) -> None:
        """The run is live: a training process writes to it (`sys/state` active, as Neptune shows it)."""
        self.set(project_id, run_id, "sys/state", "active", "string")

    def finish(self, project_id: str, run_id: str) -> None:
        """The training process stopped: `sys/state` inactive."""
        self.set(project_id, run_id, "sys/state", "inactive", "string")

    def delete(self, project_id: str, run_id: str, path: str) -> None:
        """Remove an attribute (`del run[path]` in the clients)."""
        with self._lock:
            run = self.run(project_id, run_id)
            attrs = dict(run.attributes)
            attrs.pop(path)
            run.attributes = attrs
            self._touch(run)

    def add_file(
        self, project_id: str, run_id: str, path: str, data: bytes, name: str, step: float | None = None,
        mime_type: str = "",
    ) -> FileValue:
        """Set a file attribute (replacing its payload), or with `step` append to a file series."""
        with self._lock:
            project = self.store.projects[project_id]
            run = self.run(project_id, run_id)
            fv = FileValue(data, name, mime_type)
            # A fresh storage path per change: a client holding the old signed URL still gets the old bytes.
            suffix = "" if step is None else f"/step_{float(step)!r}"
            fv.path = f"{project.project_id}/{run.sys_id}/{path}{suffix}/v{time.monotonic_ns()}/{_safe_name(name)}"
            self.store.files[fv.path] = fv  # downloadable before any listing can name it
            if step is None:
                run.attributes[path] = Attribute(path, "file", fv)
            else:
                attr = run.attributes.get(path)
                old = list(attr.value) if attr is not None else []
                if old and not float(step) > old[-1].step:
                    raise ValueError(f"{path}: step {step} does not follow {old[-1].step}")
                stamp = _now_ms(run)
                run.attributes[path] = Attribute(path, "file_series", [*old, Point(float(step), fv, stamp)])
            self._touch(run)
            return fv

    def add_run(self, project_id: str, custom_run_id: str, **kwargs: Any) -> Run:
        """A new run (keywords of `Project.new_run`; `creation_time` defaults to now). Fill it with the other
        changes, or build it fully first with `Run.log`/`Run.set` on the returned object before any sync."""
        with self._lock:
            project = self.store.projects[project_id]
            kwargs.setdefault("creation_time", from_ms(_wall_ms()))
            run = project.new_run(custom_run_id, **kwargs)
            return run

    # -- internals --------------------------------------------------------------------------------------
    @staticmethod
    def _touch(run: Run, newest: int | None = None) -> None:
        """sys/modification_time moves forward on every change, even two within one millisecond."""
        previous = run.attributes.get("sys/modification_time")
        before = to_ms(previous.value) if previous is not None else 0
        stamp = max(before + 1, _wall_ms(), newest or 0)
        when = from_ms(stamp)
        run.attributes["sys/modification_time"] = Attribute("sys/modification_time", "datetime", when)
        run.attributes["sys/ping_time"] = Attribute("sys/ping_time", "datetime", when)


def _wall_ms() -> int:
    return to_ms(dt.datetime.now(dt.UTC))


def _now_ms(run: Run) -> int:
    previous = run.attributes.get("sys/modification_time")
    return max(_wall_ms(), (to_ms(previous.value) + 1) if previous is not None else 0)


def _points(points: Iterable[PointLike], type_: str) -> list[Point]:
    out: list[Point] = []
    stamp = _wall_ms()
    for p in points:
        if isinstance(p, Point):
            out.append(p)
            continue
        step, value, *rest = p
        if type_ == "float_series":
            value = float(value)
        elif type_ == "histogram_series" and not isinstance(value, Histogram):
            raise TypeError("histogram points need a Histogram value")
        ts = int(rest[0]) if rest else stamp + len(out)
        out.append(Point(float(step), value, ts))
    return out
