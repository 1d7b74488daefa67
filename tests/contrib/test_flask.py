"""The Flask extension: route templates from the matched rule (blueprints too),
options from app.config, and the app's error handlers, teardown functions and
streamed responses unchanged."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

flask = pytest.importorskip("flask")

from opentelemetry.instrumentation.flask import FlaskInstrumentor  # noqa: E402

from aegis_mw.contrib.flask import Aegis, route_template  # noqa: E402
from aegis_mw.testing import recorded  # noqa: E402
from tests.tracing import recording_provider  # noqa: E402

# Every test runs on the compiled and on the pure-Python request path.
pytestmark = pytest.mark.usefixtures("hot_path")


@pytest.mark.parametrize(
    ("rule", "template"),
    [
        ("/items/<int:item_id>", "/items/{item_id}"),
        ("/files/<path:name>", "/files/{name}"),
        ("/<any(a, b):kind>/<slug>", "/{kind}/{slug}"),
        ("/plain", "/plain"),
    ],
)
def test_route_templates(rule: str, template: str) -> None:
    assert route_template(rule) == template


def build(install: bool = True) -> tuple[Any, Aegis, list[str]]:
    app = flask.Flask(__name__)
    app.config.update(AEGIS_SINK="memory://", AEGIS_METRICS_REGISTRY="none",
                      AEGIS_SAMPLE_RATE=1.0)  # fmt: skip
    torn_down: list[str] = []
    shop = flask.Blueprint("shop", __name__, url_prefix="/shop")

    @shop.get("/orders/<int:order_id>")
    def order(order_id: int) -> str:
        return f"order {order_id}"

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> str:
        return f"item {item_id}"

    @app.get("/teapot")
    def teapot() -> str:
        raise LookupError("short and stout")

    @app.errorhandler(LookupError)
    def handled(error: LookupError) -> tuple[str, int]:
        return f"handled: {error}", 418

    @app.get("/stream")
    def stream() -> Any:
        def chunks() -> Iterator[str]:
            yield "a"
            yield "b"

        return flask.Response(flask.stream_with_context(chunks()))

    @app.teardown_request
    def teardown(error: BaseException | None) -> None:
        torn_down.append(flask.request.path)

    app.register_blueprint(shop)
    extension = Aegis()
    if install:
        extension.init_app(app)
    return app, extension, torn_down


PATHS = ("/items/3", "/shop/orders/9", "/teapot", "/stream", "/nowhere")


def test_the_app_answers_and_tears_down_as_without_the_extension() -> None:
    answers = []
    teardowns = []
    for install in (False, True):
        app, extension, torn_down = build(install)
        client = app.test_client()
        answers.append([(r.status_code, r.data, r.headers.get("Content-Type"))
                        for r in (client.get(path, buffered=True) for path in PATHS)])  # fmt: skip
        teardowns.append(torn_down)
        if extension.pipeline is not None:
            extension.pipeline.shutdown()
    assert answers[0] == answers[1]
    assert teardowns[0] == teardowns[1]


def test_requests_are_recorded_with_their_rules() -> None:
    app, extension, torn_down = build()
    assert extension.pipeline is app.extensions["aegis_mw"]
    assert extension.pipeline.settings.sink == ("memory://",)  # from app.config
    # buffered: the test client then closes each response, as every WSGI server does.
    client = app.test_client()
    get = functools.partial(client.get, buffered=True)
    assert get("/items/3").text == "item 3"
    assert get("/shop/orders/9").text == "order 9"
    teapot = get("/teapot")
    assert (teapot.status_code, teapot.text) == (418, "handled: short and stout")
    assert get("/stream").text == "ab"
    assert get("/nowhere").status_code == 404
    assert get("/metrics").status_code == 200  # served by the middleware
    records = recorded(extension.pipeline)
    assert [(r.route, r.path, r.status) for r in records] == [
        ("/items/{item_id}", "/items/3", 200),
        ("/shop/orders/{order_id}", "/shop/orders/9", 200),
        ("/teapot", "/teapot", 418),
        ("/stream", "/stream", 200),
        ("<unmatched>", "/nowhere", 404),
    ]
    assert records[3].response_bytes == 2
    assert torn_down[:3] == ["/items/3", "/shop/orders/9", "/teapot"]
    extension.pipeline.shutdown()


def test_an_unhandled_error_is_recorded_and_flask_answers_as_usual() -> None:
    app = flask.Flask(__name__)

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("kaput")

    extension = Aegis(app, sink="memory://", metrics_registry="none")
    response = app.test_client().get("/boom", buffered=True)
    assert response.status_code == 500  # Flask's own error page, as without aegis
    [record] = recorded(extension.pipeline)  # type: ignore[arg-type]
    assert (record.route, record.status) == ("/boom", 500)
    extension.pipeline.shutdown()  # type: ignore[union-attr]


@pytest.mark.parametrize("debug", [False, True])
def test_an_unhandled_error_is_stored_with_its_type_and_message(
    tmp_path: Path, debug: bool
) -> None:
    """Outside debug mode Flask answers the exception itself (it never reaches
    the middleware); the stored record still names it, as under ASGI, and the
    app's answer is Flask's own."""
    app = flask.Flask(__name__)
    app.debug = debug

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("kaput")

    @app.get("/fine")
    def fine() -> str:
        return "fine"

    without = flask.Flask(__name__)
    without.add_url_rule("/boom", view_func=boom)
    database = tmp_path / "aegis.db"
    extension = Aegis(app, sink=f"sqlite:///{database}", metrics_registry="none")
    client = app.test_client()
    if debug:  # Flask lets it propagate to the server: the middleware sees it
        with pytest.raises(RuntimeError, match="kaput"):
            client.get("/boom", buffered=True)
    else:
        response = client.get("/boom", buffered=True)
        expected = without.test_client().get("/boom", buffered=True)
        assert (response.status_code, response.data) == (500, expected.data)
    assert client.get("/fine", buffered=True).text == "fine"
    assert extension.pipeline is not None
    extension.pipeline.shutdown()
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute(
            "SELECT route, status, error FROM aegis_requests ORDER BY timestamp"
        ).fetchall()
    finally:
        connection.close()
    assert rows == [("/boom", 500, "RuntimeError: kaput"), ("/fine", 200, "")]


def test_the_apps_own_metrics_from_a_view_are_on_metrics() -> None:
    app = flask.Flask(__name__)
    app.config.update(AEGIS_SINK="memory://", AEGIS_METRICS_REGISTRY="none")
    extension = Aegis(app)
    assert extension.pipeline is not None
    orders = extension.pipeline.counter("orders_total", "Orders placed.", ("region",))

    @app.post("/orders/<region>")
    def order(region: str) -> str:
        orders.labels(region=region).inc()
        return "ok"

    client = app.test_client()
    for region in ("eu", "eu", "us"):
        assert client.post(f"/orders/{region}", buffered=True).text == "ok"
    text = client.get("/metrics", buffered=True).text
    assert 'orders_total{region="eu"} 2' in text
    assert 'orders_total{region="us"} 1' in text
    extension.pipeline.shutdown()


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.mark.parametrize("instrumented_first", [True, False])
def test_flasks_opentelemetry_span_is_the_records(instrumented_first: bool) -> None:
    """FlaskInstrumentor makes its span current inside Flask's request
    handling, inside our middleware whichever wraps wsgi_app last: the span
    current when the response starts is the record's."""
    provider, spans = recording_provider()
    app, extension, _ = build(install=False)
    if instrumented_first:
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    extension.init_app(app)
    if not instrumented_first:
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    try:
        client = app.test_client()
        get = functools.partial(client.get, buffered=True)
        assert get("/items/3", headers={"traceparent": TRACEPARENT}).text == "item 3"
        assert get("/items/4").text == "item 4"
        joined, started = spans.get_finished_spans()
        records = recorded(extension.pipeline)
        assert [(r.path, r.trace_id, r.span_id) for r in records] == [
            (f"/items/{n}", f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}")
            for n, s in ((3, joined), (4, started))
        ]
        assert records[0].trace_id == TRACE
    finally:
        FlaskInstrumentor().uninstrument_app(app)
        extension.pipeline.shutdown()
        provider.shutdown()
