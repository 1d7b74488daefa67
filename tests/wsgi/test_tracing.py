"""``tracing = true`` on a WSGI app (plain and Flask): a server span per
request with OpenTelemetry's WSGI attributes, exported over OTLP/HTTP (the
``OTEL_*`` variables) to a real receiver on 127.0.0.1; named by the route
template, none for our routes, excluded paths or a request another
instrumentation traces; ended when the server closes the response, which
the server gets as it would without tracing (a file wrapper stays itself,
a list keeps its length); each record linked to its span."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.util import FileWrapper

import flask
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from aegis_mw import Aegis, ConfigError
from aegis_mw.contrib.flask import Aegis as FlaskAegis
from aegis_mw.testing import recorded
from aegis_mw.wsgi import AegisWSGIMiddleware
from aegis_mw.wsgi.tracing import SPAN_KEY, TracedAegisWSGIMiddleware
from tests.harness import OPEN_MONITORING
from tests.sinks.otlp_receiver import Receiver, attributes
from tests.tracing import (
    broken_hook,
    exported_spans,
    hook_exceptions,
    recording_provider,
    status_of_start,
    tenant_of_environ,
)
from tests.wsgi.test_middleware import Response, environ_for, serve

# No hot_path runs: a middleware with tracing on takes the Python path only.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ERROR = 2  # Status.STATUS_CODE_ERROR of the OTLP protocol


def current_span_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.span_id, "016x") if context.is_valid else None


def flask_app() -> flask.Flask:
    app = flask.Flask(__name__)
    seen = app.config["SEEN"] = []

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        seen.append(current_span_id())  # the view runs inside the span
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.get("/internal/x")
    def internal() -> str:
        return "ok"

    return app


def test_each_request_of_a_flask_app_gets_one_server_span_named_by_its_route(
    span_receiver: Receiver,
) -> None:
    app = flask_app()
    pipeline = FlaskAegis(
        app, sink="memory://", environ={}, access=OPEN_MONITORING, tracing=True,
        exclude_paths=["/internal/*"],
    ).pipeline  # fmt: skip
    assert pipeline is not None and isinstance(app.wsgi_app, TracedAegisWSGIMiddleware)
    try:
        caller = {"HTTP_TRACEPARENT": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
        assert serve(app, environ_for("/items/1"))[0].status == "200 OK"
        assert serve(app, environ_for("/items/2", **caller))[0].status == "200 OK"
        assert serve(app, environ_for("/nowhere/7"))[0].status.startswith("404")
        assert serve(app, environ_for("/boom"))[0].status.startswith("500")
        for ours in ("/metrics", "/health", "/internal/x"):  # no span for these
            assert serve(app, environ_for(ours))[0].status == "200 OK"
        assert current_span_id() is None  # nothing left attached to the thread
        records = {record.path: record for record in recorded(pipeline)}
    finally:
        assert pipeline.shutdown()  # exports the spans ended so far

    spans = exported_spans(span_receiver)
    assert sorted(span.name for _, span in spans) == [
        "GET", "GET /boom", "GET /items/{item_id}", "GET /items/{item_id}",
    ]  # fmt: skip
    assert all(resource["service.name"] == "shop" for resource, _ in spans)
    by_id = {span.span_id.hex(): span for _, span in spans}
    for path in ("/items/1", "/items/2", "/nowhere/7", "/boom"):
        record = records[path]
        span = by_id[record.span_id]  # the record links to its request's span
        assert span.trace_id.hex() == record.trace_id
        assert span.kind == ProtoSpan.SPAN_KIND_SERVER
        assert attributes(span.attributes).get("http.route") == (
            None if path == "/nowhere/7" else "/boom" if path == "/boom" else "/items/{item_id}"
        )
        assert attributes(span.attributes)["http.status_code"] == record.status
    assert app.config["SEEN"] == [records["/items/1"].span_id, records["/items/2"].span_id]
    joined = by_id[records["/items/2"].span_id]  # the caller's traceparent: its trace
    assert (joined.trace_id.hex(), joined.parent_span_id.hex()) == (CALLER_TRACE, CALLER_SPAN)
    failed = by_id[records["/boom"].span_id]
    assert (failed.status.code, failed.status.message) == (ERROR, "RuntimeError: boom")
    assert "/metrics" not in records and "/internal/x" not in records


def _header_attributes(found: Any) -> dict[str, tuple[str, ...]]:
    return {name: tuple(value) for name, value in dict(found).items() if ".header." in name}


def test_the_headers_opentelemetrys_capture_variables_name_are_its_wsgi_middlewares(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request and response headers its variables name (any case, a
    regular expression, a header sent twice), a sanitized one redacted: the
    very attributes OpenTelemetry's WSGI middleware sets on the same request;
    none without the variables, read when the middleware is built."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [
            ("Content-Type", "text/plain"), ("X-Served-By", "node-a"), ("X-Served-By", "node-b"),
            ("Set-Cookie", "s=1"), ("X-Other", "not asked for"),
        ])  # fmt: skip
        return [b"ok"]

    def request() -> dict[str, Any]:
        return environ_for(
            "/items/1", HTTP_X_TENANT="acme", HTTP_X_SECRET="hunter2", HTTP_COOKIE="a=1; b=2",
            HTTP_X_TRACE_ME="yes", CONTENT_TYPE="text/plain",
        )  # fmt: skip

    def ours() -> dict[str, tuple[str, ...]]:
        aegis = make_aegis(tracing=True)
        before = len(exported_spans(span_receiver))
        middleware = AegisWSGIMiddleware(app, aegis=aegis)
        assert serve(middleware, request())[1] == b"ok"
        assert aegis.shutdown()
        [(_, span)] = exported_spans(span_receiver)[before:]
        return _header_attributes(attributes(span.attributes))

    assert ours() == {}
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        "X-Tenant,x-secret,cookie,x-trace-.*",
    )
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE", "x-served-by,SET-COOKIE,none"
    )
    monkeypatch.setenv(
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "x-secret,set-cookie"
    )
    provider, theirs = recording_provider()
    try:
        assert serve(OpenTelemetryMiddleware(app, tracer_provider=provider), request())[1] == b"ok"
    finally:
        provider.shutdown()
    [their_span] = theirs.get_finished_spans()
    expected = _header_attributes(their_span.attributes)
    assert expected == {
        "http.request.header.x_tenant": ("acme",),
        "http.request.header.x_secret": ("[REDACTED]",),
        "http.request.header.cookie": ("a=1; b=2",),
        "http.request.header.x_trace_me": ("yes",),
        "http.response.header.x_served_by": ("node-a,node-b",),
        "http.response.header.set_cookie": ("[REDACTED]",),
    }
    assert ours() == expected


def test_an_exception_of_the_app_ends_its_span_as_an_error_and_is_raised_unchanged(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    failure = ValueError("no such item")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise failure

    aegis = make_aegis(tracing=True)
    environ = environ_for("/items/1", **{"aegis.route": "/items/{item_id}"})
    with pytest.raises(ValueError) as raised:
        AegisWSGIMiddleware(app, aegis=aegis)(environ, Response().start_response)
    assert raised.value is failure and current_span_id() is None
    assert SPAN_KEY not in environ
    [record] = recorded(aegis)
    assert aegis.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert (span.name, span.span_id.hex(), record.status) == (
        "GET /items/{item_id}",
        record.span_id,
        500,
    )
    assert span.status.code == ERROR and span.status.message == "ValueError: no such item"
    assert attributes(span.attributes)["error.type"] == "ValueError"


def test_the_server_gets_the_apps_own_response_and_the_span_ends_at_close(
    make_aegis: Callable[..., Aegis],
    span_receiver: Receiver,
    exporter: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A file wrapper is handed back as it is (the server may sendfile() it),
    a list keeps its length; the span ends when the server closes either,
    even one it closes without iterating, and not before."""
    provider, ended = exporter  # the app's own provider: spans seen as they end
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    (tmp_path / "file.bin").write_bytes(b"x" * 1000)
    opened: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        if environ["PATH_INFO"] == "/file":
            opened.append(environ["wsgi.file_wrapper"]((tmp_path / "file.bin").open("rb")))
            return opened[-1]
        return [b"one", b"two"]

    aegis = make_aegis(tracing=True)
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    assert isinstance(middleware, TracedAegisWSGIMiddleware) and not middleware.compiled
    file_result = middleware(environ_for("/file", **{"wsgi.file_wrapper": FileWrapper}),
                             Response().start_response)  # fmt: skip
    assert file_result is opened[0] and current_span_id() is None
    list_result = middleware(environ_for("/list"), Response().start_response)
    assert len(list_result) == 2  # type: ignore[arg-type]
    unread = middleware(environ_for("/unread"), Response().start_response)
    assert ended.get_finished_spans() == () and recorded(aegis) == []  # none closed yet
    file_result.close()  # type: ignore[attr-defined]
    assert len(ended.get_finished_spans()) == 1
    assert b"".join(list_result) == b"onetwo"
    assert len(ended.get_finished_spans()) == 1  # iterated, not yet closed
    list_result.close()  # type: ignore[attr-defined]
    unread.close()  # type: ignore[attr-defined]
    records = {record.path: record for record in recorded(aegis)}
    assert aegis.shutdown()
    spans = {format(span.context.span_id, "016x"): span for span in ended.get_finished_spans()}
    assert {path: records[path].span_id in spans for path in records} == {
        "/file": True, "/list": True, "/unread": True,
    }  # fmt: skip
    assert records["/file"].response_bytes == 1000
    for path in records:
        span = spans[records[path].span_id]
        assert span.end_time >= span.start_time
        assert span.attributes["http.status_code"] == 200
    assert exported_spans(span_receiver) == []  # nothing of ours besides


def test_a_body_that_fails_midway_ends_its_span_as_an_error(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        raise OSError("disk gone")

    aegis = make_aegis(tracing=True)
    with pytest.raises(OSError, match="disk gone"):
        serve(AegisWSGIMiddleware(app, aegis=aegis), environ_for("/stream"))
    [record] = recorded(aegis)
    assert aegis.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert span.span_id.hex() == record.span_id
    assert (span.status.code, span.status.message) == (ERROR, "OSError: disk gone")


def test_a_request_another_instrumentation_traces_gets_no_second_span(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver, exporter: Any
) -> None:
    provider, theirs = exporter

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    aegis = make_aegis(tracing=True)
    outer = OpenTelemetryMiddleware(AegisWSGIMiddleware(app, aegis=aegis), tracer_provider=provider)
    assert serve(outer, environ_for("/items/1"))[1] == b"ok"
    [record] = recorded(aegis)
    assert aegis.shutdown()
    assert exported_spans(span_receiver) == []
    [span] = theirs.get_finished_spans()
    assert record.span_id == format(span.context.span_id, "016x")


def test_a_request_opentelemetry_cannot_trace_is_answered_and_recorded_untraced(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    """OpenTelemetry's attribute collection fails on a SERVER_PORT that is not
    a number: the request is served as without tracing."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    aegis = make_aegis(tracing=True)
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    assert serve(middleware, environ_for("/odd", SERVER_PORT="eighty"))[1] == b"ok"
    assert serve(middleware, environ_for("/even"))[1] == b"ok"
    records = recorded(aegis)
    assert [(r.path, r.trace_id is None) for r in records] == [("/odd", True), ("/even", False)]
    assert aegis.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert span.span_id.hex() == records[1].span_id


@pytest.mark.parametrize(
    "missing", ["opentelemetry", "opentelemetry.sdk.trace", "opentelemetry.instrumentation.wsgi"]
)
def test_without_opentelemetry_installed_the_app_refuses_to_start_naming_the_extra(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed
    aegis = make_aegis(tracing=True)
    with pytest.raises(ConfigError) as raised:
        AegisWSGIMiddleware(lambda environ, start_response: [], aegis=aegis)
    assert raised.value.option == "tracing" and "aegis_mw[tracing]" in str(raised.value)


class _RaisingMeta(type):
    def __instancecheck__(cls, instance: object) -> bool:
        raise RuntimeError("an odd file wrapper")


class OddWrapper(metaclass=_RaisingMeta):
    """A ``wsgi.file_wrapper`` the middleware fails on (its own failure, counted)."""


def test_a_request_whose_record_is_given_up_still_ends_its_span(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    aegis = make_aegis(tracing=True)
    environ = environ_for("/items/1", **{"wsgi.file_wrapper": OddWrapper})
    assert serve(AegisWSGIMiddleware(app, aegis=aegis), environ)[1] == b"ok"
    assert aegis.recorder.dropped["internal_error"] == 1 and recorded(aegis) == []
    assert SPAN_KEY not in environ and current_span_id() is None
    assert aegis.shutdown()
    assert [span.name for _, span in exported_spans(span_receiver)] == ["GET"]


def test_a_span_processor_that_fails_leaves_nothing_attached(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's provider fails to start one span: that request is served
    untraced, and the caller's context is not left on the thread for the next."""
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    failures = [RuntimeError("processor down")]

    class Failing(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            if failures:
                raise failures.pop()

    provider = TracerProvider()
    provider.add_span_processor(Failing())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    aegis = make_aegis(tracing=True)
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    caller = {"HTTP_TRACEPARENT": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
    assert serve(middleware, environ_for("/first", **caller))[1] == b"ok"
    assert current_span_id() is None
    assert serve(middleware, environ_for("/second"))[1] == b"ok"
    first, second = recorded(aegis)
    assert (first.trace_id, first.span_id) == (CALLER_TRACE, CALLER_SPAN)  # its traceparent
    assert second.trace_id not in (None, CALLER_TRACE)  # a span of its own, a trace of its own


def test_a_middleware_between_two_traced_ones_gets_one_span(
    make_aegis: Callable[..., Aegis], span_receiver: Receiver
) -> None:
    """A generator middleware calls the inner one after the outer returned:
    the outer's span waits in the environ, and the inner makes none."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"inner"]

    outer_aegis, inner_aegis = make_aegis(tracing=True), make_aegis(tracing=True)
    inner = AegisWSGIMiddleware(app, aegis=inner_aegis)

    def lazy(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        result = inner(environ, start_response)
        try:
            yield from result
        finally:
            result.close()  # type: ignore[attr-defined]

    assert serve(AegisWSGIMiddleware(lazy, aegis=outer_aegis), environ_for("/x"))[1] == b"inner"
    [outer_record], [inner_record] = recorded(outer_aegis), recorded(inner_aegis)
    assert outer_aegis.shutdown() and inner_aegis.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert outer_record.span_id == span.span_id.hex() and inner_record.span_id is None


def test_the_apps_hooks_see_each_traced_request_and_its_response(
    span_receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """``tracing_request_hook`` gets ``(span, environ)`` as the span starts,
    ``tracing_response_hook`` ``(span, environ, status, headers)`` as the
    response starts, as OpenTelemetry's WSGI middleware calls its own. A
    hook that raises fails nothing: the exception is recorded on the span."""
    for request_hook, response_hook in (
        (tenant_of_environ, status_of_start), (broken_hook, broken_hook),
    ):  # fmt: skip
        app = flask_app()
        pipeline = FlaskAegis(
            app, sink="memory://", environ={}, access=OPEN_MONITORING, tracing=True,
            tracing_request_hook=request_hook, tracing_response_hook=response_hook,
        ).pipeline  # fmt: skip
        assert pipeline is not None
        try:
            answer = serve(app, environ_for("/items/1", HTTP_X_TENANT="acme"))
            assert (answer[0].status, answer[1]) == ("200 OK", b"ok")
            assert serve(app, environ_for("/metrics"))[0].status == "200 OK"  # no span
            assert current_span_id() is None
        finally:
            assert pipeline.shutdown()
    hooked, broken = [span for _, span in exported_spans(span_receiver)]
    found = attributes(hooked.attributes)
    assert (found["app.tenant"], found["app.response"]) == ("acme", "200 OK")
    assert "content-type" in found["app.response_headers"]
    assert hook_exceptions(broken) == ["ValueError", "ValueError"]
    assert attributes(broken.attributes)["http.status_code"] == 200
    assert "tracing_request_hook raised ValueError" in caplog.text
