"""The trace context of a request: which trace and span it belongs to.

The request path only picks up what it finds, as cheaply as it can, and
leaves the rest to the flusher: OpenTelemetry's current span, read straight
from OpenTelemetry's context variable where an instrumentation outside the
middleware made the request's span current, or else the raw W3C
``traceparent`` header. :func:`trace_ids` turns either into the ids stored
with the record, in the background; a malformed header is ignored, never an
error, and never costs the record.

OpenTelemetry is read without importing it on the request path: the
context variable and the key under which its API keeps the current span are
looked up once, when the middleware starts (:func:`otel_source`). If a
release of the API moves them, only OpenTelemetry's spans go unseen (the
header still counts) and a warning says so at start.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from .history import NO_SPAN_ID, NO_TRACE_ID

logger = logging.getLogger("aegis_mw")

#: The header's name as ASGI servers give it (lowercase bytes), and as WSGI
#: servers and Django give it (an environ/META key).
HEADER = b"traceparent"
ENVIRON_KEY = "HTTP_TRACEPARENT"

# version-trace_id-parent_id-flags (W3C Trace Context, level 1): lowercase
# hex; version ff is invalid; a later version may append "-" and more.
_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[^\x00-\x1f\x7f]*)?", re.ASCII
)

#: (OpenTelemetry's context variable, the current span's key), either None.
TraceSource = tuple["ContextVar[Any] | None", "str | None"]


def parse_traceparent(value: object) -> tuple[str, str] | None:
    """(trace_id, parent span id) of a valid ``traceparent`` value, else None.
    A subclass's own methods are never called: its value is what counts."""
    if isinstance(value, bytes):
        value = bytes.decode(value, "latin-1")
    if not isinstance(value, str) or str.__len__(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(str.strip(value, " \t"))
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == NO_TRACE_ID or span_id == NO_SPAN_ID:
        return None
    return trace_id, span_id


def trace_ids(trace: object) -> tuple[str | None, str | None]:
    """The stored ids of what the request path picked up: an OpenTelemetry
    span (its context, when valid) or a ``traceparent`` header's value."""
    if isinstance(trace, (bytes, str)):
        ids = parse_traceparent(trace)
    else:
        try:
            context = trace.get_span_context()  # type: ignore[attr-defined]
            ids = (
                (format(context.trace_id, "032x"), format(context.span_id, "016x"))
                if context.is_valid and type(context.trace_id) is int
                and type(context.span_id) is int and 0 < context.trace_id < 1 << 128
                and 0 < context.span_id < 1 << 64
                else None
            )  # fmt: skip
        except Exception:  # not a span after all: nothing to link
            ids = None
    return (None, None) if ids is None else ids


def otel_source() -> TraceSource:
    """Where OpenTelemetry's API keeps the current span, when it is installed
    and keeps it in a context variable (its default); (None, None) otherwise."""
    try:
        # The API's own module: the otel extra's opentelemetry-proto alone
        # makes an "opentelemetry" namespace package without it.
        installed = importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):  # no "opentelemetry" package at all
        installed = False
    if not installed:
        return None, None
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.trace import propagation
    except Exception:  # an unusable install: the header still counts
        logger.warning("aegis_mw: OpenTelemetry could not be imported", exc_info=True)
        return None, None
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    key = getattr(propagation, "_SPAN_KEY", None)
    if not isinstance(variable, ContextVar) or not isinstance(key, str):
        logger.warning(
            "aegis_mw: this OpenTelemetry API keeps its context where aegis_mw does not "
            "look; requests are linked to traces by their traceparent header only"
        )
        return None, None
    return variable, key


def current_span(source: TraceSource) -> object | None:
    """OpenTelemetry's current span, where one is current."""
    variable, key = source
    if variable is None:
        return None
    context = variable.get(None)
    # dict.get, not context.get: the dict's own entry, as the compiled path reads it.
    return dict.get(context, key) if isinstance(context, dict) else None


def response_trace(source: TraceSource, trace: object) -> object:
    """At the response's start: OpenTelemetry's span current now, where none
    was at the request's start (``trace`` is then None or a header's value),
    as an instrumentation inside the middleware makes it (Flask's)."""
    if trace is not None and type(trace) is not str and type(trace) is not bytes:
        return trace
    span = current_span(source)
    return trace if span is None else span


def asgi_trace(source: TraceSource, scope: Mapping[str, Any]) -> object | None:
    """What an ASGI request's record keeps of its trace context (see the module)."""
    span = current_span(source)
    if span is not None:
        return span
    headers = scope.get("headers")
    found: object = None
    if type(headers) is list or type(headers) is tuple:
        seen = False
        for entry in headers:
            if (
                (type(entry) is tuple or type(entry) is list)
                and len(entry) == 2
                and type(entry[0]) is bytes
                and entry[0] == HEADER
            ):
                if seen:  # two: none is to be trusted (W3C Trace Context)
                    return None
                seen = True
                found = entry[1]
    return found


def environ_trace(source: TraceSource, environ: object) -> object | None:
    """What a WSGI request's (or Django request's ``META``) record keeps."""
    span = current_span(source)
    if span is not None:
        return span
    if type(environ) is dict:
        return environ.get(ENVIRON_KEY)
    return None
