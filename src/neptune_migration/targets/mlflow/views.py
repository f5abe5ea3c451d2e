"""What a person looks at beside the exact series artifacts: a string series as a plain-text log, a histogram
series drawn as one picture (the distribution over steps). Both are made from the finished, step-sorted
JSON-lines file, so they show exactly what validation checks; neither is read back as data.

The picture is a heat map of bin counts against step, each step scaled to its own largest bin so quiet steps stay
visible, with the median drawn over it (TensorBoard's distributions show the same). A long series is drawn from
at most `MAX_COLUMNS` evenly spaced steps, read in two streaming passes, so memory does not grow with the series.
"""

from __future__ import annotations

import json
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from neptune_migration.hashing import file_sha256
from neptune_migration.targets.mlflow.mapping import log_line

MAX_COLUMNS = 400
# Matplotlib is not thread-safe (its font cache and text layout are shared), and runs load on several threads.
_DRAW = threading.Lock()
ROWS = 120
# The PNG text chunk naming the JSON-lines file a picture was drawn from (its sha256), checked by validation.
SOURCE_KEY = "Source"


def write_log(jsonl: Path, log: Path) -> None:
    """The plain-text log of a string series: one `step<TAB>timestamp<TAB>text` line per point, in step order."""
    with open(jsonl, encoding="utf-8", newline="\n") as src, open(log, "w", encoding="utf-8", newline="\n") as out:
        for raw in _lines(src):
            out.write(log_line(json.loads(raw)))


def picture_source(jsonl_bytes_sha256: str, points: int) -> str:
    return f"sha256={jsonl_bytes_sha256} points={points}"


def render_histograms(jsonl: Path, png: Path, title: str) -> None:
    """Draw a histogram series (a step-sorted JSON-lines file) as one PNG."""
    count, low, high = _extent(jsonl)
    chosen = set(np.unique(np.linspace(0, count - 1, min(count, MAX_COLUMNS)).round().astype(np.int64)).tolist()) \
        if count else set()
    grid = np.linspace(low, high, ROWS + 1) if high > low else np.linspace(low - 0.5, low + 0.5, ROWS + 1)
    steps: list[float] = []
    columns: list[np.ndarray] = []
    medians: list[float] = []
    with open(jsonl, encoding="utf-8", newline="\n") as src:
        for index, raw in enumerate(_lines(src)):
            if index not in chosen:
                continue
            line = json.loads(raw)
            column, median = _rebin(line.get("value"), grid)
            steps.append(float(line["step"]) if line.get("step") is not None else float(index))
            columns.append(column)
            medians.append(median)

    digest = file_sha256(jsonl)
    with _DRAW:
        _draw(png, title, count, steps, columns, medians, grid, picture_source(digest, count))


def _draw(png: Path, title: str, count: int, steps: list[float], columns: list[np.ndarray], medians: list[float],
          grid: np.ndarray, source: str) -> None:
    # The Agg canvas directly, never pyplot: no global backend switch, nothing left open between pictures.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = f"{len(columns)} of {count} steps drawn" if len(columns) < count else f"{count} steps"
    axes.set_title(f"{title}  ({shown})", fontsize=10)
    axes.set_xlabel("step")
    axes.set_ylabel("value")
    if columns:
        image = np.stack(columns, axis=1)
        peak = image.max(axis=0)
        image = np.divide(image, peak, out=np.zeros_like(image), where=peak > 0)
        x = np.asarray(steps)
        if len(x) == 1:
            edges = np.array([x[0] - 0.5, x[0] + 0.5])
        else:
            middle = (x[1:] + x[:-1]) / 2
            edges = np.concatenate([[x[0] - (middle[0] - x[0])], middle, [x[-1] + (x[-1] - middle[-1])]])
        mesh = axes.pcolormesh(edges, grid, image, cmap="viridis", shading="flat", vmin=0, vmax=1)
        figure.colorbar(mesh, ax=axes, label="count (each step scaled to its largest bin)")
        axes.plot(x, medians, color="white", linewidth=1.2, label="median")
        axes.legend(loc="upper right", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no points", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    # Software is left out: the picture then depends on its data, not on which matplotlib drew it.
    figure.savefig(png, format="png", metadata={"Software": None, SOURCE_KEY: source})


def _lines(handle: Any) -> Any:
    # The writer separates points with "\n" only; a value may hold U+2028, which splitlines would split on.
    for raw in handle:
        if raw.strip():
            yield raw


def _extent(jsonl: Path) -> tuple[int, float, float]:
    """First pass: how many points, and the value range of every finite bin edge."""
    count = 0
    low, high = np.inf, -np.inf
    with open(jsonl, encoding="utf-8", newline="\n") as src:
        for raw in _lines(src):
            count += 1
            edges = _edges(json.loads(raw).get("value"))
            if edges.size:
                low, high = min(low, float(edges.min())), max(high, float(edges.max()))
    if not np.isfinite(low):
        low, high = 0.0, 1.0
    return count, low, high


def _edges(value: Any) -> np.ndarray:
    if not isinstance(value, dict):
        return np.empty(0)
    edges = np.asarray([e for e in (value.get("edges") or ()) if isinstance(e, int | float)], dtype=np.float64)
    return edges[np.isfinite(edges)]


def _rebin(value: Any, grid: np.ndarray) -> tuple[np.ndarray, float]:
    """A histogram's counts spread onto the picture's rows (uniform inside each bin), and its median."""
    empty = np.zeros(len(grid) - 1)
    if not isinstance(value, dict):
        return empty, np.nan
    try:
        edges = np.asarray(value.get("edges") or (), dtype=np.float64)
        counts = np.asarray(value.get("values") or (), dtype=np.float64)
    except (TypeError, ValueError):
        return empty, np.nan
    if len(edges) != len(counts) + 1 or len(counts) == 0 or not np.isfinite(edges).all() \
            or (np.diff(edges) <= 0).any():
        return empty, np.nan
    counts = np.where(np.isfinite(counts) & (counts > 0), counts, 0.0)
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    total = cumulative[-1]
    if total <= 0:
        return empty, np.nan
    column = np.diff(np.interp(grid, edges, cumulative))
    median = float(np.interp(total / 2, cumulative, edges))
    return column, median


def png_text(data: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG (empty when the bytes are not a PNG): how validation reads a picture's source."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return {}
    out: dict[str, str] = {}
    at = 8
    while at + 8 <= len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind = data[at + 4:at + 8]
        body = data[at + 8:at + 8 + length]
        if kind == b"tEXt" and b"\0" in body:
            key, _, text = body.partition(b"\0")
            out[key.decode("latin-1")] = text.decode("latin-1")
        elif kind == b"zTXt" and b"\0" in body:
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"IEND":
            break
        at += 12 + length
    return out
