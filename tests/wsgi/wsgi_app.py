"""A plain WSGI app under AegisWSGIMiddleware, for the gunicorn tests (options
from AEGIS_* variables; the SQLite file in the working directory)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from aegis_mw.wsgi import AegisWSGIMiddleware


def chunks() -> Iterator[bytes]:
    yield b"one "
    yield b"two"


def routes(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path.startswith("/items/"):
        environ["aegis.route"] = "/items/{item_id}"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"item"]
    if path == "/stream":
        environ["aegis.route"] = "/stream"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return chunks()
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not here"]


app = AegisWSGIMiddleware(routes, sink="sqlite:///aegis.db")
