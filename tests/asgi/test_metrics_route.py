"""GET /metrics served by the middleware: exact figures, both formats, gzip, the app's
own registry, constant labels, and the route's behaviour around the app."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import FakeClock, recorded
from tests.harness import Exchange, call, http_scope, websocket_scope

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("hot_path")]


def routed_app(clock: FakeClock | None = None) -> Any:
    """Sets a route template, status from the path, a body of the path's length."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1001})
            return
        path = scope["path"]
        scope["route"] = "/items/{id}" if path.startswith("/items/") else None
        status = int(path.rsplit("/", 1)[-1]) if path.startswith("/status/") else 200
        if clock is not None:
            clock.advance(0.02)
        await send({"type": "http.response.start", "status": status, "headers": []})
        if clock is not None:
            clock.advance(0.03)
        await send({"type": "http.response.body", "body": b"x" * len(path)})

    return app


async def scrape(
    middleware: Any, accept: str = "", encoding: str = "", method: str = "GET"
) -> Exchange:
    headers = [(b"accept", accept.encode()), (b"accept-encoding", encoding.encode())]
    return await call(middleware, http_scope("/metrics", method=method, headers=headers))


def samples(text: str, openmetrics: bool = False) -> dict[tuple[str, frozenset[Any]], float]:
    parse = parse_openmetrics if openmetrics else parse_text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parse(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[Any]], float], name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


async def test_counts_are_exact_and_include_what_waits_in_the_inbox(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Every request counted once, by method, route and status, before any flush."""
    clock = FakeClock()
    aegis = make_aegis(clock=clock, flush_interval=3600, metrics_registry="none")
    middleware = AegisMiddleware(routed_app(clock), aegis=aegis)
    for index in range(7):
        await call(middleware, http_scope(f"/items/{index}"))
    await call(middleware, http_scope("/items/9", method="POST"))
    for status in (404, 503, 503):
        await call(middleware, http_scope(f"/status/{status}"))
    await call(middleware, http_scope("/items/1", method="HEAD"))
    assert len(aegis.recorder.inbox) == 12  # nothing flushed yet

    response = await scrape(middleware)
    assert response.status == 200
    found = samples(response.body.decode())
    total = "aegis_http_requests_total"
    assert value(found, total, method="GET", route="/items/{id}", status="200") == 7
    assert value(found, total, method="POST", route="/items/{id}", status="200") == 1
    assert value(found, total, method="GET", route="<unmatched>", status="404") == 1
    assert value(found, total, method="GET", route="<unmatched>", status="503") == 2
    # The scrape itself is not app traffic.
    assert sum(v for (name, _), v in found.items() if name == total) == 12

    histogram = "aegis_http_request_duration_seconds"
    get_items = {"method": "GET", "route": "/items/{id}"}
    assert value(found, f"{histogram}_count", **get_items) == 7
    assert value(found, f"{histogram}_sum", **get_items) == pytest.approx(7 * 0.05)
    assert value(found, f"{histogram}_bucket", le="0.025", **get_items) == 0
    assert value(found, f"{histogram}_bucket", le="0.05", **get_items) == 7
    assert value(found, f"{histogram}_bucket", le="+Inf", **get_items) == 7
    ttfb = "aegis_http_time_to_first_byte_seconds"
    assert value(found, f"{ttfb}_sum", **get_items) == pytest.approx(7 * 0.02)
    assert value(found, f"{ttfb}_bucket", le="0.025", **get_items) == 7
    sizes = "aegis_http_response_size_bytes"
    assert value(found, f"{sizes}_sum", **get_items) == sum(len(f"/items/{i}") for i in range(7))
    assert value(found, f"{sizes}_sum", method="HEAD", route="/items/{id}") == 0
    assert value(found, "aegis_http_requests_in_progress") == 0
    assert value(found, "aegis_buffer_records", buffer="inbox") == 12

    # The same figures after the flush, and the records agree.
    assert len(recorded(aegis)) == 12
    again = samples((await scrape(middleware)).body.decode())
    assert value(again, total, method="GET", route="/items/{id}", status="200") == 7
    assert value(again, "aegis_buffer_records", buffer="inbox") == 0


async def test_openmetrics_when_asked_and_gzip_when_accepted(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(metrics_registry="none")
    middleware = AegisMiddleware(routed_app(), aegis=aegis)
    await call(middleware, http_scope("/items/1"))
    accept = (
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    )
    response = await scrape(middleware, accept=accept, encoding="gzip, deflate")
    headers = dict(response.sent[0]["headers"])
    assert headers[b"content-type"] == b"application/openmetrics-text; version=1.0.0; charset=utf-8"
    assert headers[b"content-encoding"] == b"gzip"
    text = gzip.decompress(response.body).decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    found = samples(text, openmetrics=True)
    assert value(found, "aegis_http_requests_total", method="GET", route="/items/{id}",
                 status="200") == 1  # fmt: skip

    plain = await scrape(middleware, accept="text/plain", encoding="identity")
    headers = dict(plain.sent[0]["headers"])
    assert headers[b"content-type"] == b"text/plain; version=0.0.4; charset=utf-8"
    assert b"content-encoding" not in headers
    assert int(headers[b"content-length"]) == len(plain.body)


async def test_the_apps_registry_appears_alongside(make_aegis: Callable[..., Aegis]) -> None:
    registry = CollectorRegistry()
    orders = Counter("shop_orders", "Orders placed.", registry=registry)
    orders.inc(3)
    aegis = make_aegis(metrics_registry=registry)
    middleware = AegisMiddleware(routed_app(), aegis=aegis)
    await call(middleware, http_scope("/items/1"))
    for accept, openmetrics in (("", False), ("application/openmetrics-text", True)):
        text = (await scrape(middleware, accept=accept)).body.decode()
        found = samples(text, openmetrics)
        assert value(found, "shop_orders_total") == 3
        assert ("aegis_http_requests_total", frozenset(
            {"method": "GET", "route": "/items/{id}", "status": "200"}.items()
        )) in found  # fmt: skip
        assert text.count("# EOF") == (1 if openmetrics else 0)


async def test_constant_labels_and_namespace(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(
        metrics_namespace="shop",
        metrics_labels={"service": "checkout", "environment": 'prod "eu"'},
        metrics_registry="none",
    )
    middleware = AegisMiddleware(routed_app(), aegis=aegis)
    await call(middleware, http_scope("/items/1"))
    found = samples((await scrape(middleware)).body.decode())
    assert found  # every series carries both constant labels, and our namespace
    for name, labels in found:
        assert name.startswith("shop_"), name
        assert {("service", "checkout"), ("environment", 'prod "eu"')} <= labels, name


async def test_the_collector_feeds_a_registry_of_the_apps(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none")
    middleware = AegisMiddleware(routed_app(), aegis=aegis)
    await call(middleware, http_scope("/items/1"))
    registry = CollectorRegistry()
    registry.register(aegis.metrics.collector())
    found = samples(generate_latest(registry).decode())
    assert value(found, "aegis_http_requests_total", method="GET", route="/items/{id}",
                 status="200") == 1  # fmt: skip
    assert value(found, "aegis_http_request_duration_seconds_count", method="GET",
                 route="/items/{id}") == 1  # fmt: skip


async def test_websocket_sessions_and_pipeline_counters(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(max_routes=1, metrics_registry="none")
    middleware = AegisMiddleware(routed_app(), aegis=aegis)
    exchange = Exchange([{"type": "websocket.connect"}])
    scope = websocket_scope("/ws")
    scope["route"] = "/ws"
    await call(middleware, scope, exchange)
    await call(middleware, http_scope("/items/1"))  # a second route: over max_routes
    await call(middleware, http_scope("/status/404"))  # unmatched: over the cap too
    found = samples((await scrape(middleware)).body.decode())
    assert value(found, "aegis_websocket_sessions_total", route="/ws", close_code="1001") == 1
    assert value(found, "aegis_http_requests_total", method="GET", route="<overflow>",
                 status="200") == 1  # fmt: skip
    assert value(found, "aegis_route_overflow_total") == 2
    assert value(found, "aegis_records_dropped_total", reason="buffer_full") == 0
    assert value(found, "aegis_sink_errors_total", sink="memory") == 0
    assert value(found, "aegis_websocket_connections_active") == 0


# -- the route itself ----------------------------------------------------------------


async def test_the_route_is_answered_before_the_app_and_never_recorded(
    make_aegis: Callable[..., Aegis],
) -> None:
    """An app route on the same path is shadowed (the scraper never depends on the
    app's routing); the scrape is not counted or stored."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the app's own /metrics"})

    aegis = make_aegis(metrics_registry="none")
    middleware = AegisMiddleware(app, aegis=aegis)
    for method in ("GET", "HEAD"):
        response = await scrape(middleware, method=method)
        assert response.status == 200
        headers = dict(response.sent[0]["headers"])
        assert headers[b"cache-control"] == b"no-store"
        assert (response.body == b"") is (method == "HEAD")
    assert seen == []
    assert recorded(aegis) == []
    assert aegis.stats().offered == 0


async def test_other_methods_get_405_with_allow(make_aegis: Callable[..., Aegis]) -> None:
    middleware = AegisMiddleware(routed_app(), aegis=make_aegis(metrics_registry="none"))
    response = await scrape(middleware, method="POST")
    assert response.status == 405
    headers = dict(response.sent[0]["headers"])
    assert headers[b"allow"] == b"GET, HEAD"
    assert headers[b"content-type"] == b"application/json"
    assert b'"code":"method_not_allowed"' in response.body


async def test_the_path_is_configurable_or_off(make_aegis: Callable[..., Aegis]) -> None:
    moved = AegisMiddleware(routed_app(), aegis=make_aegis(metrics_path="/internal/metrics"))
    assert (await call(moved, http_scope("/internal/metrics"))).body.startswith(b"# HELP aegis_")
    assert (await call(moved, http_scope("/metrics"))).body == b"x" * len("/metrics")

    aegis = make_aegis(metrics_path="")
    off = AegisMiddleware(routed_app(), aegis=aegis)
    assert (await call(off, http_scope("/metrics"))).body == b"x" * len("/metrics")
    assert [r.path for r in recorded(aegis)] == ["/metrics"]  # ordinary app traffic now


async def test_system_metrics_with_the_system_extra(
    make_aegis: Callable[..., Aegis], tmp_path: Any
) -> None:
    """The machine's CPU, memory and the disk of a configured path (psutil, an extra)."""
    pytest.importorskip("psutil")
    aegis = make_aegis(
        metrics_registry="none", metrics_system=True, metrics_disk_path=str(tmp_path)
    )
    middleware = AegisMiddleware(routed_app(), aegis=aegis)
    found = samples((await scrape(middleware)).body.decode())
    assert 0 <= value(found, "aegis_system_cpu_usage_ratio") <= 1
    memory = {state: value(found, "aegis_system_memory_bytes", state=state)
              for state in ("total", "available", "used")}  # fmt: skip
    assert memory["total"] > 0 and memory["available"] <= memory["total"]
    disk = {state: value(found, "aegis_system_disk_bytes", path=str(tmp_path), state=state)
            for state in ("total", "used", "free")}  # fmt: skip
    assert disk["total"] >= disk["used"] and disk["total"] > 0


async def test_without_psutil_the_system_option_names_the_extra(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "psutil", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"aegis_mw\[system\]"):
        make_aegis(metrics_system=True)
