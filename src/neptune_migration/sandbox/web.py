"""The small HTTP toolkit the API layers share: request and reply objects and a regex router."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import parse_qs


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    match: re.Match[str] | None = None

    @classmethod
    def build(cls, method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
        path, _, qs = target.partition("?")
        return cls(method, path, parse_qs(qs, keep_blank_values=True), headers, body)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def need_arg(self, name: str) -> str:
        value = self.arg(name)
        if value is None:
            raise HttpError(400, f"missing query parameter {name}")
        return value

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise HttpError(400, f"body is not JSON: {e}") from e

    def json_or_none(self) -> Any:
        ctype = self.headers.get("content-type", "")
        if not self.body or ("json" not in ctype and self.body[:1] not in (b"{", b"[")):
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # A body too big to hold: `length` bytes read from `stream` in chunks while sending (then closed).
    stream: BinaryIO | None = None
    length: int = 0

    @classmethod
    def streamed(cls, stream: BinaryIO, length: int, content_type: str, status: int = 200) -> Reply:
        return cls(status, b"", content_type, stream=stream, length=length)

    @classmethod
    def json(cls, data: Any, status: int = 200, *, allow_nan: bool = False) -> Reply:
        # allow_nan: the 1.x client parses replies with Python's json, which reads NaN and Infinity
        return cls(status, json.dumps(data, allow_nan=allow_nan).encode(), "application/json")

    @classmethod
    def proto(cls, message: Any) -> Reply:
        return cls(200, message.SerializeToString(), "application/x-protobuf")

    @classmethod
    def error(cls, status: int, message: str) -> Reply:
        return cls.json({"code": status, "errorType": "SANDBOX", "message": message, "title": message}, status)


Handler = Callable[[Request], Reply]


@dataclass
class Router:
    routes: list[tuple[str, re.Pattern[str], Handler]] = field(default_factory=list)

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method.upper(), re.compile(pattern + r"\Z"), handler))

    def resolve(self, method: str, path: str) -> tuple[Handler, re.Match[str]] | None:
        for m, pattern, handler in self.routes:
            if m != method.upper():
                continue
            found = pattern.match(path)
            if found:
                return handler, found
        return None
