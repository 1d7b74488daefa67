"""Naming the server span ``tracing = true`` makes for a request, on every side.

OpenTelemetry's instrumentations name a span by the method and the raw path,
which is not bounded; the semantic conventions ask for ``{method}
{http.route}``, or the method alone while no route is known. The span is
created before the app routes the request, so it starts named by the method
alone (``GET``) and is renamed once the route template is known
(``GET /items/{item_id}``). A WebSocket session's span is named
``WEBSOCKET`` then ``WEBSOCKET /ws/chat/{room}``: it covers the whole session,
not one request. The span is duck-typed: OpenTelemetry is not imported here.
"""

from __future__ import annotations

from typing import Any

from .labels import STANDARD_METHODS
from .record import UNMATCHED_ROUTE

#: What a WebSocket session's span is named by in place of a method.
SESSION = "WEBSOCKET"


def span_method(method: object) -> str:
    """The method as a span's name has it: a standard one, else ``HTTP``."""
    return method if type(method) is str and method in STANDARD_METHODS else "HTTP"


def name_span(span: Any, prefix: str, route: object) -> None:
    """Name a request's span ``{prefix} {route}`` (``prefix``: :func:`span_method`,
    or :data:`SESSION`) by the route template it took (none, or a request no
    route matched: left as it is) and set ``http.route``."""
    if type(route) is str and route and route != UNMATCHED_ROUTE and span.is_recording():
        span.update_name(f"{prefix} {route}")
        span.set_attribute("http.route", route)
