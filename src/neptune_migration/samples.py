"""Sample archives: a realistic project for the demo, and one full of the cases that break migrations.

Both are written through the same `ArchiveWriter` that `export` uses, so they have the real layout and schema.
Values are generated from a seeded RNG; nothing is hand-tuned to make a loader look good.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from neptune_migration.archive import ArchiveWriter
from neptune_migration.vocabulary import RunRef

BASE_TIME = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def tiny_png(seed: int, size: int = 8) -> bytes:
    """A valid PNG of size x size pixels whose colours depend on `seed` (so files differ)."""
    rng = random.Random(seed)
    raw = b"".join(b"\x00" + bytes(rng.randrange(256) for _ in range(size * 3)) for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _sys(writer, run_id: str, experiment: str, created: datetime, minutes: float, failed: bool, tags: list[str],
         owner: str = "alice", description: str = "") -> None:
    writer.add_atom("sys/id", "string", run_id)
    writer.add_atom("sys/custom_run_id", "string", run_id)
    writer.add_atom("sys/name", "string", experiment)
    writer.add_atom("sys/owner", "string", owner)
    writer.add_atom("sys/creation_time", "datetime", created)
    writer.add_atom("sys/modification_time", "datetime", created + timedelta(minutes=minutes))
    writer.add_atom("sys/failed", "bool", failed)
    writer.add_atom("sys/archived", "bool", False)
    writer.add_atom("sys/trashed", "bool", False)
    writer.add_atom("sys/tags", "string_set", tags)
    if description:
        writer.add_atom("sys/description", "string", description)


def write_demo_archive(root: Path, runs: int = 6, steps: int = 300, seed: int = 7) -> Path:
    """A small image-classification project: two experiments, learning curves, logs, histograms, files."""
    rng = random.Random(seed)
    archive = ArchiveWriter(root)
    project = "acme/image-classifier"
    for i in range(runs):
        run_id = f"IMG-{i + 1}"
        experiment = "resnet-baseline" if i < runs // 2 else "resnet-mixup"
        lr = rng.choice([0.1, 0.03, 0.01, 0.003])
        created = BASE_TIME + timedelta(hours=3 * i)
        failed = i == runs - 1
        with archive.run(RunRef(project, run_id)) as w:
            _sys(w, run_id, experiment, created, steps * 0.2, failed, ["resnet50", "cifar10"] + (["mixup"] if "mixup" in
                 experiment else []), description=f"{experiment} with lr={lr}")
            w.add_atom("parameters/lr", "float", lr)
            w.add_atom("parameters/batch_size", "int", rng.choice([64, 128, 256]))
            w.add_atom("parameters/optimizer", "string", rng.choice(["sgd", "adamw"]))
            w.add_atom("parameters/augment", "bool", "mixup" in experiment)
            w.add_atom("data/classes", "string_set", ["airplane", "automobile", "bird", "cat", "deer"])
            n = steps // 2 if failed else steps
            ts = [created + timedelta(seconds=12 * s) for s in range(n)]
            decay = rng.uniform(40, 90)
            loss = [2.3 * math.exp(-s / decay) + rng.gauss(0, 0.02) + 0.1 for s in range(n)]
            acc = [min(0.99, 1 - l / 2.5 + rng.gauss(0, 0.01)) for l in loss]  # noqa: E741
            w.add_series("train/loss", "float_series", list(range(n)), ts, loss)
            w.add_series("train/accuracy", "float_series", list(range(n)), ts, acc)
            w.add_series("train/lr", "float_series", list(range(n)), ts, [lr * 0.5 ** (s // 100) for s in range(n)])
            epochs = list(range(0, n, 25))
            w.add_series("eval/accuracy", "float_series", [e / 25 for e in epochs], [ts[e] for e in epochs],
                         [acc[e] - 0.02 for e in epochs])
            w.add_series("monitoring/gpu_util", "float_series", [s * 0.5 for s in range(n)],
                         [created + timedelta(seconds=6 * s) for s in range(n)],
                         [rng.uniform(70, 99) for _ in range(n)])
            w.add_series("logs/stdout", "string_series", list(range(0, n, 50)), [ts[s] for s in range(0, n, 50)],
                         [f"epoch {s // 25}: loss={loss[s]:.4f}" for s in range(0, n, 50)])
            hist_steps = list(range(0, n, 100))
            w.add_series("weights/fc", "histogram_series", hist_steps, [ts[s] for s in hist_steps], [
                {"type": "COUNTING", "edges": [-1.0, -0.5, 0.0, 0.5, 1.0],
                 "values": [float(rng.randrange(100)) for _ in range(4)]} for _ in hist_steps])
            w.add_file("model/checkpoint", "file", bytes(rng.randrange(256) for _ in range(4096)), "best.pt")
            for k, s in enumerate(range(0, n, 150)):
                w.add_file("predictions/samples", "file_series", tiny_png(seed * 1000 + i * 10 + k), f"sample_{s}.png",
                           step=s, timestamp=ts[s])
    return root


def write_nasty_archive(root: Path, rows_per_part: int = 2_000_000) -> Path:
    """Every attribute type and the cases that lose data in naive loaders."""
    archive = ArchiveWriter(root, rows_per_part=rows_per_part, rows_per_batch=min(50_000, rows_per_part))
    project = "nasty/ünïcode-proj"
    created = datetime(2024, 2, 29, 23, 59, 59, 123000, tzinfo=UTC)
    with archive.run(RunRef(project, "NASTY-1")) as w:
        _sys(w, "NASTY-1", "exp/with slash", created, 90, True, ["tag with space", "ünï", "a,b"],
             owner="bob", description="a description\nwith *markdown* and ünïcode")
        w.add_atom("sys/group_tags", "string_set", ["group-a"])
        w.add_atom("params/int", "int", 256)
        w.add_atom("params/big_int", "int", 2**62 + 1)
        w.add_atom("params/float", "float", 0.1)
        w.add_atom("params/float_whole", "float", 256.0)
        w.add_atom("params/nan", "float", math.nan)
        w.add_atom("params/bool", "bool", True)
        w.add_atom("params/when", "datetime", datetime(2023, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
        w.add_atom("params/set", "string_set", ["b", "a", "c"])
        w.add_atom("params/long_text", "string", "x" * 9000 + "END")
        w.add_atom("params/ünïcode ключ", "string", "значение")
        w.add_atom("params/bad#chars?=[x]", "string", "sanitised")
        w.add_atom("params/bad_chars__=_x_", "string", "collides after sanitising")
        w.add_atom("params/deep/" + "/".join(f"level{i}" for i in range(12)), "int", 12)
        w.add_atom("params/" + "very_long_name_" * 30, "string", "long key")
        t0 = created
        n = 2500
        w.add_series("metrics/loss", "float_series", list(range(n)), [t0 + timedelta(milliseconds=37 * s) for s in
                     range(n)], [1.0 / (s + 1) for s in range(n)])
        w.add_series("metrics/special", "float_series", [0, 1, 2, 3, 4, 5],
                     [t0 + timedelta(seconds=s) for s in range(6)],
                     [math.nan, math.inf, -math.inf, 0.0, -0.0, 5e-324])
        w.add_series("metrics/fractional", "float_series", [0.29, 0.5, 1.0, 1.25, 2.000001],
                     [t0 + timedelta(seconds=s) for s in range(5)], [1.0, 2.0, 3.0, 4.0, 5.0])
        w.add_series("metrics/huge_steps", "float_series", [1e9, 1e11, 5e14, 9.007199254740991e15],
                     [t0 + timedelta(seconds=s) for s in range(4)], [1.0, 2.0, 3.0, 4.0])
        w.add_series("metrics/tiny_fraction", "float_series", [0.1234567, 0.2],
                     [t0, t0 + timedelta(seconds=1)], [1.5, 2.5])
        w.add_series("metrics/empty", "float_series", [], [], [])
        w.add_series("metrics/ключ ünïcode", "float_series", [0, 1], [t0, t0], [3.0, 4.0])
        w.add_series("metrics/bad#name", "float_series", [0], [t0], [1.0])
        w.add_series("metrics/bad_name", "float_series", [0], [t0], [2.0])
        w.add_series("logs/stdout", "string_series", [0, 1, 2], [t0, t0, t0], ["line 0", "ünïcode ✓", "x" * 9000])
        w.add_series("logs/empty", "string_series", [], [], [])
        w.add_series("hist/weights", "histogram_series", [0, 1.5], [t0, t0],
                     [{"type": "COUNTING", "edges": [0.0, 1.0, 2.0], "values": [3.0, 4.0]},
                      {"type": "COUNTING", "edges": [-1.0, 0.0], "values": [7.0]}])
        w.add_file("files/model", "file", bytes(range(256)) * 64, "model.bin")
        w.add_file("files/weird name #1?%", "file", b"weird", "we#ird ?name%20.txt")
        w.add_file("files/empty", "file", b"", "empty.txt")
        for s in (0, 1, 2.5):
            w.add_file("images/preds", "file_series", tiny_png(int(s * 10)), f"pred_{s}.png", step=s, timestamp=t0)
    with archive.run(RunRef(project, "NASTY-2")) as w:
        # A minimal run: no owner, no description, not failed, an archived flag off; metrics only.
        w.add_atom("sys/creation_time", "datetime", created + timedelta(days=1))
        w.add_atom("sys/failed", "bool", False)
        w.add_series("metrics/loss", "float_series", [0, 1], [created, created], [0.5, 0.25])
    return root
