"""Trace and span ids on the records of ASGI requests and WebSocket sessions:
from OpenTelemetry's own ASGI instrumentation around the app (its SDK
exporting the spans it made), else from the request's traceparent header."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded, recorded_sessions
from tests.harness import Exchange, call, http_scope, websocket_scope

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("hot_path")]

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = (b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())


def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def boom(request: Any) -> PlainTextResponse:
    raise RuntimeError("boom")


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.receive()  # the disconnect


def starlette_app(aegis: Aegis) -> Starlette:
    app = Starlette(
        routes=[Route("/items/{id}", ok), Route("/boom", boom), WebSocketRoute("/ws", chat)]
    )
    app.add_middleware(AegisMiddleware, aegis=aegis)
    return app


async def test_a_traceparent_header_links_the_record_to_the_callers_span(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis()
    app = starlette_app(aegis)
    await call(app, http_scope("/items/1", headers=[(b"accept", b"*/*"), TRACEPARENT]))
    await call(app, http_scope("/items/2"))
    traced, plain = recorded(aegis)
    assert (traced.path, traced.trace_id, traced.span_id) == ("/items/1", TRACE, PARENT)
    assert (plain.path, plain.trace_id, plain.span_id) == ("/items/2", None, None)
    assert traced.to_json()["trace_id"] == TRACE


@pytest.mark.parametrize(
    "value",
    [b"00-zz", f"00-{TRACE.upper()}-{PARENT}-01".encode(), f"ff-{TRACE}-{PARENT}-01".encode(),
     f"00-{'0' * 32}-{PARENT}-01".encode(), b"\xff" * 60],
)  # fmt: skip
async def test_a_malformed_traceparent_is_ignored_and_the_request_recorded(
    make_aegis: Callable[..., Aegis], value: bytes
) -> None:
    aegis = make_aegis()
    exchange = await call(
        starlette_app(aegis), http_scope("/items/1", headers=[(b"traceparent", value)])
    )
    assert exchange.status == 200 and exchange.body == b"ok"
    [record] = recorded(aegis)
    assert (record.route, record.trace_id, record.span_id) == ("/items/{id}", None, None)
    assert aegis.stats().dropped["invalid"] == 0


async def test_trace_context_off_reads_nothing(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(trace_context=False)
    await call(starlette_app(aegis), http_scope("/items/1", headers=[TRACEPARENT]))
    [record] = recorded(aegis)
    assert (record.trace_id, record.span_id) == (None, None)


async def test_opentelemetrys_server_span_around_the_app_is_the_records(
    make_aegis: Callable[..., Aegis], exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """OpenTelemetry's ASGI middleware outside ours: the record carries the id
    of the server span it exported, in the trace the caller's header started."""
    provider, spans = exporter
    aegis = make_aegis()
    app = OpenTelemetryMiddleware(starlette_app(aegis), tracer_provider=provider)
    await call(app, http_scope("/items/1", headers=[TRACEPARENT]))
    await call(app, http_scope("/items/2"))
    servers = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert len(servers) == 2
    by_parent = {s.parent is not None: s for s in servers}
    joined, started = by_parent[True], by_parent[False]
    assert f"{joined.context.trace_id:032x}" == TRACE  # it joined the caller's trace
    traced, fresh = recorded(aegis)
    assert (traced.trace_id, traced.span_id) == (
        f"{joined.context.trace_id:032x}", f"{joined.context.span_id:016x}",
    )  # fmt: skip
    assert traced.span_id != PARENT  # the server's span, not the caller's
    assert (fresh.trace_id, fresh.span_id) == (
        f"{started.context.trace_id:032x}", f"{started.context.span_id:016x}",
    )  # fmt: skip


async def test_a_request_that_raises_keeps_its_trace(
    make_aegis: Callable[..., Aegis], exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, spans = exporter
    aegis = make_aegis()
    app = OpenTelemetryMiddleware(starlette_app(aegis), tracer_provider=provider)
    with pytest.raises(RuntimeError):
        await call(app, http_scope("/boom", headers=[TRACEPARENT]))
    [server] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    [record] = recorded(aegis)
    assert record.status == 500 and record.error.startswith("RuntimeError")
    assert (record.trace_id, record.span_id) == (TRACE, f"{server.context.span_id:016x}")


async def test_a_websocket_session_carries_its_handshakes_trace(
    make_aegis: Callable[..., Aegis], exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, spans = exporter
    aegis = make_aegis()
    app = starlette_app(aegis)
    exchange = Exchange([{"type": "websocket.connect"}, {"type": "websocket.disconnect"}])
    await app(websocket_scope("/ws", headers=[TRACEPARENT]), exchange.receive, exchange.send)
    traced = OpenTelemetryMiddleware(app, tracer_provider=provider)
    exchange = Exchange([{"type": "websocket.connect"}, {"type": "websocket.disconnect"}])
    await traced(websocket_scope("/ws"), exchange.receive, exchange.send)
    [server] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    by_header, by_span = recorded_sessions(aegis)
    assert (by_header.trace_id, by_header.span_id) == (TRACE, PARENT)
    assert (by_span.trace_id, by_span.span_id) == (
        f"{server.context.trace_id:032x}", f"{server.context.span_id:016x}",
    )  # fmt: skip


async def test_opentelemetry_inside_ours_is_read_when_the_response_starts(
    make_aegis: Callable[..., Aegis], exporter: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """OpenTelemetry's ASGI middleware inside ours: its spans are current only
    while the app runs, so the record takes the one current when the response
    starts (its span of that send), in the request's trace; the caller's
    header alone would give the caller's span."""
    provider, spans = exporter
    aegis = make_aegis()
    app = Starlette(routes=[Route("/items/{id}", ok)])
    app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
    app.add_middleware(AegisMiddleware, aegis=aegis)  # added last: outermost
    await call(app, http_scope("/items/1", headers=[TRACEPARENT]))
    await call(app, http_scope("/items/2"))
    finished = spans.get_finished_spans()
    servers = [s for s in finished if s.kind is SpanKind.SERVER]
    traced, fresh = recorded(aegis)
    for record, server in zip(
        (traced, fresh), sorted(servers, key=lambda s: s.parent is None), strict=True
    ):
        assert record.trace_id == f"{server.context.trace_id:032x}"
        ids = {f"{s.context.span_id:016x}" for s in finished
               if s.context.trace_id == server.context.trace_id}  # fmt: skip
        assert record.span_id in ids
    assert traced.trace_id == TRACE and traced.span_id != PARENT
