"""Functions that turn Neptune values and names into what MLflow accepts, and say where each lands
(docs/mlflow.md is the table). The loader writes by these rules and the verifier expects by them, so each rule
is written once, here.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from neptune_migration.archive.reader import END_ATOMS
from neptune_migration.errors import ArchiveError
from neptune_migration.naming import fit_length
from neptune_migration.paths import safe_segments

MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_EXPERIMENT_NAME = 500
INT64_MAX = 2**63 - 1
# The mapping version (targets/mlflow/__init__.py) a run was loaded with.
MAPPING_TAG = "neptune.migration.mapping"
# Set to "complete" as the last write of a load: a run without it was interrupted.
STATE_TAG = "neptune.migration.state"
# {metric key: 10**decimals} for series whose steps were scaled to integers; in an artifact when too long.
SCALE_TAG = "neptune.step_scale"
SCALE_ARTIFACT = "neptune/step_scale.json"
SCALE_IN_ARTIFACT = "see " + SCALE_ARTIFACT  # the run tag's value when the scales are in the artifact

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
_DOTS_ONLY = re.compile(r"^\.+$")


def sanitize_key(name: str) -> str:
    """A Neptune attribute path as an MLflow param/metric/tag key: `/` kept, anything MLflow rejects replaced.

    MLflow allows `^[/\\w.\\- :]*$` and refuses keys that normalise to another path (`/a`, `a/`, `a//b`, `a/./b`).
    """
    segments = []
    for seg in name.split("/"):
        seg = _BAD_KEY_CHARS.sub("_", seg)
        if seg == "":
            continue
        if _DOTS_ONLY.match(seg):
            seg = seg.replace(".", "_")
        segments.append(seg)
    key = "/".join(segments) or "_"
    return fit_length(key, MAX_KEY_LENGTH)


def fold_key(key: str) -> str:
    """When two keys are one key to a MySQL/MariaDB tracking store: their default collations (utf8mb4_general_ci,
    utf8mb4_unicode_ci, utf8mb4_0900_ai_ci) ignore case and accents, and the PAD SPACE ones trailing spaces, so
    `Loss`/`loss` or `ünï`/`uni` would share one primary key (a duplicate-key error, or one series read back as
    two). Deliberately coarser than any of them (`ss` also folds to `s`, covering general_ci's `ß` = `s`): a
    coarse fold only renames a few more keys, a fine one would let two attributes merge. Applied for every store,
    so an archive gets the same MLflow keys whatever database is behind the server.
    """
    decomposed = unicodedata.normalize("NFKD", key)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return bare.casefold().replace("ss", "s").rstrip(" ")


def metric_key(name: str) -> str:
    """Like `sanitize_key`; Neptune's `monitoring/*` goes to `system/*`, which MLflow shows as system metrics."""
    if name.startswith("monitoring/"):
        name = "system/" + name[len("monitoring/") :]
    return sanitize_key(name)


def param_text(type_: str, value: Any) -> str:
    """The text an atom has as a param: ints stay ints, floats round-trip, datetimes are ISO-8601."""
    if type_ == "int":
        return str(int(value))
    if type_ == "float":
        return _float_text(float(value))
    if type_ == "bool":
        return "True" if value else "False"
    if type_ == "datetime":
        return iso(value)
    if type_ == "string_set":
        return ",".join(sorted(value))
    return str(value)


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def truncate_with_marker(text: str, limit: int, where: str) -> str:
    marker = f"... [truncated from {len(text)} chars; full value in artifact {where}]"
    return text[: max(0, limit - len(marker))] + marker


# PostgreSQL text cannot hold U+0000 (psycopg: "PostgreSQL text fields cannot contain NUL (0x00) bytes"), so no
# stored text carries one on any store: U+2400 SYMBOL FOR NULL shows where it was.
NUL_MARK = "\u2400"


def text_value(text: str, limit: int = MAX_TAG_LENGTH) -> str:
    """A tag (or other stored text) value: NUL shown as U+2400, cut to `limit` with `...`."""
    text = text.replace("\x00", NUL_MARK)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_value(key: str, text: str) -> tuple[str, str | None, list[str]]:
    """(what MLflow stores for a param, the artifact holding its exact text or None, approximation kinds).

    A value too long for MLflow is cut with a marker; one holding NUL (which PostgreSQL cannot store) has it
    replaced. Either way the artifact keeps the exact text, so nothing is lost on any backend.
    """
    kinds: list[str] = []
    stored = text
    if "\x00" in stored:
        stored = stored.replace("\x00", NUL_MARK)
        kinds.append("param_nul_replaced_full_value_in_artifact")
    if len(stored) > MAX_PARAM_LENGTH:
        kinds.append("param_truncated_full_value_in_artifact")
    if not kinds:
        return text, None, kinds
    where = param_artifact_path(key)
    if len(stored) > MAX_PARAM_LENGTH:
        stored = truncate_with_marker(stored, MAX_PARAM_LENGTH, where)
    return stored, where, kinds


def nul_tags(tags: dict[str, str]) -> int:
    """Tags whose value lost a NUL to `text_value` (counted as an approximation by loader and verifier)."""
    return sum(1 for value in tags.values() if NUL_MARK in value)


_ARTIFACT_ESCAPES = {"~": "~7E", "#": "~23", "?": "~3F", "%": "~25"}


def artifact_name(segment: str) -> str:
    """Encode the characters the MLflow server changes in artifact names (`#`, `?`, `%`) reversibly."""
    return "".join(_ARTIFACT_ESCAPES.get(ch, ch) for ch in segment)


def decimals_needed(micros: np.ndarray) -> np.ndarray:
    """For each step given in millionths, how many decimal places it needs (0 for whole steps, up to 6)."""
    needed = np.full(micros.shape, 6, dtype=np.int8)
    for j in range(1, 7):
        needed[micros % (10**j) == 0] = 6 - j
    return needed


def step_decimals(micros: np.ndarray, exact: list[float | None] | None = None) -> np.ndarray:
    """Decimal places each step needs: from its millionths, or from the exact float kept beside it (`exact`,
    one entry per step, None where there is none)."""
    needed = decimals_needed(micros)
    for i, value in enumerate(exact or ()):
        if value is not None:
            needed[i] = exact_decimals(value)
    return needed


def exact_decimals(step: float) -> int:
    """Decimal places of a float step as written (shortest repr), for steps outside decimal(18, 6)."""
    exponent = Decimal(repr(step)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def scale_micros(micros: np.ndarray, decimals: int) -> np.ndarray:
    """Steps in millionths -> integers scaled by 10**decimals, exactly (the caller checked divisibility)."""
    if decimals <= 6:
        return micros // (10 ** (6 - decimals))
    factor = 10 ** (decimals - 6)
    if micros.size and np.abs(micros).max() > INT64_MAX // factor:
        raise OverflowError("step beyond int64 after scaling")
    return micros * factor


def scale_exact(step: float, decimals: int) -> int:
    scaled = Decimal(repr(step)) * (Decimal(10) ** decimals)
    if scaled != scaled.to_integral_value():
        raise ArithmeticError(f"step {step!r} is not a multiple of 10^-{decimals}")
    value = int(scaled)
    if abs(value) > INT64_MAX:
        raise OverflowError(f"step {step!r} scaled by 10^{decimals} is beyond int64")
    return value


def json_number(value: Any) -> float | int | None:
    """A step as a JSON number: whole steps as integers (while exact in a double), others as floats."""
    if value is None:
        return None
    f = float(value)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


# -- which sys/* atoms become tags ---------------------------------------------------------------------------
# sys/* atoms whose value already has a home in MLflow: a `neptune.sys/*` tag would only repeat it.
REPEATED_SYS_ATOMS = {
    "sys/owner": "the run's user (mlflow.user)",
    "sys/description": "the run's description (mlflow.note.content)",
    "sys/name": "tag neptune.experiment",
    "sys/tags": "tags neptune.tags and neptune.tag.*",
    "sys/group_tags": "tags neptune.group_tags and neptune.group_tag.*",
    "sys/creation_time": "the run's start time",
    "sys/failed": "the run's status",
    "sys/forking/parent": "tag neptune.fork_parent",
    "sys/forking/step": "tag neptune.fork_step",
}


def repeated_sys_atoms(atoms: dict[str, Any], run_id: str) -> set[str]:
    """The sys/* atoms of a run that get no `neptune.sys/*` tag: those above, the id that is the run's name
    (3.x `sys/custom_run_id`, 2.x `sys/id`), and the time that became its end time (END_ATOMS, in order)."""
    repeated = {p for p in REPEATED_SYS_ATOMS if p in atoms}
    for path in ("sys/id", "sys/custom_run_id"):
        if path in atoms and str(atoms[path].value) == run_id:
            repeated.add(path)
    ending = next((p for p in END_ATOMS if p in atoms and isinstance(atoms[p].value, datetime)), None)
    if ending:
        repeated.add(ending)
    return repeated


# -- where things land among a run's artifacts ---------------------------------------------------------------
def param_artifact_path(key: str) -> str:
    """The artifact holding the full text of a param too long for MLflow: `<key>.txt`, where the attribute lives
    (`params/long_text` -> `params/long_text.txt`)."""
    return "/".join(artifact_name(s) for s in safe_segments(key)) + ".txt"


def attribute_dir(attribute_path: str, parent_only: bool = False) -> str:
    segments = [artifact_name(s) for s in safe_segments(attribute_path)]
    return "/".join(segments[:-1] if parent_only else segments)


def series_file_name(attribute_path: str, suffix: str = ".jsonl") -> str:
    return artifact_name(safe_segments(attribute_path)[-1]) + suffix


def series_artifact_path(attribute_path: str, suffix: str = ".jsonl") -> str:
    """The JSON-lines artifact of a string or histogram series: its file in its parent attribute's folder.
    `suffix` names its companions: `.log` (a string series as plain text), `.png` (a histogram series drawn)."""
    parent = attribute_dir(attribute_path, parent_only=True)
    name = series_file_name(attribute_path, suffix)
    return f"{parent}/{name}" if parent else name


LOG_SUFFIX = ".log"
PICTURE_SUFFIX = ".png"


def series_line(step: Any, timestamp: datetime | None, value: Any) -> dict[str, Any]:
    """One point of a series artifact, before JSON encoding."""
    return {"step": json_number(step), "timestamp": iso(timestamp) if timestamp is not None else None, "value": value}


_LINE_BREAKS = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def log_line(line: dict[str, Any]) -> str:
    """One point of a string series in its plain-text log: `step<TAB>timestamp<TAB>text`, one line per point.

    The JSON-lines artifact is the exact copy; this one is for reading, so a line break inside a value is shown
    as `\\n` and NUL as U+2400 rather than kept."""
    step = line["step"]
    text = "" if line["value"] is None else str(line["value"])
    text = _LINE_BREAKS.sub("\\\\n", text).replace("\x00", NUL_MARK)
    return f"{'' if step is None else step}\t{line['timestamp'] or ''}\t{text}\n"


def step_folder(step: Any, width: int = 1) -> str:
    """`step_<n>` with the whole part zero-padded to `width` digits, so the folders of a series sort by step
    (`step_007`, `step_014`); a fraction follows after `_` (`step_001_5`)."""
    value = Decimal(repr(float(step))) if not isinstance(step, Decimal) else step
    sign = "-" if value < 0 else ""
    value = abs(value)
    whole = int(value)
    fraction = value - whole
    text = f"{sign}{whole:0{width}d}"
    if fraction:
        text += "_" + format(fraction.normalize(), "f").split(".", 1)[1]
    return "step_" + text


def file_series_widths(run: Any) -> dict[str, int]:
    """The padding width of each file series of `run` (an `ArchivedRun`), over every row the archive holds, so
    a selection of files never changes where the others land."""
    steps: dict[str, int] = {}
    for batch in run.batches(["file_series"], ["attribute_path", "step", "step_exact"]):
        for path, step, exact in zip(batch.column("attribute_path").to_pylist(), batch.column("step").to_pylist(),
                                     batch.column("step_exact").to_pylist(), strict=True):
            value = exact if exact is not None else step
            if value is not None:
                steps[path] = max(steps.get(path, 0), abs(int(float(value))))
    return {path: len(str(largest)) for path, largest in steps.items()}


def file_dir(attribute_path: str, type_: str, step: Any, width: int = 1) -> str:
    """The folder of a file attribute's payload; a file series has one `step_<n>` folder per step."""
    folder = attribute_dir(attribute_path)
    if type_ == "file_series":
        folder += "/" + step_folder(step if step is not None else 0, width)
    return folder


def _step_spellings(step: Any) -> set[str]:
    """How a file name can spell its own step: `7`, `7.0`, `step_7`, neptune-exporter's `step_7_000000`."""
    if step is None:
        return set()
    value = Decimal(repr(float(step))) if not isinstance(step, Decimal) else step
    whole, fraction = int(value), abs(value - int(value))
    digits = format(fraction.normalize(), "f").split(".", 1)[1] if fraction else ""
    six = format(fraction, ".6f").split(".", 1)[1]
    forms = {f"{whole}_{six}", f"{whole}.{six}"}
    forms |= {f"{whole}.{digits}", f"{whole}_{digits}"} if digits else {str(whole), f"{whole}.0"}
    return forms | {"step_" + f for f in forms}


def _split_extension(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else (name, "")


def file_destination(attribute_path: str, type_: str, step: Any, width: int, relative: str,
                     name: str) -> tuple[str, str]:
    """(artifact folder, file name) of one payload file named `name`, `relative` to its payload folder.

    A file whose name only repeats its attribute (`plots/confusion` holding `confusion.png`, or 2.x's
    `model/ckpt` holding `ckpt`) lands at the attribute path itself (`plots/confusion.png`, `model/ckpt`); a file
    series step whose file name only spells the step (`0.png`, `step_0_000000.png`) is named after the attribute
    (`images/preds/step_0/preds.png`)."""
    folder = file_dir(attribute_path, type_, step, width)
    plain = "_".join(safe_segments(name))
    leaf = safe_segments(attribute_path)[-1]
    stem, ext = _split_extension(plain)
    if type_ == "file_series" and not relative and (stem in _step_spellings(step) or plain in _step_spellings(step)):
        plain = leaf + ext if stem in _step_spellings(step) else leaf
    elif type_ == "file" and not relative and leaf in (stem, plain):
        return attribute_dir(attribute_path, parent_only=True), artifact_name(leaf + ext if stem == leaf else leaf)
    return payload_destination(folder, relative, plain)


def payload_files(source: Path) -> Iterator[tuple[Path, str]]:
    """A file payload, or every file inside a payload folder (2.x file sets) with its folder relative to the
    payload, never following links out of it."""
    if source.is_file():
        yield source, ""
        return
    root = source.resolve()
    for dirpath, _dirs, files in os.walk(source, followlinks=False):
        folder = Path(dirpath)
        relative = folder.relative_to(source).as_posix()
        for name in sorted(files):
            local = folder / name
            if local.is_symlink() and root not in local.resolve().parents:
                raise ArchiveError(f"refusing a link that leaves the archive: {local}")
            yield local, "" if relative == "." else relative


def payload_destination(folder: str, relative: str, name: str) -> tuple[str, str]:
    """(artifact folder, file name) of one payload file named `name`, `relative` to its payload folder."""
    file_name = artifact_name("_".join(safe_segments(name)))
    sub = "/".join(artifact_name(s) for s in safe_segments(relative)) if relative else ""
    where = folder + (f"/{sub}" if sub else "")
    if where.rsplit("/", 1)[-1] == file_name:
        # MLflow's client takes a folder `x` holding one file `x` for a file and lists it as empty, so a file
        # named like its folder lands at the folder path itself.
        where = where.rsplit("/", 1)[0] if "/" in where else ""
    return where, file_name


def joined(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name
