"""``tracing = true`` for Django (``settings.AEGIS``): a server span for each
request, as for WSGI apps (``wsgi/tracing.py``), under Django's WSGI and
ASGI handlers alike.

The span is current while the rest of ``MIDDLEWARE`` and the view run (their
logging and outgoing calls see it, and the record carries its ids), under
the caller's ``traceparent`` when one came. It ends where the record's clock
stops: when Django closes the response (a streamed body's end), when
``get_response`` raises, or when Django's ASGI handler cancels the request's
task (the client went away). Named by the resolver match's pattern as the
record is (``GET /items/{item_id}``). No span for our routes,
``exclude_paths``, or a request that arrives with a span current already. A
traced middleware takes the pure-Python path: a span costs far more than the
compiled one saves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest

from ...wsgi.tracing import ServerSpans
from .middleware import AegisMiddleware

#: Where a traced request keeps its span until the record ends.
SPAN_ATTRIBUTE = "_aegis_span"


class TracedAegisMiddleware(AegisMiddleware):
    """Django's :class:`AegisMiddleware` with ``tracing`` on (the class of such an instance)."""

    _spans: ServerSpans
    #: The app's hooks, guarded: ``(span, request)`` as the span starts,
    #: ``(span, request, response)`` with the response, as OpenTelemetry's
    #: Django instrumentation calls its own.
    _request_hook: Callable[..., None] | None
    _response_hook: Callable[..., None] | None

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._traced_acall(request)
        leave = self._open(request)
        try:
            return self._answered(request, AegisMiddleware.__call__(self, request))
        finally:
            if leave is not None:
                leave()

    async def _traced_acall(self, request: HttpRequest) -> Any:
        leave = self._open(request)
        try:
            return self._answered(request, await self._acall(request))
        finally:
            if leave is not None:
                leave()

    def _answered(self, request: HttpRequest, response: Any) -> Any:
        """The response, its headers captured on the request's span while it
        is open (the span ends at the response's close, where they are gone),
        and the response hook called ``(span, request, response)``."""
        hook = self._response_hook
        if self._spans.headers.responses or hook is not None:
            span = request.__dict__.get(SPAN_ATTRIBUTE)
            if span is not None:
                if self._spans.headers.responses:
                    items = getattr(response, "items", None)
                    if callable(items):
                        self._spans.headers.response(span, _pairs(items))
                if hook is not None:
                    try:
                        hook(span, request, response)
                    except BaseException:  # not an Exception (those it records)
                        # Nobody sends this response: closed here, so its
                        # record and span end.
                        response.close()
                        raise
        return response

    def _open(self, request: HttpRequest) -> Any:
        """Start the request's span, current until the returned callable is
        called; None for a request that is not traced."""
        path = request.path_info
        if path in self.routes.handlers or self._excluded.excluded(path) or self._spans.current():
            return None
        try:
            meta = request.META
            if "wsgi.url_scheme" not in meta:  # Django's ASGI handler: its META has none
                meta = {**meta, "wsgi.url_scheme": request.scheme}
            span, leave = self._spans.open(meta, getattr(request, "scope", None))
        except Exception:  # OpenTelemetry failed on this request: untraced
            return None
        setattr(request, SPAN_ATTRIBUTE, span)
        if self._request_hook is not None:
            try:
                self._request_hook(span, request)
            except BaseException:  # not an Exception (those it records): as if untraced
                leave()
                self._abandoned(request)
                raise
        return leave

    def _closed(self, request: HttpRequest, item: list[Any]) -> None:
        AegisMiddleware._closed(self, request, item)
        self._end(request, item, None)

    def _raised(self, request: HttpRequest, item: Any, failure: BaseException) -> None:
        AegisMiddleware._raised(self, request, item, failure)
        self._end(request, item, failure)

    def _abandoned(self, request: HttpRequest) -> None:
        span = request.__dict__.pop(SPAN_ATTRIBUTE, None)
        if span is not None:
            self._spans.abandon(span)

    def _end(self, request: HttpRequest, item: Any, failure: BaseException | None) -> None:
        span = request.__dict__.pop(SPAN_ATTRIBUTE, None)
        if span is not None:
            # Django answers with the status the record has (500 for an exception).
            self._spans.respond(span, f"{item[3]} ", ())
            self._spans.end(span, item, failure)


def _pairs(items: Any) -> Any:
    """A Django response's headers as ``(name, value)`` pairs; () when they
    cannot be read (a response object of the app's own)."""
    try:
        return list(items())
    except Exception:
        return ()


def attach_tracing(middleware: AegisMiddleware) -> None:
    """Turn ``middleware`` into a :class:`TracedAegisMiddleware` (``tracing`` on)."""
    spans = ServerSpans(middleware.aegis.tracer_setup.provider)
    middleware.__class__ = TracedAegisMiddleware
    assert isinstance(middleware, TracedAegisMiddleware)
    middleware._spans = spans
    middleware._request_hook, middleware._response_hook = middleware.aegis.tracing_hooks
