"""Synthetic projects for the sandbox: a realistic demo and a generator full of nasty cases.

Everything is deterministic for a given ``seed``: the same call builds the same values, timestamps
included, so a test can rebuild the model to compare against what a client fetched.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import struct
import zlib

from neptune_migration.sandbox.world import (
    ArtifactFile,
    ArtifactValue,
    FileValue,
    Histogram,
    Point,
    Project,
    Run,
    to_ms,
)

BASE_TIME = dt.datetime(2025, 3, 1, 9, 0, 0, tzinfo=dt.UTC)


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid, tiny PNG so the demo's images open in any viewer."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * width
    raw = zlib.compress(row * height)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _histogram(rng: random.Random, bins: int = 8) -> Histogram:
    edges = [round(-1.0 + 2.0 * i / bins, 6) for i in range(bins + 1)]
    return Histogram("COUNTING", edges, [float(rng.randint(0, 50)) for _ in range(bins)])


def _ts(start: dt.datetime, seconds: float) -> dt.datetime:
    return start + dt.timedelta(seconds=seconds)


# ---------------------------------------------------------------- demo


def demo_project(workspace: str = "sandbox", name: str = "demo", seed: int = 7) -> Project:
    """A small, realistic training project: a few experiments, several runs, curves, files and logs."""
    rng = random.Random(seed)
    project = Project(workspace, name, key="DEMO")
    experiments = [("baseline", 0.1, 32), ("wider-net", 0.05, 64), ("lr-sweep", 0.01, 64)]
    minute = 0
    for exp_index, (exp, lr, batch) in enumerate(experiments):
        for attempt in range(2 if exp_index < 2 else 3):
            minute += 37
            start = _ts(BASE_TIME, minute * 60)
            run = project.new_run(
                f"{exp}-{attempt + 1}",
                experiment_name=exp,
                creation_time=start,
                owner="alice" if exp_index % 2 == 0 else "bob",
                tags={"demo", exp, "gpu" if batch == 64 else "cpu"},
                group_tags={"team-vision"},
                description=f"{exp} attempt {attempt + 1}",
                failed=(exp == "lr-sweep" and attempt == 1),
            )
            run_lr = lr * (1 + attempt) if exp == "lr-sweep" else lr
            run.set("parameters/learning_rate", run_lr)
            run.set("parameters/batch_size", batch)
            run.set("parameters/optimizer", "adam")
            run.set("parameters/augment", attempt % 2 == 0)
            run.set("data/version", "v2.1")
            run.set("data/splits", frozenset({"train", "val"}))
            run.set("environment/started", _ts(start, 1.5))
            epochs = 20
            loss = 2.3
            for step in range(epochs * 5):
                loss = loss * (1 - run_lr * 0.3) + rng.uniform(-0.01, 0.01)
                run.log("train/loss", "float_series", step, loss, _ts(start, 2 + step * 3))
                if step % 5 == 4:
                    epoch = step // 5
                    acc = min(0.99, 0.5 + 0.4 * (1 - math.exp(-epoch * run_lr * 3)) + rng.uniform(0, 0.02))
                    run.log("eval/accuracy", "float_series", epoch, acc, _ts(start, 2 + step * 3 + 1))
                    run.log(
                        "train/logs",
                        "string_series",
                        epoch,
                        f"epoch {epoch}: loss={loss:.4f}",
                        _ts(start, 2 + step * 3 + 1.5),
                    )
                    run.log("train/weights", "histogram_series", epoch, _histogram(rng), _ts(start, 2 + step * 3 + 2))
            for epoch in range(0, epochs, 5):
                image = FileValue(_png(8, 8, (epoch * 10 % 256, 80, 160)), f"predictions_{epoch}.png", "image/png")
                run.log(
                    "eval/predictions",
                    "file_series",
                    epoch,
                    image,
                    _ts(start, 400 + epoch),
                )
            run.set("model/checkpoint", FileValue(rng.randbytes(2048), "model.ckpt", "application/octet-stream"))
            run.set("eval/final_accuracy", acc)
            run.touch()
    # 2.x-only kinds on the first run: a file set (source code) and an artifact (dataset metadata only)
    first = project.run_by_custom_id("baseline-1")
    assert first is not None
    first.set(
        "source_code/files",
        {"train.py": b"print('train')\n", "utils/data.py": b"def load():\n    return []\n", "README.md": b"# demo\n"},
        "file_set",
    )
    first.set(
        "datasets/train",
        ArtifactValue(
            "d0c5f1e2" * 8,
            (
                ArtifactFile("train/part-0.csv", "a" * 40, "S3", 1024, (("location", "s3://bucket/train/part-0.csv"),)),
                ArtifactFile("train/part-1.csv", "b" * 40, "S3", 2048, (("location", "s3://bucket/train/part-1.csv"),)),
            ),
        ),
        "artifact",
    )
    # the model registry (2.x): one model with two versions
    registry_time = _ts(BASE_TIME, (minute + 120) * 60)
    model = project.new_model("CLS", name="classifier", creation_time=registry_time, owner="alice")
    model.set("config/architecture", "resnet18")
    for n, stage in enumerate(("staging", "production")):
        version = project.new_model_version(
            model, name=f"classifier v{n + 1}", stage=stage, creation_time=_ts(registry_time, 60 * (n + 1))
        )
        version.set("validation/accuracy", 0.9 + n * 0.02)
        version.set("model/weights", FileValue(rng.randbytes(512), f"weights_v{n + 1}.pt"))
    # one run forked from the best baseline to resume from epoch 10
    parent = project.run_by_custom_id("baseline-2")
    assert parent is not None
    fork = project.new_run(
        "baseline-2-resume",
        experiment_name="baseline-resumed",
        creation_time=_ts(BASE_TIME, (minute + 60) * 60),
        owner="alice",
        tags={"demo", "resumed"},
        fork_of=parent,
        fork_step=49,
    )
    for step in range(50, 70):
        fork.log("train/loss", "float_series", step, 0.5 - step * 0.001, _ts(fork.creation_time, step))
    fork.set("parameters/learning_rate", 0.05)
    fork.touch()
    return project


# ---------------------------------------------------------------- nasty generator


def generate_project(
    name: str = "nasty",
    *,
    workspace: str = "sandbox",
    runs: int = 6,
    series: int = 3,
    points: int = 20,
    files: int = 2,
    seed: int = 0,
    nasty: bool = True,
) -> Project:
    """A project of ``runs`` runs, each with ``series`` float series of ``points`` points and ``files`` files.

    With ``nasty`` (the default) the first runs carry the cases exporters get wrong: NaN and +-inf, fractional
    and huge steps, unicode and very long names, an empty series, deep namespaces, names that collide after
    sanitising, a fork, a trashed run, an archived run, files with weird names, previews.
    """
    rng = random.Random(seed)
    key = "".join(ch for ch in name.upper() if ch.isalnum() and ch.isascii())[:5] or "GEN"
    project = Project(workspace, name, key=key)
    made: list[Run] = []
    for i in range(runs):
        start = _ts(BASE_TIME, i * 3600 + rng.randint(0, 600))
        run = project.new_run(
            f"run-{i:04d}",
            experiment_name=f"exp-{i % 3}",
            creation_time=start,
            owner=rng.choice(["alice", "bob"]),
            tags={f"t{i % 4}", "generated"},
            description=f"generated run {i}",
        )
        run.set("params/lr", round(rng.uniform(1e-4, 1e-1), 6))
        run.set("params/batch", rng.choice([16, 32, 64]))
        run.set("params/name", f"model-{i}")
        run.set("params/flag", bool(i % 2))
        run.set("params/when", _ts(start, 5))
        run.set("params/set", frozenset({f"s{i % 2}", "common"}))
        start_ms = to_ms(start) + 10_000
        gauss = rng.gauss
        for s in range(series):
            run.extend(
                f"metrics/m{s}",
                "float_series",
                [Point(float(p), gauss(0, 1), start_ms + p * 1000) for p in range(points)],
            )
        for f in range(files):
            run.set(f"files/f{f}", FileValue(rng.randbytes(64 + f), f"file_{f}.bin"))
        made.append(run)
    if nasty and made:
        _add_nasty_cases(project, made, rng)
    for run in project.runs:
        run.touch()
    return project


def _add_nasty_cases(project: Project, runs: list[Run], rng: random.Random) -> None:
    first = runs[0]
    t0 = first.creation_time
    for step, value in enumerate([1.0, math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]):
        first.log("nasty/special_values", "float_series", step, value, _ts(t0, 100 + step))
    for k, step in enumerate([0.1, 0.29, 0.5, 1.25, 2.000001, 3.141592]):
        first.log("nasty/fractional_steps", "float_series", step, float(k), _ts(t0, 120 + k))
    for k, step in enumerate([0, 1e6, 2**40, 9.007199254740991e15]):
        first.log("nasty/huge_steps", "float_series", step, float(k), _ts(t0, 140 + k))
    first.declare_series("nasty/empty_series", "float_series")
    first.set("nasty/ünïcødé/名前/émoji_🚀", "unicode value ✓")
    first.set("nasty/" + "very_long_name_" * 20, 1)
    first.set("nasty/" + "/".join(f"level{d}" for d in range(12)) + "/leaf", 3.5)
    # collide after replacing non-alphanumerics with "_"
    first.set("nasty/a-b", 1.0)
    first.set("nasty/a_b", 2.0)
    first.set("nasty/a.b", 3.0)
    first.set("nasty/a b", 4.0)
    first.set("nasty/empty_string", "")
    first.set("nasty/long_string", "x" * 20_000)
    first.set("nasty/int_max", 2**63 - 1)
    first.set("nasty/int_min", -(2**63))
    first.set("nasty/float_nan", math.nan)
    first.set("nasty/float_inf", math.inf)
    first.set("nasty/empty_set", frozenset())
    first.set("nasty/old_datetime", dt.datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=dt.UTC))
    first.set("nasty/file with spaces & ünïcode.txt", FileValue("ünïcode body\n".encode(), "weird name (1) ü.txt"))
    first.set("nasty/file_no_ext", FileValue(b"\x00\x01\x02", "no_extension", "application/octet-stream"))
    first.set("nasty/empty_file", FileValue(b"", "empty.txt", "text/plain"))
    first.log("nasty/strings", "string_series", 0, "", _ts(t0, 200))
    first.log("nasty/strings", "string_series", 1.5, 'line with\nnewline and "quotes"', _ts(t0, 201))
    first.log("nasty/strings", "string_series", 2, "ünïcode 名前 🚀", _ts(t0, 202))
    for step in range(4):
        first.log("nasty/hist", "histogram_series", step * 0.5, _histogram(rng, bins=3 + step), _ts(t0, 210 + step))
    for step in range(3):
        first.log(
            "nasty/images",
            "file_series",
            step,
            FileValue(bytes([step]) * 10, f"img {step}/é.png", "image/png"),
            _ts(t0, 220 + step),
        )
    # previews: the last points are not final yet
    for step in range(5):
        first.log(
            "nasty/with_preview",
            "float_series",
            step,
            step * 1.5,
            _ts(t0, 230 + step),
            is_preview=step >= 3,
            completion_ratio=0.5 if step >= 3 else 1.0,
        )

    if len(runs) >= 2:
        runs[1].set("sys/trashed", True)
    if len(runs) >= 3:
        runs[2].set("sys/archived", True)
    parent = runs[-1] if len(runs) >= 4 else runs[0]
    fork = project.new_run(
        "run-fork",
        experiment_name="exp-fork",
        creation_time=_ts(parent.creation_time, 3600),
        tags={"fork"},
        fork_of=parent,
        fork_step=4,
    )
    for p in range(5, 10):
        fork.log("metrics/m0", "float_series", p, float(p), _ts(fork.creation_time, p))
    fork.set("params/lr", 0.5)


def big_project(name: str = "big", *, workspace: str = "sandbox", runs: int = 10_050, seed: int = 3) -> Project:
    """Many small runs (one param each) for the 2.x listing past the server's 10,000-offset limit.

    Creation times are unique and increasing, so "sort ascending by sys/creation_time" is stable, which is
    what the 1.x client's continuation query needs.
    """
    rng = random.Random(seed)
    project = Project(workspace, name, key="BIG")
    for i in range(runs):
        run = project.new_run(f"big-{i:05d}", creation_time=_ts(BASE_TIME, i * 7 + 1), owner="bot")
        run.set("params/x", rng.random())
    return project
