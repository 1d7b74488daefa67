"""The Django integration: the middleware in MIDDLEWARE, sync (test Client, as
under WSGI) and async (AsyncClient, as under ASGI); routes from the resolver;
the mounted routes served; a bad AEGIS option as a system-check error."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

django = pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django_project.settings")
django.setup()

from django.apps import apps  # noqa: E402
from django.core import checks  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from opentelemetry.instrumentation.django import DjangoInstrumentor  # noqa: E402
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware  # noqa: E402

from aegis_mw.contrib.django.middleware import route_template  # noqa: E402
from aegis_mw.testing import recorded  # noqa: E402
from aegis_mw.wsgi.mounted import WSGIRoutes  # noqa: E402
from tests import tracing as hooks  # noqa: E402
from tests.sinks.otlp_receiver import attributes  # noqa: E402
from tests.tracing import exported_spans, recording_provider  # noqa: E402

# Every test runs on the compiled and on the pure-Python request path (a
# test client builds Django's middleware chain, and so ours, per client).
pytestmark = pytest.mark.usefixtures("hot_path")


def pipeline() -> Any:
    return apps.get_app_config("aegis_mw").pipeline


@pytest.fixture(autouse=True, scope="module")
def _shut_down_after_the_module() -> Iterator[None]:
    """The app's pipeline lives as long as Django's app registry: end its
    threads once these tests are done, as a process's exit would."""
    yield
    pipeline().shutdown()


@pytest.fixture(autouse=True)
def _no_records_of_earlier_tests() -> None:
    """One pipeline serves every test (and both request paths): start empty."""
    recorded(pipeline())
    pipeline().sinks[0].clear()


def records_of(prefix: str) -> list[Any]:
    return [r for r in recorded(pipeline()) if r.path.startswith(prefix)]


@pytest.mark.parametrize(
    ("pattern", "template"),
    [
        ("items/<int:item_id>/", "/items/{item_id}/"),
        ("shop/orders/<int:order_id>/", "/shop/orders/{order_id}/"),
        ("^articles/(?P<year>[0-9]{4})/$", "/articles/{year}/"),
        ("", "/"),
    ],
)
def test_route_templates(pattern: str, template: str) -> None:
    assert route_template(pattern) == template


def test_sync_requests_are_recorded() -> None:
    client = Client(raise_request_exception=False)  # answer 500, as a server would
    assert client.get("/items/3/").content == b"item 3"
    assert client.get("/shop/orders/9/").status_code == 200
    assert client.get("/articles/2024/").content == b"2024"
    stream = client.get("/stream/")
    assert b"".join(stream.streaming_content) == b"one two"
    stream.close()
    assert client.get("/boom/").status_code == 500
    assert client.get("/nowhere/").status_code == 404
    rows = [(r.route, r.status, r.response_bytes, r.error) for r in recorded(pipeline())
            if r.path in ("/items/3/", "/shop/orders/9/", "/articles/2024/", "/stream/",
                          "/boom/", "/nowhere/")]  # fmt: skip
    assert rows[:4] == [
        ("/items/{item_id}/", 200, 6, ""),
        ("/shop/orders/{order_id}/", 200, 7, ""),
        ("/articles/{year}/", 200, 4, ""),
        ("/stream/", 200, 7, ""),
    ]
    assert rows[4][:2] == ("/boom/", 500) and rows[4][3] == "RuntimeError: kaput"
    assert rows[5][:2] == ("<unmatched>", 404)


def test_mounted_routes_are_served_by_the_middleware() -> None:
    client = Client()
    assert client.get("/health/live").json() == {"status": "pass"}
    assert client.get("/health").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and b"aegis_http_requests_total" in metrics.content
    assert client.get("/api/metrics/realtime").json()["data"]["total_requests"] >= 0
    assert client.get("/dashboard").status_code == 200
    assert client.post("/metrics").status_code == 405
    assert not [r for r in recorded(pipeline()) if r.path in ("/metrics", "/health")]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_requests_are_recorded(anyio_backend: str, hot_path: str) -> None:
    item_id = 42 if hot_path == "compiled" else 43  # one pipeline serves both runs
    client = AsyncClient()
    response = await client.get(f"/items/{item_id}/")
    assert response.content == f"item {item_id}".encode()
    live = await client.get("/health/live")
    assert live.status_code == 200
    [record] = [r for r in recorded(pipeline()) if r.path == f"/items/{item_id}/"]
    assert (record.route, record.status, record.response_bytes) == ("/items/{item_id}/", 200, 7)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_mounted_routes_take_none_of_the_loops_shared_threads(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ASGI the app's sync_to_async calls (and Django's own) run in the loop's
    default executor: /metrics, the health routes and the JSON API are answered in
    threads of the pipeline's own lanes instead, never in that executor."""
    answered_in: list[str] = []
    respond = WSGIRoutes.respond

    def watched(self: WSGIRoutes, *args: Any) -> Any:
        answered_in.append(threading.current_thread().name)
        return respond(self, *args)

    monkeypatch.setattr(WSGIRoutes, "respond", watched)
    shared = ThreadPoolExecutor(max_workers=4, thread_name_prefix="loop-shared")
    asyncio.get_running_loop().set_default_executor(shared)
    try:
        client = AsyncClient()
        for path in ("/metrics", "/health", "/api/metrics/realtime"):
            assert (await client.get(path)).status_code == 200
    finally:
        shared.shutdown()
    assert len(answered_in) == 3
    assert not [name for name in answered_in if name.startswith("loop-shared")]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_excluded_paths_are_answered_and_never_recorded(
    anyio_backend: str, make_aegis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``exclude_paths`` under both handlers, on both request paths."""
    aegis = make_aegis(exclude_paths=["/shop/*", "/articles/2024/"])
    monkeypatch.setattr(apps.get_app_config("aegis_mw"), "_pipeline", aegis)
    client, async_client = Client(), AsyncClient()
    assert client.get("/shop/orders/4/").content == b"order 4"
    assert client.get("/articles/2024/").content == b"2024"
    assert (await async_client.get("/shop/orders/5/")).content == b"order 5"
    assert client.get("/items/6/").content == b"item 6"  # not excluded: recorded
    assert [record.path for record in recorded(aegis)] == ["/items/6/"]
    assert aegis.aggregates.in_flight == 0


def test_a_bad_option_is_a_system_check_error() -> None:
    with override_settings(AEGIS={"sample_rate": 2}):
        errors = [m for m in checks.run_checks() if m.id == "aegis_mw.E001"]
    assert len(errors) == 1 and "sample_rate" in errors[0].msg
    with override_settings(AEGIS={"sink": "memory://"}):
        assert not [m for m in checks.run_checks() if m.id == "aegis_mw.E001"]


@pytest.fixture
def traced(make_aegis: Any, span_receiver: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The app's pipeline with ``tracing`` on (the clients built in the test
    build their middleware on it), exporting to the real OTLP receiver."""
    aegis = make_aegis(tracing=True, exclude_paths=["/shop/*"])
    monkeypatch.setattr(apps.get_app_config("aegis_mw"), "_pipeline", aegis)
    return aegis


def test_tracing_makes_a_server_span_per_request_named_by_its_pattern(
    traced: Any, span_receiver: Any
) -> None:
    client = Client(raise_request_exception=False)
    caller = f"00-{'4bf92f3577b34da6a3ce929d0e0e4736'}-{'00f067aa0ba902b7'}-01"
    assert client.get("/items/3/", HTTP_TRACEPARENT=caller).content == b"item 3"
    assert client.get("/boom/").status_code == 500
    assert b"".join(client.get("/stream/").streaming_content) == b"one two"
    assert client.get("/nowhere/").status_code == 404
    for ours in ("/metrics", "/health", "/shop/orders/1/"):  # no span for these
        assert client.get(ours).status_code == 200
    records = {record.path: record for record in recorded(traced)}
    assert traced.shutdown()
    spans = {span.span_id.hex(): span for _, span in exported_spans(span_receiver)}
    assert sorted(span.name for span in spans.values()) == [
        "GET", "GET /boom/", "GET /items/{item_id}/", "GET /stream/",
    ]  # fmt: skip
    for path in ("/items/3/", "/boom/", "/stream/", "/nowhere/"):
        span = spans[records[path].span_id]  # each record links to its span
        assert span.trace_id.hex() == records[path].trace_id
        assert attributes(span.attributes)["http.status_code"] == records[path].status
    joined = spans[records["/items/3/"].span_id]
    assert (joined.trace_id.hex(), joined.parent_span_id.hex()) == (
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7",
    )  # fmt: skip
    failed = spans[records["/boom/"].span_id]
    assert (failed.status.code, failed.status.message) == (2, "RuntimeError: kaput")


CAPTURED = {
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "X-Tenant,x-secret,x-multi,content-type,cookie,x_under",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE": "Content-Type,x-none",
    "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS": "x-secret",
}
#: One request's headers, a name sent twice among them (ASGI keeps both).
RAW_HEADERS = [
    (b"x-tenant", b"acme"), (b"x-secret", b"hunter2"), (b"x-multi", b"a"), (b"x-multi", b"b"),
    (b"content-type", b"text/plain"), (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"x_under", b"u"),
]  # fmt: skip


def _through_django(path: str, *, asgi: bool) -> None:
    """One GET through Django's own WSGI or ASGI handler (built now, so its
    middleware is built now), with :data:`RAW_HEADERS`."""
    if asgi:
        from django.core.handlers.asgi import ASGIHandler

        scope = {
            "type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "scheme": "http", "server": ("testserver", 80),
            "client": ("127.0.0.1", 5000), "http_version": "1.1", "asgi": {"version": "3.0"},
            "headers": RAW_HEADERS,
        }  # fmt: skip
        body = [{"type": "http.request", "body": b"", "more_body": False}]
        done = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if body:
                return body.pop()
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        asyncio.run(ASGIHandler()(scope, receive, send))
        return
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
        "CONTENT_TYPE": "text/plain",
    }  # fmt: skip
    for name, value in RAW_HEADERS:
        if name != b"content-type":
            key = "HTTP_" + name.decode().upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value.decode()}" if key in environ else value.decode()
    response = WSGIHandler()(environ, lambda status, headers, exc_info=None: None)
    b"".join(response)
    response.close()


def _header_attributes(found: Any) -> dict[str, tuple[str, ...]]:
    return {name: tuple(value) for name, value in dict(found).items() if ".header." in name}


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_tracing_captures_the_headers_opentelemetrys_django_instrumentation_does(
    traced: Any, span_receiver: Any, monkeypatch: pytest.MonkeyPatch, asgi: bool
) -> None:
    """The headers OpenTelemetry's capture variables name, a sanitized one
    redacted: the very attributes its Django instrumentation sets on the same
    request, under either handler (ASGI's scope keeps a header sent twice as
    two values, and content-type as a header)."""
    for name, value in CAPTURED.items():
        monkeypatch.setenv(name, value)
    provider, theirs = recording_provider()
    instrumentor = DjangoInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        _through_django("/items/4/", asgi=asgi)  # their span: ours makes none beside it
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    [their_span] = theirs.get_finished_spans()
    expected = _header_attributes(their_span.attributes)
    _through_django("/items/4/", asgi=asgi)
    assert traced.shutdown()
    [(_, ours)] = exported_spans(span_receiver)
    assert _header_attributes(attributes(ours.attributes)) == expected
    assert expected["http.request.header.x_secret"] == ("[REDACTED]",)
    assert expected["http.request.header.x_tenant"] == ("acme",)
    assert expected["http.response.header.content_type"] == ("text/html; charset=utf-8",)
    if asgi:
        assert expected["http.request.header.x_multi"] == ("a", "b")
        assert expected["http.request.header.content_type"] == ("text/plain",)


def test_tracing_makes_no_second_span_beside_djangos_own_instrumentation(
    traced: Any, span_receiver: Any
) -> None:
    provider, theirs = recording_provider()
    instrumentor = DjangoInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        assert Client().get("/items/13/").status_code == 200
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    [record] = recorded(traced)
    assert traced.shutdown()
    assert exported_spans(span_receiver) == []
    [span] = theirs.get_finished_spans()
    assert record.span_id == f"{span.context.span_id:016x}"


def test_a_traced_request_whose_record_is_given_up_still_ends_its_span(
    traced: Any, span_receiver: Any
) -> None:
    """Our failure on the response (a status that cannot be read): counted,
    answered as without the middleware, and its span ended all the same."""
    assert Client().get("/unreadable-status/").content == b"odd"
    assert traced.recorder.dropped["internal_error"] == 1
    assert traced.shutdown()
    assert [span.name for _, span in exported_spans(span_receiver)] == ["GET"]


async def _cancelled_after_the_response(path: str, answer: Any = None) -> None:
    """As Django's ASGI handler does when the client goes away: the request's
    task, cancelled after the middleware answered (while Django logs an error
    response), never closes the response."""
    from django.http import HttpResponse
    from django.test import AsyncRequestFactory

    from aegis_mw.contrib.django.middleware import AegisMiddleware

    async def get_response(request: Any) -> HttpResponse:
        return answer if answer is not None else HttpResponse(b"gone", status=404)

    middleware = AegisMiddleware(get_response)
    answered = asyncio.Event()

    async def handle() -> None:
        await middleware(AsyncRequestFactory().get(path))
        answered.set()
        await asyncio.Event().wait()  # the handler's own awaits, cut short

    task = asyncio.create_task(handle())
    await answered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_request_whose_task_is_cancelled_after_the_response_is_recorded_once(
    anyio_backend: str, make_aegis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.contrib.django_project.urls import UnreadableStatus

    aegis = make_aegis()
    monkeypatch.setattr(apps.get_app_config("aegis_mw"), "_pipeline", aegis)
    await _cancelled_after_the_response("/gone/")
    [record] = recorded(aegis)
    assert (record.path, record.status, record.route) == ("/gone/", 499, "<unmatched>")
    # Given up by the middleware (a status it cannot read), then cancelled:
    # counted once, as our failure, and not recorded as well.
    await _cancelled_after_the_response("/odd/", UnreadableStatus(b"odd"))
    assert [r.path for r in recorded(aegis)] == ["/gone/"]  # that one only
    assert aegis.recorder.dropped["internal_error"] == 1
    assert aegis.aggregates.in_flight == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_async_middleware_under_trio(
    anyio_backend: str, make_aegis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No asyncio task to watch (Django's handler, which cancels, is asyncio's):
    answered and recorded when the response is closed, as ever."""
    from django.http import HttpResponse
    from django.test import AsyncRequestFactory

    from aegis_mw.contrib.django.middleware import AegisMiddleware

    async def get_response(request: Any) -> HttpResponse:
        return HttpResponse(b"ok")

    aegis = make_aegis()
    monkeypatch.setattr(apps.get_app_config("aegis_mw"), "_pipeline", aegis)
    response = await AegisMiddleware(get_response)(AsyncRequestFactory().get("/trio/"))
    assert response.content == b"ok" and recorded(aegis) == []
    response.close()
    [record] = recorded(aegis)
    assert (record.path, record.status) == ("/trio/", 200)
    assert aegis.aggregates.in_flight == 0


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_traced_request_whose_task_is_cancelled_ends_its_span(
    anyio_backend: str, traced: Any, span_receiver: Any
) -> None:
    await _cancelled_after_the_response("/gone/")
    [record] = recorded(traced)
    assert traced.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert (record.status, record.span_id) == (499, span.span_id.hex())
    assert attributes(span.attributes)["http.status_code"] == 499


@pytest.mark.parametrize("asgi", [False, True], ids=["wsgi", "asgi"])
def test_the_apps_tracing_hooks_see_each_traced_request_and_its_response(
    make_aegis: Any, span_receiver: Any, monkeypatch: pytest.MonkeyPatch, asgi: bool
) -> None:
    """As OpenTelemetry's Django instrumentation calls its own: ``(span,
    request)`` as the span starts, ``(span, request, response)`` with the
    response; a hook that raises fails nothing."""
    config = apps.get_app_config("aegis_mw")
    hooked = make_aegis(
        tracing=True, tracing_request_hook=hooks.tenant_of_request,
        tracing_response_hook=hooks.status_of_response,
    )  # fmt: skip
    monkeypatch.setattr(config, "_pipeline", hooked)
    _through_django("/items/3/", asgi=asgi)
    assert hooked.shutdown()
    broken = make_aegis(
        tracing=True,
        tracing_request_hook=hooks.broken_hook,
        tracing_response_hook=hooks.broken_hook,
    )
    monkeypatch.setattr(config, "_pipeline", broken)
    _through_django("/items/4/", asgi=asgi)
    [record] = recorded(broken)
    assert (record.path, record.status) == ("/items/4/", 200)
    assert broken.shutdown()
    first, second = [span for _, span in exported_spans(span_receiver)]
    found = attributes(first.attributes)
    assert (found["app.tenant"], found["app.response"]) == ("acme", "200 OK")
    assert "content-type" in found["app.response_headers"]
    assert hooks.hook_exceptions(second) == ["ValueError", "ValueError"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_tracing_under_the_asgi_handler(
    anyio_backend: str, traced: Any, span_receiver: Any
) -> None:
    client = AsyncClient()
    assert (await client.get("/items/5/")).content == b"item 5"
    assert (await client.get("/health/live")).status_code == 200
    [record] = recorded(traced)
    assert traced.shutdown()
    [(_, span)] = exported_spans(span_receiver)
    assert (span.name, span.span_id.hex(), span.trace_id.hex()) == (
        "GET /items/{item_id}/", record.span_id, record.trace_id,
    )  # fmt: skip


def test_a_stream_that_breaks_midway_is_recorded_with_its_error() -> None:
    """The body raised after its first chunk: Django had sent 200; the record keeps
    the status, the bytes that went out and the error, and the error propagates."""
    client = Client(raise_request_exception=False)
    response = client.get("/broken-stream/")
    with pytest.raises(LookupError, match="broke mid-stream"):
        b"".join(response.streaming_content)
    response.close()
    [record] = [r for r in recorded(pipeline()) if r.path == "/broken-stream/"]
    assert (record.status, record.response_bytes, record.error) == (
        200,
        len(b"partial"),
        "LookupError: broke mid-stream",
    )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_async_stream_is_counted_as_it_goes(anyio_backend: str) -> None:
    """Under ASGI a body from an async iterator is counted chunk by chunk, the first
    byte stamped at the first non-empty chunk, the record queued when Django's ASGI
    handler closes the response."""
    response = await AsyncClient().get("/async-stream/")
    assert b"".join([chunk async for chunk in response.streaming_content]) == b"async body"
    [record] = [r for r in recorded(pipeline()) if r.path == "/async-stream/"]
    assert (record.route, record.status, record.response_bytes) == ("/async-stream/", 200, 10)
    assert record.ttfb_ms is not None and record.ttfb_ms <= record.duration_ms


def test_the_apps_own_metrics_are_on_metrics() -> None:
    gauge = pipeline().gauge("django_test_level", "A level set by the test.")
    gauge.set(12)
    gauge.inc(0.5)
    text = Client().get("/metrics").content.decode()
    assert "django_test_level 12.5" in text


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


def test_a_traceparent_header_links_the_record_to_the_callers_span() -> None:
    client = Client()
    client.get("/items/5/", headers={"traceparent": TRACEPARENT})
    client.get("/items/6/", headers={"traceparent": "00-zz"})
    client.get("/items/7/")
    rows = [(r.path, r.trace_id, r.span_id) for r in records_of("/items/")]
    assert rows == [("/items/5/", TRACE, PARENT), ("/items/6/", None, None),
                    ("/items/7/", None, None)]  # fmt: skip


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_async_request_keeps_its_traceparent(anyio_backend: str) -> None:
    await AsyncClient().get("/items/8/", headers={"traceparent": TRACEPARENT})
    [record] = records_of("/items/8/")
    assert (record.trace_id, record.span_id) == (TRACE, PARENT)


def test_opentelemetrys_server_span_around_django_is_the_records() -> None:
    """OpenTelemetry's WSGI instrumentation around Django's handler: the record
    carries the server span it exported."""
    provider, spans = recording_provider()
    app = OpenTelemetryMiddleware(WSGIHandler(), tracer_provider=provider)
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/items/9/", "SCRIPT_NAME": "",
        "QUERY_STRING": "", "SERVER_NAME": "testserver", "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(), "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        "HTTP_TRACEPARENT": TRACEPARENT,
    }  # fmt: skip
    result = app(environ, lambda status, headers, exc_info=None: None)
    assert b"".join(result) == b"item 9"
    result.close()
    provider.shutdown()
    [server] = spans.get_finished_spans()
    [record] = records_of("/items/9/")
    assert (record.trace_id, record.span_id) == (TRACE, f"{server.context.span_id:016x}")


def test_djangos_opentelemetry_instrumentation_gives_the_records_its_span() -> None:
    """DjangoInstrumentor puts its middleware first in MIDDLEWARE, outside
    ours: the record carries the server span it exported."""
    provider, spans = recording_provider()
    instrumentor = DjangoInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        client = Client()  # its middleware chain built now, with OpenTelemetry's first
        client.get("/items/11/", headers={"traceparent": TRACEPARENT})
        client.get("/items/12/")
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    joined, started = spans.get_finished_spans()
    rows = [(r.path, r.trace_id, r.span_id) for r in records_of("/items/1")]
    assert rows == [
        ("/items/11/", TRACE, f"{joined.context.span_id:016x}"),
        ("/items/12/", f"{started.context.trace_id:032x}", f"{started.context.span_id:016x}"),
    ]
