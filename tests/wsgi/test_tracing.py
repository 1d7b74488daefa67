"""``tracing = true`` on a WSGI app (Flask through its extension): a server
span per request made by OpenTelemetry's own WSGI middleware, exported over
OTLP/HTTP to a real receiver on 127.0.0.1; named by the Flask rule's
template, never the raw path; none for our routes or excluded paths; each
record linked to its span."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask
import pytest
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from aegis_mw import Aegis
from aegis_mw.contrib.flask import Aegis as FlaskAegis
from aegis_mw.testing import recorded
from aegis_mw.wsgi import AegisWSGIMiddleware
from aegis_mw.wsgi.tracing import TracedAegisWSGIMiddleware
from tests.sinks.otlp_receiver import Receiver, attributes
from tests.tracing import exported_spans
from tests.wsgi.test_middleware import environ_for, serve

pytestmark = pytest.mark.usefixtures("hot_path")
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def flask_app() -> flask.Flask:
    app = flask.Flask(__name__)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        if item_id == 13:
            raise RuntimeError("unlucky")
        return "ok"

    @app.get("/stream/<name>")
    def stream(name: str) -> flask.Response:
        # The request context lives until the stream ends: the rule is known then only.
        return flask.Response(flask.stream_with_context(iter([b"a", b"b"])))

    @app.get("/internal/x")
    def internal() -> str:
        return "ok"

    return app


def test_each_request_of_a_flask_app_gets_one_server_span_named_by_its_rule(
    span_receiver: Receiver,
) -> None:
    app = flask_app()
    pipeline = FlaskAegis(
        app, sink="memory://", environ={}, tracing=True, exclude_paths=["/internal/*"],
        access={"metrics": "open"},
    ).pipeline  # fmt: skip
    assert pipeline is not None
    assert isinstance(app.wsgi_app, TracedAegisWSGIMiddleware)
    client = app.test_client()

    def get(path: str, **headers: str) -> int:
        with client.get(path, headers=headers) as response:  # closed, as a server does
            return response.status_code

    assert get("/items/1") == 200
    assert get("/items/2", traceparent=f"00-{CALLER_TRACE}-{CALLER_SPAN}-01") == 200
    assert get("/items/13") == 500
    assert get("/nowhere/7") == 404
    assert get("/stream/x") == 200
    for ours in ("/metrics", "/health", "/internal/x"):
        assert get(ours) == 200
    records = {record.path: record for record in recorded(pipeline)}
    assert pipeline.shutdown()

    spans = exported_spans(span_receiver)
    assert sorted(span.name for _, span in spans) == [
        "GET", "GET /items/{item_id}", "GET /items/{item_id}", "GET /items/{item_id}",
        "GET /stream/{name}",
    ]  # fmt: skip
    assert all(resource["service.name"] == "shop" for resource, _ in spans)
    by_id = {span.span_id.hex(): span for _, span in spans}
    for path in ("/items/1", "/items/2", "/items/13", "/nowhere/7"):
        record = records[path]
        span = by_id[record.span_id]
        assert span.trace_id.hex() == record.trace_id
        assert span.kind == ProtoSpan.SPAN_KIND_SERVER
        assert attributes(span.attributes).get("http.route") == (
            None if path == "/nowhere/7" else "/items/{item_id}"
        )
        assert "/items/1" not in span.name and "/nowhere" not in span.name
    joined = by_id[records["/items/2"].span_id]
    assert (joined.trace_id.hex(), joined.parent_span_id.hex()) == (CALLER_TRACE, CALLER_SPAN)
    assert by_id[records["/items/13"].span_id].status.code == 2  # STATUS_CODE_ERROR
    assert set(records) == {"/items/1", "/items/2", "/items/13", "/nowhere/7", "/stream/x"}
    assert by_id[records["/stream/x"].span_id].name == "GET /stream/{name}"


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    environ["aegis.route"] = "/items/{id}"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_a_request_another_instrumentation_traces_gets_no_second_span(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver, exporter: Any
) -> None:
    provider, theirs = exporter
    aegis = make_aegis(tracing=True)
    app = OpenTelemetryMiddleware(
        AegisWSGIMiddleware(wsgi_app, aegis=aegis), tracer_provider=provider
    )
    response, body = serve(app, environ_for("/items/1"))
    assert (response.status, body) == ("200 OK", b"ok")
    [record] = recorded(aegis)
    assert aegis.shutdown()
    assert exported_spans(span_receiver) == []
    [span] = theirs.get_finished_spans()
    assert record.span_id == format(span.context.span_id, "016x")


def test_a_plain_wsgi_app_names_its_spans_by_the_route_it_leaves(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    aegis = make_aegis(tracing=True)
    middleware = AegisWSGIMiddleware(wsgi_app, aegis=aegis)
    response, body = serve(middleware, environ_for("/items/1"))
    assert (response.status, body) == ("200 OK", b"ok")
    [record] = recorded(aegis)
    assert aegis.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert (span.name, span.span_id.hex()) == ("GET /items/{id}", record.span_id)


def test_a_stream_whose_route_is_known_only_at_its_end_is_named_then(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    def streaming(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"a"
        environ["aegis.route"] = "/feeds/{id}"  # routed lazily, as the stream goes
        yield b"b"

    aegis = make_aegis(tracing=True)
    response, body = serve(AegisWSGIMiddleware(streaming, aegis=aegis), environ_for("/feeds/9"))
    assert (response.status, body) == ("200 OK", b"ab")
    [record] = recorded(aegis)
    assert aegis.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert (span.name, span.span_id.hex(), record.route) == (
        "GET /feeds/{id}", record.span_id, "/feeds/{id}",
    )  # fmt: skip
