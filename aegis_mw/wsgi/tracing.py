"""``tracing = true`` for WSGI apps (Flask included): a server span for each
request around the recording, with the request and response attributes of
OpenTelemetry's WSGI instrumentation.

Not OpenTelemetry's WSGI middleware itself: it hands the server a generator
of its own for every response, so a file response loses the server's
``sendfile()`` and a list its length, and a response the server closes
without iterating never ends its span nor detaches its context. Here the
server gets what the middleware hands it untraced (the same objects), and
the span ends where the record's clock stops: when the server closes the
response (PEP 3333's ``close()``), or when the app raises.

The span is current while the app is called (the view, its logging and its
outgoing calls see it, and the record carries its ids), under the caller's
``traceparent`` when one came. A body the server iterates after the app
returned (a streamed response) is iterated outside the span's context; the
span still covers it. Named as on the ASGI side (``core/server_spans.py``):
the method, then the route template once the request is recorded.
``tracing_request_hook`` is called ``(span, environ)`` as the span starts,
``tracing_response_hook`` ``(span, environ, status, headers)`` as the
response starts, as OpenTelemetry's WSGI middleware calls its hooks.

No span for our routes, ``exclude_paths``, or a request that arrives with a
span current already (an instrumentation of the app's own outside ours).
The middleware takes the pure-Python request path: a span costs far more
than the compiled path saves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from ..core.errors import ConfigError
from ..core.server_spans import name_span, span_method
from ..core.tracer_provider import EXTRA_HINT
from .header_capture import HeaderCapture
from .middleware import AegisWSGIMiddleware, StartResponse

#: Where a traced request's span waits for the request to end.
SPAN_KEY = "aegis.span"


class _Traced:
    """``environ[SPAN_KEY]``: the span, and the middleware that ends it (an
    inner middleware on the same environ leaves it alone)."""

    __slots__ = ("owner", "span")

    def __init__(self, owner: TracedAegisWSGIMiddleware, span: Any) -> None:
        self.owner = owner
        self.span = span


class TracedAegisWSGIMiddleware(AegisWSGIMiddleware):
    """:class:`AegisWSGIMiddleware` with ``tracing`` on (the class of such an instance)."""

    _spans: ServerSpans

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if type(environ) is dict:
            if not self._started:
                self._start()  # the first request may give our paths back to the app
            spans = self._spans
            if not (
                self._excluded.excluded(environ.get("PATH_INFO", "") or "/")
                or spans.current()
                or SPAN_KEY in environ  # another's span waits for its response's close
            ):
                try:
                    span, leave = spans.open(environ)
                except Exception:
                    # OpenTelemetry failed on this environ (a SERVER_PORT that
                    # is not a number, say): the request goes on untraced.
                    pass
                else:
                    environ[SPAN_KEY] = _Traced(self, span)
                    try:
                        traced_start = spans.start_response(span, start_response, environ)
                        return self.call_python(environ, traced_start)
                    finally:
                        leave()
        return AegisWSGIMiddleware.__call__(self, environ, start_response)

    def _queue(self, environ: Any, item: Any, failure: BaseException | None) -> None:
        AegisWSGIMiddleware._queue(self, environ, item, failure)
        span = self._own_span(environ)
        if span is not None:
            self._spans.end(span, item, failure)

    def _abandoned(self, environ: Any) -> None:
        span = self._own_span(environ)
        if span is not None:
            self._spans.abandon(span)

    def _own_span(self, environ: Any) -> Any:
        """The span this middleware left in ``environ``, taken out; or None."""
        traced = environ.get(SPAN_KEY) if type(environ) is dict else None
        if type(traced) is _Traced and traced.owner is self:
            del environ[SPAN_KEY]
            return traced.span
        return None


class ServerSpans:
    """OpenTelemetry's parts a traced WSGI request (or Django's) uses: its
    tracer on the pipeline's provider, and its WSGI instrumentation's
    attributes. Raises a :class:`ConfigError` naming the extra when one of
    them is not installed."""

    def __init__(
        self,
        provider: Any,
        request_hook: Callable[..., Any] | None = None,
        response_hook: Callable[..., Any] | None = None,
    ) -> None:
        #: The app's hooks, guarded (``Aegis.tracing_hooks``): ``(span,
        #: environ)`` as a span starts, ``(span, environ, status, headers)`` as
        #: its response starts (Django calls its own).
        self.request_hook = request_hook
        self.response_hook = response_hook
        try:
            from opentelemetry import context, propagate, trace
            from opentelemetry.instrumentation.wsgi import (
                add_response_attributes,
                collect_request_attributes,
                wsgi_getter,
            )
            from opentelemetry.instrumentation.wsgi.version import __version__
            from opentelemetry.trace.status import Status, StatusCode

            #: The headers the capture variables name (read now, once).
            self.headers = HeaderCapture()
        except ImportError as missing:
            raise ConfigError("tracing", "true", EXTRA_HINT) from missing
        self._conventions, schema_url = _semantic_conventions()
        self._tracer = trace.get_tracer(
            "opentelemetry.instrumentation.wsgi", __version__, provider, schema_url=schema_url
        )
        self._current_span = trace.get_current_span
        self._in_context = trace.set_span_in_context
        self._attach, self._detach = context.attach, context.detach
        self._extract = propagate.extract
        self._server_kind = trace.SpanKind.SERVER
        self._request_attributes: Any = collect_request_attributes
        self._response_attributes = add_response_attributes
        self._getter = wsgi_getter
        self._error = functools.partial(Status, StatusCode.ERROR)

    def current(self) -> bool:
        """Whether a span is current already (another instrumentation's)."""
        return bool(self._current_span().get_span_context().is_valid)

    def open(self, environ: dict[str, Any], scope: Any = None) -> tuple[Any, Callable[[], None]]:
        """A request's server span, made current in the caller's context (its
        ``traceparent``, its baggage) when one came; and what leaves it, in
        the thread (or task) that called this. ``scope``: the ASGI scope the
        environ was made from (Django's ASGI handler), where the captured
        request headers are read. Raises with nothing attached and no span
        left open."""
        attributes = self._request_attributes(environ, **self._conventions)
        caller = self._extract(environ, getter=self._getter)
        span = self._tracer.start_span(
            span_method(environ.get("REQUEST_METHOD")), context=caller, kind=self._server_kind,
            attributes=attributes,
        )  # fmt: skip
        if self.headers.requests:
            self.headers.request(span, environ, scope)
        try:
            if self.request_hook is not None:
                self.request_hook(span, environ)
            token = self._attach(self._in_context(span, caller))
        except BaseException:
            span.end()
            raise
        detach = self._detach
        return span, lambda: detach(token)

    def respond(self, span: Any, status: Any, headers: Any) -> None:
        """The response's attributes, from a WSGI status line and headers;
        never raises."""
        with suppress(Exception):  # a span's attributes never fail the request
            self._response_attributes(span, status, headers, **self._conventions)
        if self.headers.responses:
            self.headers.response(span, headers)

    def start_response(
        self, span: Any, start_response: StartResponse, environ: dict[str, Any]
    ) -> StartResponse:
        """``start_response`` that also sets the span's response attributes
        and calls the response hook (``call_python`` calls it with three
        positional arguments)."""
        respond, hook = self.respond, self.response_hook

        def start(status: Any, headers: Any, exc_info: Any = None) -> Any:
            respond(span, status, headers)
            if hook is not None:
                hook(span, environ, status, headers)
            return start_response(status, headers, exc_info)

        return start

    def end(self, span: Any, item: Any, failure: BaseException | None) -> None:
        """End a request's span as its record ends: named by its route, an
        error when the record has one; never raises (the app's exception
        must win)."""
        with suppress(Exception):
            name_span(span, span_method(item[0]), item[1])
            # The app's exception, its body's, or one its framework answered.
            if item[11] and span.is_recording():
                if failure is not None:
                    span.set_attribute("error.type", type(failure).__qualname__)
                    span.record_exception(failure)
                span.set_status(self._error(item[11]))
            span.end()

    def abandon(self, span: Any) -> None:
        """End the span of a request whose record was given up (our own
        failure, counted as an internal error); never raises."""
        with suppress(Exception):
            span.end()


def attach_tracing(middleware: AegisWSGIMiddleware) -> None:
    """Turn ``middleware`` into a :class:`TracedAegisWSGIMiddleware` (``tracing`` on)."""
    spans = ServerSpans(middleware.aegis.tracer_setup.provider, *middleware.aegis.tracing_hooks)
    middleware.__class__ = TracedAegisWSGIMiddleware
    assert isinstance(middleware, TracedAegisWSGIMiddleware)
    middleware._spans = spans
    # Every request takes the Python path, as the start-up line then says:
    # the traced ones must, and the others are our routes and excluded paths.
    middleware._compiled = None


def _semantic_conventions() -> tuple[dict[str, Any], str | None]:
    """The HTTP semantic conventions OpenTelemetry's instrumentations follow
    here (``OTEL_SEMCONV_STABILITY_OPT_IN``), as the keyword its attribute
    helpers take, and their schema URL; the helpers' defaults where the
    module that says so (not a public one) has moved."""
    try:
        from opentelemetry.instrumentation._semconv import (
            _get_schema_url,
            _OpenTelemetrySemanticConventionStability,
            _OpenTelemetryStabilitySignalType,
        )

        _OpenTelemetrySemanticConventionStability._initialize()  # type: ignore[no-untyped-call]
        mode = _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
            _OpenTelemetryStabilitySignalType.HTTP
        )
    except (ImportError, AttributeError):
        return {}, None
    return {"sem_conv_opt_in_mode": mode}, _get_schema_url(mode)
