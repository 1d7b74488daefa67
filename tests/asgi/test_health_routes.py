"""/health/live, /health/ready and /health served by the middleware."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.core.flusher import Flusher
from aegis_mw.testing import recorded
from tests.harness import call, http_scope

pytestmark = pytest.mark.anyio


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


async def get(middleware: Any, path: str, method: str = "GET") -> tuple[int, dict[str, Any], Any]:
    exchange = await call(middleware, http_scope(path, method=method))
    headers = dict(exchange.sent[0]["headers"])
    body = json.loads(exchange.body) if exchange.body else None
    assert exchange.status is not None
    return exchange.status, headers, body


async def test_readiness_reports_every_check(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(health_cache_seconds=0)
    aegis.health.add("database", lambda: {"pool": 5})
    aegis.health.add("search", lambda: False, critical=False)
    middleware = AegisMiddleware(ok, aegis=aegis)

    status, headers, body = await get(middleware, "/health/ready")
    assert status == 200  # degraded is still ready
    assert headers[b"content-type"] == b"application/health+json"
    assert body["status"] == "warn"
    database = body["checks"]["database"][0]
    assert (database["status"], database["critical"], database["details"]) == (
        "pass", True, {"pool": 5},
    )  # fmt: skip
    assert database["time"].endswith("Z") and database["durationMs"] >= 0
    search = body["checks"]["search"][0]
    assert (search["status"], search["output"], search["critical"]) == (
        "fail", "check returned False", False,
    )  # fmt: skip

    aegis.health.add("database", lambda: False)  # replaced, and critical
    status, _, body = await get(middleware, "/health/ready")
    assert (status, body["status"]) == (503, "fail")

    status, _, body = await get(middleware, "/health")
    assert (status, body["status"]) == (503, "fail")
    assert body["liveness"]["status"] == "pass"
    assert body["version"]
    assert set(body["checks"]) == {"database", "search"}


async def test_liveness_says_nothing_but_its_status(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis()
    aegis.health.add("database", lambda: False)  # readiness fails; liveness does not care
    middleware = AegisMiddleware(ok, aegis=aegis)
    status, headers, body = await get(middleware, "/health/live")
    assert (status, body) == (200, {"status": "pass"})
    assert headers[b"content-type"] == b"application/health+json"


async def test_liveness_fails_when_the_loop_lags(make_aegis: Callable[..., Aegis]) -> None:
    """The loop blocked for 0.3 s (the situation under test, on purpose) against a
    0.05 s limit: the watching thread's ping waits, and liveness says fail."""
    aegis = make_aegis(liveness_max_loop_lag=0.05)
    aegis.health.loop_lag.interval = 0.01
    middleware = AegisMiddleware(ok, aegis=aegis)
    assert (await get(middleware, "/health/live"))[0] == 200  # starts the watcher
    time.sleep(0.3)  # noqa: ASYNC251 (a handler hogging the event loop: what is tested)
    status, _, body = await get(middleware, "/health/live")
    assert (status, body) == (503, {"status": "fail"})
    assert aegis.health.loop_lag.lag() >= 0.25


async def test_liveness_fails_when_the_flusher_is_dead(
    make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    aegis = make_aegis()
    middleware = AegisMiddleware(ok, aegis=aegis)
    monkeypatch.setattr(Flusher, "alive", property(lambda self: False))
    status, _, body = await get(middleware, "/health/live")
    assert (status, body) == (503, {"status": "fail"})
    monkeypatch.undo()
    aegis.shutdown()  # stopped on purpose: not a dead flusher
    assert (await get(middleware, "/health/live"))[0] == 200


async def test_health_routes_are_not_app_traffic(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis()
    middleware = AegisMiddleware(ok, aegis=aegis)
    for path in ("/health", "/health/live", "/health/ready"):
        assert (await get(middleware, path, "HEAD"))[0] == 200
        status, headers, body = await get(middleware, path, "DELETE")
        assert (status, headers[b"allow"]) == (405, b"GET, HEAD")
        assert body["error"]["code"] == "method_not_allowed"
    assert recorded(aegis) == []


async def test_health_paths_are_configurable_or_off(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(liveness_path="/livez", readiness_path="/readyz", health_path="")
    middleware = AegisMiddleware(ok, aegis=aegis)
    assert (await get(middleware, "/livez"))[2] == {"status": "pass"}
    assert (await get(middleware, "/readyz"))[2]["status"] == "pass"
    exchange = await call(middleware, http_scope("/health"))
    assert exchange.body == b"app"  # not ours any more: the app answers, and it is recorded
    assert [r.path for r in recorded(aegis)] == ["/health"]


async def test_check_results_appear_on_metrics(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none")
    aegis.health.add("database", lambda: True)
    aegis.health.add("search", lambda: False, critical=False)
    middleware = AegisMiddleware(ok, aegis=aegis)
    scrape = (await call(middleware, http_scope("/metrics"))).body.decode()
    assert "aegis_health_check_status" not in scrape  # no run yet: nothing to show
    await get(middleware, "/health/ready")
    scrape = (await call(middleware, http_scope("/metrics"))).body.decode()
    assert 'aegis_health_check_status{check="database"} 1' in scrape
    assert 'aegis_health_check_status{check="search"} 0' in scrape
