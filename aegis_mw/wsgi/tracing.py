"""``tracing = true`` for WSGI apps (Flask, any WSGI app): a server span for
each request, made by OpenTelemetry's own WSGI middleware around the
recording, as :mod:`aegis_mw.asgi.tracing` does for ASGI.

OpenTelemetry's WSGI middleware takes no name for the span it starts (it
names it by the raw path); its request hook, called right after, renames it
by the method alone. The route template renames it once known
(:mod:`aegis_mw.core.span_names`): when the app returns its response (Flask
has routed and closed its request by then), else when the server closes the
response (a streamed one), just before OpenTelemetry ends the span. No span
for our routes, ``exclude_paths``, or a request another instrumentation
traces already.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from ..core.span_names import name_span, span_method
from ..types import StartResponse
from .middleware import ROUTE_KEY, AegisWSGIMiddleware


class TracedAegisWSGIMiddleware(AegisWSGIMiddleware):
    """:class:`AegisWSGIMiddleware` with ``tracing`` on (the class of such an instance)."""

    _spans: Any
    _span_valid: Callable[[], bool]

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        excluded = self._excluded
        if (
            path in excluded.literal
            or (excluded.match is not None and excluded.match(path))
            or self._span_valid()
        ):
            return AegisWSGIMiddleware.__call__(self, environ, start_response)
        answer: Iterable[bytes] = self._spans(environ, start_response)
        return answer


def attach_tracing(middleware: AegisWSGIMiddleware) -> None:
    """Turn ``middleware`` into a :class:`TracedAegisWSGIMiddleware` (``tracing`` on)."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    provider = middleware.aegis.tracer_setup.provider
    current_span = trace.get_current_span

    def span_valid() -> bool:
        return bool(current_span().get_span_context().is_valid)

    def named(span: Any, environ: dict[str, Any]) -> bool:
        """Whether the route is known now (the span then named by it)."""
        route = environ.get(ROUTE_KEY)
        if route is None and middleware.route_reader is not None:
            route = middleware.route_reader(environ)
        if route is None:
            return False
        name_span(span, environ.get("REQUEST_METHOD"), route)
        return True

    def recording(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        span = current_span()  # the server span, made for this request
        result = AegisWSGIMiddleware.__call__(middleware, environ, start_response)
        try:
            if named(span, environ):
                return result
        except Exception:  # a span left as it is must not fail the request
            return result
        return NamedAtClose(result, lambda: named(span, environ))

    def started(span: Any, environ: dict[str, Any]) -> None:
        with suppress(Exception):  # a span left as it is must not fail the request
            if span.is_recording():
                span.update_name(span_method(environ.get("REQUEST_METHOD")))

    spans = OpenTelemetryMiddleware(recording, request_hook=started, tracer_provider=provider)
    middleware.__class__ = TracedAegisWSGIMiddleware
    assert isinstance(middleware, TracedAegisWSGIMiddleware)
    middleware._spans = spans
    middleware._span_valid = span_valid


class NamedAtClose:
    """A response whose route was not known when the app returned it (a
    stream): the span is named when the server closes it, before
    OpenTelemetry, which closes it first, ends the span."""

    def __init__(self, result: Iterable[bytes], name: Callable[[], object]) -> None:
        self._result = result
        self._name = name

    def __iter__(self) -> Any:
        return iter(self._result)

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        finally:
            with suppress(Exception):
                self._name()
