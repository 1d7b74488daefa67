"""Trace and span ids on the records of WSGI requests: from OpenTelemetry's
own WSGI instrumentation around the app (its SDK exporting the spans it
made), else from the request's traceparent header."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aegis_mw import Aegis
from aegis_mw.testing import recorded
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.wsgi.test_middleware import environ_for, serve

pytestmark = pytest.mark.usefixtures("hot_path")

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    environ["aegis.route"] = "/items/{id}"
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [(TRACEPARENT, (TRACE, PARENT)), (None, (None, None)), ("00-zz", (None, None)),
     (TRACEPARENT.upper(), (None, None)), (f"{TRACEPARENT},{TRACEPARENT}", (None, None))],
)  # fmt: skip
def test_a_traceparent_header_links_the_record_to_the_callers_span(
    make_aegis: Callable[..., Aegis], header: str | None, expected: tuple[Any, Any]
) -> None:
    aegis = make_aegis()
    extra = {} if header is None else {"HTTP_TRACEPARENT": header}
    response, body = serve(AegisWSGIMiddleware(app, aegis=aegis), environ_for("/items/1", **extra))
    assert (response.status, body) == ("200 OK", b"ok")
    [record] = recorded(aegis)
    assert (record.route, record.trace_id, record.span_id) == ("/items/{id}", *expected)


def test_trace_context_off_reads_nothing(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(trace_context=False)
    serve(AegisWSGIMiddleware(app, aegis=aegis), environ_for(HTTP_TRACEPARENT=TRACEPARENT))
    [record] = recorded(aegis)
    assert (record.trace_id, record.span_id) == (None, None)


def test_opentelemetrys_server_span_around_the_app_is_the_records(
    make_aegis: Callable[..., Aegis], exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, spans = exporter
    aegis = make_aegis()
    traced = OpenTelemetryMiddleware(
        AegisWSGIMiddleware(app, aegis=aegis), tracer_provider=provider
    )
    serve(traced, environ_for("/items/1", HTTP_TRACEPARENT=TRACEPARENT))
    serve(traced, environ_for("/items/2"))
    with pytest.raises(RuntimeError):
        serve(traced, environ_for("/boom", HTTP_TRACEPARENT=TRACEPARENT))
    joined, started, failed = spans.get_finished_spans()
    assert f"{joined.context.trace_id:032x}" == TRACE and joined.parent is not None
    records = recorded(aegis)
    assert [(r.trace_id, r.span_id) for r in records] == [
        (f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")
        for s in (joined, started, failed)
    ]
    assert records[2].status == 500 and records[2].trace_id == TRACE
