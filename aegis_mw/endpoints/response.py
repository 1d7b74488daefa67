"""What a mounted route answers, before any server sees it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(
        cls,
        status: int,
        payload: Any,
        content_type: str = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, body, content_type, headers or [])

    @classmethod
    def error(cls, status: int, code: str, message: str, **headers: str) -> Response:
        """``{"error": {"code", "message"}}``, the shape of every error we answer."""
        extra = [(name.replace("_", "-"), value) for name, value in headers.items()]
        return cls.json(status, {"error": {"code": code, "message": message}}, headers=extra)
