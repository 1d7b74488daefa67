"""How ``tracing``'s server spans are named (docs/opentelemetry.md).

OpenTelemetry's own ASGI and WSGI middleware name a span by the method and
the raw path, which is not bounded; the semantic conventions ask for
``{method} {http.route}``, or the method alone while no route is known.
Our middleware knows the route template once the app has routed the
request, so the span starts with the method alone and is renamed then.
"""

from __future__ import annotations

from typing import Any

from .labels import STANDARD_METHODS
from .record import UNMATCHED_ROUTE


def span_method(method: object) -> str:
    """The method as a span's name has it: a standard one, else ``HTTP``."""
    return method if type(method) is str and method in STANDARD_METHODS else "HTTP"


def name_span(span: Any, method: object, route: object) -> None:
    """Name a request's span by the route template it took (none, or a
    request no route matched: left as it is) and set ``http.route``."""
    if type(route) is str and route and route != UNMATCHED_ROUTE and span.is_recording():
        span.update_name(f"{span_method(method)} {route}")
        span.set_attribute("http.route", route)
