"""Options declared once, read by the CLI and the Python API alike.

A source's or a target's options are a dataclass whose fields carry their command-line form in the field's
metadata (`option(...)`). The CLI turns every field into one click option; the API takes the same names as
keyword arguments. So an option exists in exactly one place, and a plug-in brings its own options with it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class OptionSpec:
    """What the CLI needs to declare one option, taken from a dataclass field."""

    name: str  # the Python keyword (dataclass field name)
    flag: str  # the command-line form, e.g. --mlflow-tracking-uri
    help: str
    default: Any
    kind: type  # str, int, float, bool or Path
    panel: str = "Options"
    envvar: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    argument: bool = False  # a positional argument instead of an --option
    multiple: bool = False
    short: str | None = None  # e.g. -p


def option(
    default: Any = None,
    *,
    help: str,
    flag: str | None = None,
    envvar: str | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    argument: bool = False,
    panel: str | None = None,
    short: str | None = None,
) -> Any:
    """A dataclass field that is also a command-line option (see `specs`)."""
    meta = {"help": help, "flag": flag, "envvar": envvar, "metavar": metavar, "choices": choices,
            "minimum": minimum, "maximum": maximum, "argument": argument, "panel": panel, "short": short}
    return dataclasses.field(default=default, metadata={"neptune_migration": meta})


def _kind(annotation: Any) -> tuple[type, bool]:
    """(scalar type, is a list) of a field annotation such as `str | None`, `int` or `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind(args[0])
    if origin in (list, tuple):
        return _kind(typing.get_args(annotation)[0])[0], True
    return annotation, False


def specs(options_type: type, panel: str = "Options") -> list[OptionSpec]:
    """The options a dataclass declares, in field order."""
    out = []
    hints = typing.get_type_hints(options_type)  # the fields' annotations are strings (postponed evaluation)
    for f in dataclasses.fields(options_type):
        meta = f.metadata.get("neptune_migration")
        if meta is None:
            continue
        kind, multiple = _kind(hints[f.name])
        default = f.default if f.default is not MISSING else None
        out.append(OptionSpec(
            name=f.name, flag=meta["flag"] or "--" + f.name.replace("_", "-"), help=meta["help"], default=default,
            kind=kind, panel=meta["panel"] or panel, envvar=meta["envvar"], metavar=meta["metavar"],
            choices=meta["choices"], minimum=meta["minimum"], maximum=meta["maximum"], argument=meta["argument"],
            multiple=multiple, short=meta["short"],
        ))
    return out


def build(options_type: type, values: dict[str, Any]) -> Any:
    """An options dataclass from keyword values: names it does not declare are ignored, None means default."""
    names = {f.name for f in dataclasses.fields(options_type)}
    given = {k: v for k, v in values.items() if k in names and v is not None}
    return options_type(**given)
