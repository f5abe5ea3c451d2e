"""One NQL parser and evaluator for the filters both Neptune clients send.

Accepted (either dialect, case-insensitive keywords):
    `sys/name`:string MATCHES "^exp-b$"          neptune-query: backticks, typed, double-quoted values
    (`sys/trashed`:bool = false) AND (...)       neptune 1.x: `=`, bare values
    last(`train/loss`:floatSeries) < "0.5"       aggregations: last min max average variance
    `sys/tags`:stringSet CONTAINS "cpu"          also NOT CONTAINS, NOT MATCHES, EXISTS, NOT (...), OR

Semantics (what a filter means for one run):
- A typed column only sees an attribute of that type (int and float are interchangeable); a missing
  attribute makes every comparison false, and ``NOT (...)`` negates the whole subexpression.
- A series compared without an aggregation is compared by its last value.
- Values are compared in the attribute's own type: numbers as floats, bools by ``true``/``false``,
  datetimes from ISO-8601 or epoch milliseconds, strings as strings; MATCHES is ``re.search``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
from dataclasses import dataclass
from typing import Any, Union

from neptune_migration.sandbox.world import TYPES_BY_WIRE, Run, ms_datetime

AGGREGATIONS = ("last", "min", "max", "average", "variance")
# 1.x wire types that are not 3.x attribute types
_EXTRA_TYPES = {
    "experimentState": "string",
    "gitRef": "string",
    "notebookRef": "string",
    # the 1.x client's NQLAttributeType names
    "integer": "int",
    "boolean": "bool",
    "imageSeries": "file_series",
    "file": "file",
    "fileSet": "file_set",
    "artifact": "artifact",
}


class NqlError(ValueError):
    pass


@dataclass(frozen=True)
class Column:
    name: str
    type: str | None = None  # model type name, after translating the wire name
    aggregation: str | None = None
    run_state: bool = False  # an experimentState column: the filter says running/idle, the model active/inactive


@dataclass(frozen=True)
class Compare:
    column: Column
    op: str  # == != > >= < <= MATCHES NOT_MATCHES CONTAINS NOT_CONTAINS
    value: str


@dataclass(frozen=True)
class Exists:
    column: Column


@dataclass(frozen=True)
class Not:
    inner: Expr


@dataclass(frozen=True)
class BoolOp:
    op: str  # AND / OR
    parts: tuple[Expr, ...]


Expr = Union[Compare, Exists, Not, BoolOp]  # noqa: UP007 - a runtime alias, `|` needs 3.12 here

_WS = re.compile(r"\s*")
_BARE_NAME = re.compile(r"[^\s()\"`:=!<>]+")
_BARE_VALUE = re.compile(r"[^\s()\"`]+")
_OPS = ("==", "!=", ">=", "<=", "=", ">", "<")


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def error(self, what: str) -> NqlError:
        return NqlError(f"NQL: {what} at {self.i} in {self.s!r}")

    def skip(self) -> None:
        self.i = _WS.match(self.s, self.i).end()  # type: ignore[union-attr]

    def peek_word(self) -> str:
        self.skip()
        m = re.compile(r"[A-Za-z]+").match(self.s, self.i)
        return m.group(0).upper() if m else ""

    def eat_word(self, word: str) -> bool:
        self.skip()
        m = re.compile(r"[A-Za-z]+\b").match(self.s, self.i)
        if m and m.group(0).upper() == word:
            self.i = m.end()
            return True
        return False

    def eat(self, literal: str) -> bool:
        self.skip()
        if self.s.startswith(literal, self.i):
            self.i += len(literal)
            return True
        return False

    def parse(self) -> Expr | None:
        self.skip()
        if self.i == len(self.s):
            return None
        expr = self.or_expr()
        self.skip()
        if self.i != len(self.s):
            raise self.error("unexpected text")
        return expr

    def or_expr(self) -> Expr:
        parts = [self.and_expr()]
        while self.eat_word("OR"):
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else BoolOp("OR", tuple(parts))

    def and_expr(self) -> Expr:
        parts = [self.unary()]
        while self.eat_word("AND"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else BoolOp("AND", tuple(parts))

    def unary(self) -> Expr:
        if self.eat_word("NOT"):
            return Not(self.unary())
        if self.eat("("):
            inner = self.or_expr()
            if not self.eat(")"):
                raise self.error("missing )")
            return inner
        return self.predicate()

    def column(self) -> Column:
        self.skip()
        agg = None
        m = re.compile(r"([A-Za-z]+)\s*\(").match(self.s, self.i)
        if m and m.group(1).lower() in AGGREGATIONS:
            agg = m.group(1).lower()
            self.i = m.end()
        name = self.name()
        type_ = wire = None
        if self.s.startswith(":", self.i):
            self.i += 1
            wire = self.name()
            type_ = TYPES_BY_WIRE.get(wire) or _EXTRA_TYPES.get(wire) or wire
        if agg is not None and not self.eat(")"):
            raise self.error("missing ) after aggregation")
        return Column(name, type_, agg, run_state=wire == "experimentState" if type_ is not None else False)

    def name(self) -> str:
        self.skip()
        if self.s.startswith("`", self.i):
            end = self.s.find("`", self.i + 1)
            if end < 0:
                raise self.error("unterminated `")
            value = self.s[self.i + 1 : end]
            self.i = end + 1
            return value
        m = _BARE_NAME.match(self.s, self.i)
        if not m:
            raise self.error("expected a name")
        self.i = m.end()
        return m.group(0)

    def predicate(self) -> Expr:
        col = self.column()
        if self.eat_word("EXISTS"):
            return Exists(col)
        if self.peek_word() == "NOT":
            save = self.i
            self.eat_word("NOT")
            if self.eat_word("EXISTS"):
                return Not(Exists(col))
            for word in ("MATCHES", "CONTAINS"):
                if self.eat_word(word):
                    return Compare(col, f"NOT_{word}", self.value())
            self.i = save
            raise self.error("expected MATCHES, CONTAINS or EXISTS after NOT")
        for word in ("MATCHES", "CONTAINS"):
            if self.eat_word(word):
                return Compare(col, word, self.value())
        for op in _OPS:
            if self.eat(op):
                return Compare(col, "==" if op == "=" else op, self.value())
        raise self.error("expected an operator")

    def value(self) -> str:
        self.skip()
        if self.s.startswith('"', self.i):
            out = []
            j = self.i + 1
            while j < len(self.s):
                ch = self.s[j]
                if ch == "\\" and j + 1 < len(self.s):
                    out.append(self.s[j + 1])
                    j += 2
                    continue
                if ch == '"':
                    self.i = j + 1
                    return "".join(out)
                out.append(ch)
                j += 1
            raise self.error('unterminated "')
        m = _BARE_VALUE.match(self.s, self.i)
        if not m:
            raise self.error("expected a value")
        self.i = m.end()
        return m.group(0)


def column_of(name: str, wire_type: str | None = None, aggregation: str | None = None) -> Column:
    """A column from the separate name/type/aggregation fields of a sort request."""
    type_ = None if not wire_type else TYPES_BY_WIRE.get(wire_type) or _EXTRA_TYPES.get(wire_type) or wire_type
    agg = aggregation.lower() if aggregation and aggregation.lower() in AGGREGATIONS else None
    return Column(name, type_, agg)


def parse(text: str | None) -> Expr | None:
    """Parse NQL text; ``None`` for an empty query (matches everything)."""
    if not text:
        return None
    return _Parser(text).parse()


# ---------------------------------------------------------------- evaluation

_MISSING = object()
_STATE_FROM_API = {"running": "active", "idle": "inactive"}


def column_value(run: Run, col: Column) -> Any:
    """The value a filter or a sort sees for one run, or ``_MISSING``."""
    attr = run.attributes.get(col.name)
    if attr is None:
        return _MISSING
    if col.type is not None and col.type != attr.type and {col.type, attr.type} != {"int", "float"}:
        return _MISSING
    if not attr.is_series:
        return attr.value
    values = [p.value for p in attr.value if not p.is_preview] or [p.value for p in attr.value]
    if not values:
        return _MISSING
    agg = col.aggregation or "last"
    if agg == "last":
        return values[-1]
    if attr.type != "float_series":
        return _MISSING
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    if agg == "average":
        return statistics.fmean(values)
    if agg == "variance":
        return statistics.pvariance(values)
    return _MISSING


def _parse_datetime(text: str) -> dt.datetime | None:
    try:
        return ms_datetime(dt.datetime.fromtimestamp(float(text) / 1000, tz=dt.UTC))
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def _coerce(actual: Any, text: str) -> Any:
    """Turn the filter's text into the type of the run's value (None if it cannot be)."""
    if isinstance(actual, bool):
        return {"true": True, "false": False}.get(text.strip().lower())
    if isinstance(actual, (int, float)):
        try:
            return float(text)
        except ValueError:
            return None
    if isinstance(actual, dt.datetime):
        return _parse_datetime(text)
    return text


def _compare(actual: Any, op: str, text: str) -> bool:
    if isinstance(actual, frozenset):
        if op == "CONTAINS":
            return text in actual
        if op == "NOT_CONTAINS":
            return text not in actual
        if op == "MATCHES":
            return any(re.search(text, v) for v in actual)
        if op == "NOT_MATCHES":
            return not any(re.search(text, v) for v in actual)
        if op in ("==", "!="):
            return (text in actual) == (op == "==")
        return False
    if op in ("MATCHES", "NOT_MATCHES", "CONTAINS", "NOT_CONTAINS"):
        s = actual if isinstance(actual, str) else str(actual)
        hit = bool(re.search(text, s)) if op.endswith("MATCHES") else text in s
        return hit != op.startswith("NOT_")
    if not isinstance(actual, (str, int, float, dt.datetime)):
        return False  # histograms, files: only EXISTS means anything
    other = _coerce(actual, text)
    if other is None:
        return False
    a: Any = float(actual) if isinstance(actual, (int, float)) and not isinstance(actual, bool) else actual
    if isinstance(a, float) and (math.isnan(a) or math.isnan(other)):
        return op == "!="
    if op == "==":
        return a == other
    if op == "!=":
        return a != other
    if isinstance(a, bool):
        return False
    if op == ">":
        return a > other
    if op == ">=":
        return a >= other
    if op == "<":
        return a < other
    if op == "<=":
        return a <= other
    raise NqlError(f"unknown operator {op}")


def matches(expr: Expr | None, run: Run) -> bool:
    if expr is None:
        return True
    if isinstance(expr, BoolOp):
        if expr.op == "AND":
            return all(matches(p, run) for p in expr.parts)
        return any(matches(p, run) for p in expr.parts)
    if isinstance(expr, Not):
        return not matches(expr.inner, run)
    if isinstance(expr, Exists):
        return column_value(run, expr.column) is not _MISSING
    value = column_value(run, expr.column)
    if value is _MISSING:
        return False
    text = expr.value
    if expr.column.run_state:
        text = _STATE_FROM_API.get(text, text)
    return _compare(value, expr.op, text)


def filter_runs(query: str | None, runs: list[Run]) -> list[Run]:
    expr = parse(query)
    return [r for r in runs if matches(expr, r)]


def sort_key(run: Run, col: Column) -> tuple[int, Any]:
    """Missing values sort last in either direction is not what Neptune does; they sort first here."""
    value = column_value(run, col)
    if value is _MISSING or value is None:
        return (0, 0)
    if isinstance(value, dt.datetime):
        return (1, value.timestamp())
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (1, -math.inf if math.isnan(value) else value)
    if isinstance(value, frozenset):
        return (2, ",".join(sorted(value)))
    return (2, str(value))
