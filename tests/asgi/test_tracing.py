"""``tracing = true`` on an ASGI app: a server span per request made by
OpenTelemetry's own ASGI middleware, exported over OTLP/HTTP (configured by
the ``OTEL_*`` variables) to a real receiver on 127.0.0.1 that decodes what
arrives; named by the route template, none for our routes, excluded paths or
a request another instrumentation traces; each record linked to its span."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from aegis_mw import Aegis, AegisMiddleware, ConfigError
from aegis_mw.asgi.tracing import TracedAegisMiddleware
from aegis_mw.testing import recorded, recorded_sessions
from tests.harness import Exchange, call, http_scope, websocket_scope
from tests.sinks.otlp_receiver import Receiver, attributes
from tests.tracing import broken_hook, exported_spans, hook_exceptions

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("hot_path")]
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def item(request: Request) -> PlainTextResponse:
    if request.path_params["item_id"] == "boom":
        raise RuntimeError("boom")
    return PlainTextResponse("ok")


async def internal(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/items/{item_id}", item), Route("/internal/x", internal)])


async def test_each_request_of_the_app_gets_one_server_span_named_by_its_route(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    aegis = make_aegis(tracing=True, exclude_paths=["/internal/*"])
    middleware = AegisMiddleware(starlette_app(), aegis=aegis)
    assert isinstance(middleware, TracedAegisMiddleware)
    caller = [(b"traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01".encode())]
    assert (await call(middleware, http_scope("/items/1"))).status == 200
    assert (await call(middleware, http_scope("/items/2", headers=caller))).status == 200
    assert (await call(middleware, http_scope("/nowhere/7"))).status == 404
    for ours in ("/metrics", "/health", "/internal/x"):  # no span for these
        assert (await call(middleware, http_scope(ours))).status == 200
    with pytest.raises(RuntimeError):
        await call(middleware, http_scope("/items/boom"))
    records = {record.path: record for record in recorded(aegis)}
    assert aegis.shutdown()  # exports the spans ended so far

    spans = exported_spans(span_receiver)
    assert sorted(span.name for _, span in spans) == [
        "GET", "GET /items/{item_id}", "GET /items/{item_id}", "GET /items/{item_id}",
    ]  # fmt: skip
    assert all(resource["service.name"] == "shop" for resource, _ in spans)
    by_id = {span.span_id.hex(): span for _, span in spans}
    assert len(by_id) == 4
    for path in ("/items/1", "/items/2", "/nowhere/7", "/items/boom"):
        record = records[path]
        span = by_id[record.span_id]  # the record links to its request's span
        assert span.trace_id.hex() == record.trace_id
        assert span.kind == ProtoSpan.SPAN_KIND_SERVER
        assert attributes(span.attributes).get("http.route") == (
            None if path == "/nowhere/7" else "/items/{item_id}"
        )
    # The caller's traceparent: the span joins its trace, under its span.
    joined = by_id[records["/items/2"].span_id]
    assert (joined.trace_id.hex(), joined.parent_span_id.hex()) == (CALLER_TRACE, CALLER_SPAN)
    assert by_id[records["/items/boom"].span_id].status.code == 2  # STATUS_CODE_ERROR
    assert "/metrics" not in records and "/internal/x" not in records


async def test_a_request_another_instrumentation_traces_gets_no_second_span(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver, exporter: Any
) -> None:
    provider, theirs = exporter
    aegis = make_aegis(tracing=True)
    app = OpenTelemetryMiddleware(
        AegisMiddleware(starlette_app(), aegis=aegis), tracer_provider=provider
    )
    assert (await call(app, http_scope("/items/1"))).status == 200
    [record] = recorded(aegis)
    assert aegis.shutdown()
    assert exported_spans(span_receiver) == []
    [span] = [span for span in theirs.get_finished_spans() if span.kind == trace.SpanKind.SERVER]
    assert record.span_id == format(span.context.span_id, "016x")


async def test_an_app_that_set_up_opentelemetry_gets_the_spans_in_its_own_provider(
    make_aegis: Callable[..., Aegis],
    span_receiver: Receiver,
    exporter: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider, theirs = exporter
    # The app's global provider (set as trace.set_tracer_provider does, once a process).
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    aegis = make_aegis(tracing=True)
    middleware = AegisMiddleware(starlette_app(), aegis=aegis)
    assert (await call(middleware, http_scope("/items/1"))).status == 200
    [record] = recorded(aegis)
    assert aegis.shutdown()
    [span] = theirs.get_finished_spans()
    assert (span.name, format(span.context.span_id, "016x")) == (
        "GET /items/{item_id}",
        record.span_id,
    )
    assert exported_spans(span_receiver) == []  # nothing of ours besides


async def test_with_no_exporter_the_spans_are_made_and_the_records_linked(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    aegis = make_aegis(tracing=True)
    middleware = AegisMiddleware(starlette_app(), aegis=aegis)
    await call(middleware, http_scope("/items/1"))
    [record] = recorded(aegis)
    assert record.trace_id is not None and record.span_id is not None
    assert aegis.shutdown()
    assert span_receiver.count("traces") == 0


def stop_retries(aegis: Aegis, before: set[threading.Thread]) -> None:
    """The test's own clean-up: with the receiver down, the exporter's retries
    outlive a bounded shutdown (for the exporter's own 10 s) in the thread
    left with the flush, and draw their jitter from the shared ``random``,
    which the property tests run later watch. The exporter, shut down, stops
    retrying; that thread is then waited for."""
    aegis.tracer_setup.exporter.shutdown()
    for thread in set(threading.enumerate()) - before:
        if thread.name == "aegis-span-flush":
            thread.join(timeout=10.0)
            assert not thread.is_alive()


async def test_the_receiver_down_changes_nothing_for_the_app_and_shutdown_stays_bounded(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    span_receiver.stop()  # its port refuses connections from now on
    before = set(threading.enumerate())
    aegis = make_aegis(tracing=True, shutdown_timeout=2.0)
    middleware = AegisMiddleware(starlette_app(), aegis=aegis)
    for index in range(20):
        assert (await call(middleware, http_scope(f"/items/{index}"))).status == 200
    assert len(recorded(aegis)) == 20
    started = time.monotonic()
    aegis.shutdown()
    assert time.monotonic() - started < 2.0 + 1.0
    stop_retries(aegis, before)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
    ],
)
async def test_an_exporter_it_cannot_make_is_a_config_error_naming_the_variable(
    make_aegis: Callable[..., Aegis],
    span_receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    aegis = make_aegis(tracing=True)
    with pytest.raises(ConfigError) as raised:
        aegis.tracer_setup  # noqa: B018
    assert raised.value.option == variable and value in str(raised.value)


@pytest.mark.parametrize(
    "missing", ["opentelemetry", "opentelemetry.sdk.trace", "opentelemetry.instrumentation.asgi"]
)
async def test_without_opentelemetry_installed_the_app_refuses_to_start_naming_the_extra(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    aegis = make_aegis(tracing=True)
    middleware = AegisMiddleware(starlette_app(), aegis=aegis)
    messages = iter([{"type": "lifespan.startup"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "aegis_mw[tracing]" in sent[0]["message"] and "'tracing'" in sent[0]["message"]


async def test_a_request_opentelemetry_cannot_trace_is_answered_and_recorded_untraced(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    """OpenTelemetry's ASGI middleware fails on a query string that is not
    UTF-8, before the app runs: the request is served as without tracing."""
    aegis = make_aegis(tracing=True)
    middleware = AegisMiddleware(starlette_app(), aegis=aegis)
    odd = http_scope("/items/1", query_string=b"q=\xff")
    assert (await call(middleware, odd)).status == 200
    assert (await call(middleware, http_scope("/items/2"))).status == 200
    records = recorded(aegis)
    assert [(r.path, r.trace_id is None) for r in records] == [
        ("/items/1", True),
        ("/items/2", False),
    ]
    assert aegis.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert span.span_id.hex() == records[1].span_id


async def test_a_second_shutdown_returns_at_once_with_the_collector_down(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    span_receiver.stop()
    before = set(threading.enumerate())
    aegis = make_aegis(tracing=True, shutdown_timeout=1.0)
    await call(AegisMiddleware(starlette_app(), aegis=aegis), http_scope("/items/1"))
    aegis.shutdown()
    started = time.monotonic()
    aegis.shutdown()
    assert time.monotonic() - started < 0.5
    stop_retries(aegis, before)


def test_the_tracing_option_reads_from_the_environment() -> None:
    aegis = Aegis(sink="memory://", environ={"AEGIS_TRACING": "on"})
    try:
        assert aegis.settings.tracing is True
        assert aegis.settings.sources["tracing"] == "AEGIS_TRACING"
    finally:
        aegis.shutdown()


async def test_a_websocket_session_gets_one_span_for_the_whole_session(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    """Named by its route template once accepted (or refused); none for an
    excluded path; the session's record links to it."""

    async def chat(websocket: WebSocket) -> None:
        if websocket.path_params.get("room") == "closed":
            await websocket.close(code=1008)  # refused before accepting
            return
        await websocket.accept()
        await websocket.send_text((await websocket.receive_text()).upper())
        await websocket.receive()  # the disconnect

    routes = [WebSocketRoute("/ws/chat/{room}", chat), WebSocketRoute("/internal/ws", chat)]
    aegis = make_aegis(tracing=True, exclude_paths=["/internal/*"])
    middleware = AegisMiddleware(Starlette(routes=routes), aegis=aegis)
    talk = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hi"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    for path in ("/ws/chat/lobby", "/ws/chat/closed", "/internal/ws", "/ws/metrics"):
        exchange = Exchange(talk)  # the stream of ours (/ws/metrics) gets no span either
        await middleware(websocket_scope(path), exchange.receive, exchange.send)
    sessions = {session.path: session for session in recorded_sessions(aegis)}
    assert aegis.shutdown()
    spans = {span.span_id.hex(): span for _, span in exported_spans(span_receiver)}
    assert sorted(span.name for span in spans.values()) == ["WEBSOCKET /ws/chat/{room}"] * 2
    for path in ("/ws/chat/lobby", "/ws/chat/closed"):
        span = spans[sessions[path].span_id]  # each session's record links to its span
        assert span.trace_id.hex() == sessions[path].trace_id
        assert span.kind == ProtoSpan.SPAN_KIND_SERVER
        assert attributes(span.attributes)["http.route"] == "/ws/chat/{room}"
    assert "/internal/ws" not in sessions  # excluded: no record, no span


async def test_the_apps_hooks_see_each_traced_request_and_its_response(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """``tracing_request_hook`` gets ``(span, scope)`` as the span starts,
    ``tracing_response_hook`` ``(span, scope, message)`` as the response
    starts: given by name (as the environment gives them) or as callables.
    A hook that raises fails nothing: the answer is the app's, the exception
    is recorded on the span, and logged once."""
    environ = {
        "AEGIS_TRACING": "true",
        "AEGIS_TRACING_REQUEST_HOOK": "tests.tracing:tenant_of_scope",
        "AEGIS_TRACING_RESPONSE_HOOK": "tests.tracing:status_of_message",
    }
    aegis = make_aegis(environ=environ)
    middleware = AegisMiddleware(starlette_app(), aegis=aegis)
    tenant = [(b"x-tenant", b"acme")]
    assert (await call(middleware, http_scope("/items/1", headers=tenant))).status == 200
    assert (await call(middleware, http_scope("/metrics", headers=tenant))).status == 200
    assert aegis.shutdown()
    [span] = [span for _, span in exported_spans(span_receiver)]  # none for /metrics
    found = attributes(span.attributes)
    assert (found["app.tenant"], found["app.response"]) == ("acme", "http.response.start 200")

    broken = make_aegis(
        tracing=True, tracing_request_hook=broken_hook, tracing_response_hook=broken_hook
    )
    middleware = AegisMiddleware(starlette_app(), aegis=broken)
    for number in (1, 2):
        answer = await call(middleware, http_scope(f"/items/{number}"))
        assert (answer.status, answer.body) == (200, b"ok")
    assert len(recorded(broken)) == 2
    assert broken.shutdown()
    spans = [span for _, span in exported_spans(span_receiver)][1:]
    assert [hook_exceptions(span) for span in spans] == [["ValueError", "ValueError"]] * 2
    warned = [r.getMessage() for r in caplog.records if "raised ValueError" in r.getMessage()]
    assert warned == [
        "aegis: tracing_request_hook raised ValueError (recorded on its span; logged once)",
        "aegis: tracing_response_hook raised ValueError (recorded on its span; logged once)",
    ]


def test_a_hook_named_in_text_that_cannot_be_had_is_a_config_error_naming_it(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Checked as ``module:name`` with the settings; imported (running the
    module) when a pipeline with ``tracing`` on is built, where a name that
    cannot be had is a config error naming the option and why (a framework
    may build the middleware only at its first call); never with it off."""
    with pytest.raises(ConfigError, match="tracing_request_hook"):
        make_aegis(tracing=True, tracing_request_hook="no colon")
    untraced = make_aegis(tracing_request_hook="tests.no_such_module:hook")
    assert isinstance(AegisMiddleware(starlette_app(), aegis=untraced), AegisMiddleware)
    for name, cause in (
        ("tests.no_such_module:hook", "No module named 'tests.no_such_module'"),
        ("tests.tracing:no_such_hook", "has no attribute 'no_such_hook'"),
        ("tests.tracing:OTEL_VARIABLES", "tuple is not callable"),
    ):
        with pytest.raises(ConfigError, match="'tracing_response_hook'") as raised:
            make_aegis(tracing=True, tracing_response_hook=name)
        assert cause in str(raised.value)
