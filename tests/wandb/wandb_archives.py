"""Generated W&B test archives: every attribute type and the nasty cases (NaN/inf, fractional and huge steps,
unicode, long values, name collisions, runs spread over several parquet parts)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from pathlib import Path

from neptune_migration.archive import Archive, ArchivedRun, ArchiveWriter
from neptune_migration.vocabulary import RunRef

T0 = 1_700_000_000_000  # ms


def _ms(i: float) -> int:
    return T0 + round(i * 1000)


def write_nasty_archive(root: Path, rows_per_part: int = 2_000_000, big_strings: int = 10_050) -> Path:
    """Three runs that between them hold every attribute type and the traps the notes list."""
    rnd = random.Random(7)
    w = ArchiveWriter(root, rows_per_part=rows_per_part, rows_per_batch=500)

    # Run "nasty": every type, per-series steps and timestamps (-> ordinal steps), collisions, NaN/inf.
    with w.run(RunRef("ws/nasty proj", "NAS-1")) as r:
        r.add_atom("sys/name", "string", "exp nasty")
        r.add_atom("sys/custom_run_id", "string", "NAS-1")
        r.add_atom("sys/description", "string", "description ünïcödé ✓")
        r.add_atom("sys/tags", "string_set", ["short", "t" * 100, "ünï"])
        r.add_atom("sys/failed", "bool", True)
        r.add_atom("sys/creation_time", "datetime", datetime.fromtimestamp(T0 / 1000, UTC))
        r.add_atom("sys/modification_time", "datetime", datetime.fromtimestamp(T0 / 1000 + 99, UTC))
        r.add_atom("params/lr", "float", 0.1 + 0.2)
        r.add_atom("params/nan", "float", math.nan)
        r.add_atom("params/inf", "float", -math.inf)
        r.add_atom("params/big", "int", 2**62 + 1)
        r.add_atom("params/flag", "bool", False)
        r.add_atom("params/when", "datetime", datetime(2024, 2, 29, 12, 0, 0, 123000, UTC))
        r.add_atom("params/long", "string", "ß€𝄞" * 3000)  # 9000 characters, multi-byte
        r.add_atom("params/set", "string_set", ["b", "a", "ü"])
        r.add_atom("params/a", "string", "leaf")
        r.add_atom("params/a/b", "int", 2)  # `params/a` is a value and a branch
        n = 300
        r.add_series("train/loss", "float_series", list(range(n)), [_ms(i) for i in range(n)],
                     [1.0 / (i + 1) for i in range(n)])
        # The same steps, other timestamps: each point must keep its own timestamp.
        r.add_series("val/acc", "float_series", [0, 10, 20, 30], [_ms(i + 0.5) for i in (0, 10, 20, 30)],
                     [0.1, 0.2, math.nan, 0.4])
        r.add_series("weird/values", "float_series", [1, 2, 3, 4, 5], [_ms(i) for i in range(1, 6)],
                     [math.inf, -math.inf, math.nan, -0.0, 5e-324])
        # Names that collide after W&B's cleaning (case-insensitive, `.` -> `_`) and a reserved prefix.
        r.add_series("Loss", "float_series", [0, 1], [_ms(0), _ms(1)], [7.0, 8.0])
        r.add_series("loss", "float_series", [0, 1], [_ms(0), _ms(1)], [9.0, 10.0])
        r.add_series("a.b", "float_series", [0], [_ms(0)], [1.0])
        r.add_series("a_b", "float_series", [0], [_ms(0)], [2.0])
        r.add_series("_step", "float_series", [0], [_ms(0)], [3.0])
        r.add_series("frac/x", "float_series", [0.5, 1.25, 2.000001], [_ms(0.5), _ms(1.25), _ms(2)], [1.0, 2.0, 3.0])
        r.add_series("empty/series", "float_series", [], [], [])
        r.add_series("hist/w", "histogram_series", [0, 1, 2],
                     [_ms(0), _ms(1), _ms(2)],
                     [{"type": "COUNTING", "edges": [0.0, 1.0, 2.0], "values": [float(i), 2.0]} for i in range(3)])
        wide = [float(i) for i in range(1001)]
        r.add_series("hist/wide", "histogram_series", [3], [_ms(3)],
                     [{"type": "COUNTING", "edges": wide, "values": [1.0] * 1000}])
        r.add_series("logs/stdout", "string_series", [0, 1, 2], [_ms(0), _ms(1), _ms(2)],
                     ["line 0", "ünïcödé ✓", "x" * 9000])
        r.add_series("logs/big", "string_series", list(range(big_strings)), [_ms(i) for i in range(big_strings)],
                     [f"row {i}" for i in range(big_strings)])
        r.add_file("model/ckpt", "file", bytes(range(256)) * 40, "ckpt.bin")
        for s in (0, 1, 2.5):
            r.add_file("images/preds", "file_series", f"png {s}".encode() + bytes([rnd.randrange(256)]),
                       f"pred_{s}.png", step=s, timestamp=_ms(s))
        r.add_file("data/set", "file_set", b"PK\x03\x04 zip bytes", "files.zip")

    # Run "huge": fractional and huge steps (beyond decimal(18, 6)), rows shuffled over several parts.
    with w.run(RunRef("ws/nasty proj", "NAS-2")) as r:
        r.add_atom("sys/name", "string", "exp nasty")
        r.add_atom("sys/forking/parent", "string", "NAS-1")
        r.add_atom("sys/forking/step", "float", 2.0)
        steps = [0.5, 1.25, 7.1234567, 1e15, 1e15 + 2, -3.0]
        r.add_series("m/x", "float_series", steps, [_ms(i) for i in range(len(steps))],
                     [float(i) for i in range(len(steps))])

    # Run "parts": integer steps, metrics and histograms interleaved, spread over many small parts.
    with w.run(RunRef("ws/other", "OTH-1")) as r:
        r.add_atom("sys/name", "string", "exp other")
        r.add_atom("sys/creation_time", "datetime", datetime.fromtimestamp(T0 / 1000, UTC))
        n = 2000
        order = list(range(n))
        rnd.shuffle(order)
        for chunk in range(0, n, 250):
            idx = order[chunk : chunk + 250]
            r.add_series("train/loss", "float_series", idx, [_ms(i) for i in idx], [i * 0.5 for i in idx])
            hidx = [i for i in idx if i % 10 == 0]
            r.add_series("train/hist", "histogram_series", hidx, [_ms(i) for i in hidx],
                         [{"type": "COUNTING", "edges": [0.0, 1.0], "values": [float(i)]} for i in hidx])
            r.add_series("train/acc", "float_series", idx, [_ms(i) for i in idx], [i * 0.25 for i in idx])
    return root


def runs_of(root: Path, files: Path | None = None) -> dict[str, ArchivedRun]:
    scan = Archive(root, files).scan()
    return {r.ref.key: r for r in scan.runs}


