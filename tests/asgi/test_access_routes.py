"""Access rules on the routes the middleware serves: 401/403 before any work is done,
liveness open unless configured, the client address taken after trusted proxies."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded
from tests.harness import call, http_scope

pytestmark = pytest.mark.anyio
TOKEN = "scrape-token-1234"


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


async def get(
    middleware: Any, path: str, *headers: tuple[bytes, bytes], client: str = "10.0.0.7"
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    exchange = await call(middleware, http_scope(path, headers=headers, client=(client, 5000)))
    assert exchange.status is not None
    return exchange.status, exchange.sent[0]["headers"], exchange.body


async def test_metrics_behind_a_token_and_a_network(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(
        metrics_registry="none",
        access={"metrics": {"tokens": [TOKEN], "allow_ips": ["10.0.0.0/8"]}},
    )
    middleware = AegisMiddleware(ok, aegis=aegis)
    bearer = (b"authorization", f"Bearer {TOKEN}".encode())

    status, headers, body = await get(middleware, "/metrics")
    assert status == 401
    assert (b"www-authenticate", b'Bearer realm="aegis"') in headers
    assert json.loads(body) == {
        "error": {"code": "unauthorized", "message": "credentials required"}
    }
    status, _, _ = await get(middleware, "/metrics", (b"authorization", b"Bearer nope-nope-nope"))
    assert status == 401
    status, _, body = await get(middleware, "/metrics", bearer)
    assert status == 200 and body.startswith(b"# HELP aegis_")
    status, _, body = await get(middleware, "/metrics", bearer, client="192.168.1.9")
    assert status == 403 and json.loads(body)["error"]["code"] == "forbidden"
    assert recorded(aegis) == []  # refused scrapes are not app traffic either


async def test_health_behind_basic_while_liveness_stays_open(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(access={"health": {"basic": {"kubelet": "probe-password"}}})
    middleware = AegisMiddleware(ok, aegis=aegis)
    credentials = base64.b64encode(b"kubelet:probe-password")
    for path in ("/health/ready", "/health"):
        status, headers, _ = await get(middleware, path)
        assert status == 401
        assert (b"www-authenticate", b'Basic realm="aegis", charset="UTF-8"') in headers
        status, _, _ = await get(middleware, path, (b"authorization", b"Basic " + credentials))
        assert status == 200
    assert (await get(middleware, "/health/live"))[0] == 200


async def test_liveness_can_be_closed_too(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(access={"liveness": {"allow_ips": ["127.0.0.1/32"]}})
    middleware = AegisMiddleware(ok, aegis=aegis)
    assert (await get(middleware, "/health/live", client="127.0.0.1"))[0] == 200
    assert (await get(middleware, "/health/live", client="10.0.0.7"))[0] == 403


async def test_the_address_is_the_client_behind_a_trusted_proxy(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(
        metrics_registry="none",
        trusted_proxies=["10.0.0.0/8"],
        access={"metrics": {"allow_ips": ["203.0.113.0/24"]}},
    )
    middleware = AegisMiddleware(ok, aegis=aegis)
    forwarded = (b"x-forwarded-for", b"203.0.113.5")
    assert (await get(middleware, "/metrics", forwarded, client="10.0.0.2"))[0] == 200
    # The proxy itself is not in the allowlist; a header from an untrusted peer is ignored.
    assert (await get(middleware, "/metrics", client="10.0.0.2"))[0] == 403
    assert (await get(middleware, "/metrics", forwarded, client="198.51.100.1"))[0] == 403


async def test_head_of_a_refused_route_has_no_body(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(access={"metrics": {"tokens": [TOKEN]}})
    exchange = await call(AegisMiddleware(ok, aegis=aegis), http_scope("/metrics", method="HEAD"))
    assert (exchange.status, exchange.body) == (401, b"")
