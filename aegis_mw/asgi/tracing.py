"""``tracing = true`` for ASGI apps: a server span for each HTTP request, made by
OpenTelemetry's own ASGI middleware around the recording.

The span starts named by the method alone (``GET``); when the response
starts, the route template the request took renames it (``GET
/items/{item_id}``): see ``core/server_spans.py``.

No span for what is not the app's traffic: our routes (``/metrics``, health,
the API, the dashboard, the stream) and ``exclude_paths`` pass by without
one, and so does a request that already has a server span current when it
arrives (an instrumentation of the app's own outside ours: it traces the
request, and the record links to its span). A WebSocket session of the app
gets one span for the whole session, named when the app accepts (or
refuses) it. The recording runs inside the span, so each record carries the
span's trace and span ids (``trace_context``). OpenTelemetry's per-message
``send``/``receive`` spans are left out: one span per request or session.

``tracing_request_hook`` is OpenTelemetry's ``server_request_hook``
(``(span, scope)``, as the span starts); ``tracing_response_hook`` is called
``(span, scope, message)`` with the server span and the message that names
it (OpenTelemetry's own ``client_response_hook`` gets the per-message spans
left out here).
"""

from __future__ import annotations

from contextlib import suppress
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from ..core.server_spans import SESSION, name_span, span_method
from ..core.tracer_provider import EXTRA_HINT
from ..types import Receive, Scope, Send
from .middleware import AegisMiddleware

if TYPE_CHECKING:
    from collections.abc import Callable


#: Set around a traced request: [whether the recording, and so the app, ran].
_ENTERED: ContextVar[list[bool] | None] = ContextVar("aegis_traced_entered", default=None)


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The name a span starts with: the request's method (a session's
    ``WEBSOCKET``), never its path."""
    return _prefix(scope), {}


def _prefix(scope: Scope) -> str:
    return span_method(scope.get("method")) if scope["type"] == "http" else SESSION


#: What the app sends once it has routed the request: a response's start, or a
#: session's accept, or its refusal (a close, or a denial response).
_ROUTED = frozenset(
    ("http.response.start", "websocket.accept", "websocket.close", "websocket.http.response.start")
)


class _Recording:
    """The middleware's own recording, inside the span; names the span once
    the app has routed the request: when the response starts (OpenTelemetry
    ends the span with the response's last byte, before the app returns),
    or when the app returns without a response."""

    def __init__(
        self,
        middleware: AegisMiddleware,
        current_span: Callable[[], Any],
        response_hook: Callable[..., None] | None,
    ) -> None:
        self.middleware = middleware
        self.current_span = current_span
        self.response_hook = response_hook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        entered = _ENTERED.get()
        if entered is not None:
            entered[0] = True
        middleware = self.middleware
        span = self.current_span()  # the server span, made for this request
        named = False

        def name() -> None:
            nonlocal named
            named = True
            # A span left with its first name must not fail the request.
            with suppress(Exception):
                name_span(span, _prefix(scope), middleware.route_of(scope))

        response_hook = self.response_hook

        if response_hook is not None and not span.get_span_context().is_valid:
            response_hook = None  # OpenTelemetry made no span (instrumentation suppressed)

        async def naming_send(message: Any) -> None:
            if not named and message["type"] in _ROUTED:
                name()
                if response_hook is not None:
                    response_hook(span, scope, message)
            await send(message)

        try:
            await AegisMiddleware.__call__(middleware, scope, receive, naming_send)
        finally:
            if not named:
                name()


class TracedAegisMiddleware(AegisMiddleware):
    """:class:`AegisMiddleware` with ``tracing`` on (the class of such an instance)."""

    _spans: Any
    _span_valid: Callable[[], bool]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (
            (kind == "http" or (kind == "websocket" and scope["path"] != self._ws_path))
            and not self._excluded.excluded(scope["path"])
            and not self._span_valid()
        ):
            entered = [False]
            token = _ENTERED.set(entered)
            try:
                await self._spans(scope, receive, send)
                return
            except Exception:
                if entered[0]:
                    raise  # the app's (or ours after it ran): as without tracing
                # OpenTelemetry failed before the app ran (a query string
                # that is not UTF-8, say): the request goes on untraced.
            finally:
                _ENTERED.reset(token)
        await AegisMiddleware.__call__(self, scope, receive, send)


def attach_tracing(middleware: AegisMiddleware) -> None:
    """Turn ``middleware`` into a :class:`TracedAegisMiddleware` (``tracing`` on)."""
    provider = middleware.aegis.tracer_setup.provider  # first: names the extra if missing
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.metrics import NoOpMeterProvider
    except ImportError as missing:
        raise ConfigError("tracing", "true", EXTRA_HINT) from missing

    current_span = trace.get_current_span

    def span_valid() -> bool:
        return bool(current_span().get_span_context().is_valid)

    request_hook, response_hook = middleware.aegis.tracing_hooks
    spans = OpenTelemetryMiddleware(
        _Recording(middleware, current_span, response_hook),
        default_span_details=_span_details,
        server_request_hook=request_hook,
        tracer_provider=provider,
        # Its HTTP metrics are not what the option asks for (an app with a
        # global meter provider would get them): ours are on /metrics.
        meter_provider=NoOpMeterProvider(),
        exclude_spans=["receive", "send"],
    )
    middleware.__class__ = TracedAegisMiddleware
    assert isinstance(middleware, TracedAegisMiddleware)
    middleware._spans = spans
    middleware._span_valid = span_valid
