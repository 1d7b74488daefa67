"""GET /dashboard: one self-contained page, its paths written in, a CSP that
allows exactly its own inline style and script, and the dashboard access rule
with the token also taken from the URL or a cookie."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded
from tests.harness import call, http_scope

pytestmark = pytest.mark.anyio
TOKEN = "dashboard-token-1234"


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def headers_of(sent: list[dict[str, Any]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in sent[0]["headers"]}


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_the_page_is_self_contained_with_a_strict_policy(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(metrics_registry="none", ws_path="/live", api_path="/stats",
                       update_interval=500)  # fmt: skip
    middleware = AegisMiddleware(ok, aegis=aegis)
    exchange = await call(middleware, http_scope("/dashboard"))
    assert exchange.status == 200
    headers = headers_of(exchange.sent)
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["x-content-type-options"] == "nosniff"
    page = exchange.body.decode()
    # Nothing from elsewhere: no external script, style, font or image.
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert "@import" not in page and "url(" not in page
    config = re.search(r'<script type="application/json" id="aegis-config">(.*?)</script>', page)
    assert config is not None
    assert json.loads(config.group(1)) == {"wsPath": "/live", "wsPort": 0, "apiPath": "/stats",
                                           "updateInterval": 500, "noStream": "",
                                           "traceUrl": "", "slowThresholdMs": 1000.0}  # fmt: skip
    # The policy names the hash of each inline block and nothing looser.
    policy = dict(
        part.strip().split(" ", 1) for part in headers["content-security-policy"].split(";")
    )
    [style] = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    [script] = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    assert policy["style-src"] == sha256(style)
    assert policy["script-src"] == sha256(script)
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in headers["content-security-policy"]
    assert ' style="' not in page  # inline style attributes would need 'unsafe-inline'
    # HEAD has the headers and no body; the page is not recorded as traffic.
    head = await call(middleware, http_scope("/dashboard", method="HEAD"))
    assert head.status == 200 and head.body == b""
    assert (await call(middleware, http_scope("/dashboard", method="POST"))).status == 405
    assert aegis.force_flush(10)
    assert recorded(aegis) == []


def config_and_policy(page: str, policy_header: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The page's config JSON, and its Content-Security-Policy by directive."""
    config = re.search(r'<script type="application/json" id="aegis-config">(.*?)</script>', page)
    assert config is not None
    policy = dict(part.strip().split(" ", 1) for part in policy_header.split(";"))
    return json.loads(config.group(1)), policy


async def test_the_trace_url_reaches_the_page_and_the_policy_stays_strict(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The recent requests panel links trace ids to ``trace_url``: the config
    carries the template as it is (the page fills it in), with the slow
    threshold its filter uses; the inline blocks still match the policy's
    hashes, and the policy is the one without a template (a link the user
    follows needs no directive)."""
    template = "https://traces.example/trace/{trace_id}?span={span_id}&x=1"
    pages = {}
    for trace_url in ("", template):
        aegis = make_aegis(metrics_registry="none", trace_url=trace_url, slow_threshold_ms=250)
        exchange = await call(AegisMiddleware(ok, aegis=aegis), http_scope("/dashboard"))
        assert exchange.status == 200
        pages[trace_url] = (exchange.body.decode(), headers_of(exchange.sent))
    page, headers = pages[template]
    config, policy = config_and_policy(page, headers["content-security-policy"])
    assert config["traceUrl"] == template
    assert config["slowThresholdMs"] == 250
    [style] = re.findall(r"<style>(.*?)</style>", page, re.DOTALL)
    [script] = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    assert policy["style-src"] == sha256(style)
    assert policy["script-src"] == sha256(script)
    assert headers["content-security-policy"] == pages[""][1]["content-security-policy"]
    assert "traces.example" not in headers["content-security-policy"]
    assert headers["referrer-policy"] == "no-referrer"
    # No link is written into the markup: the page builds it per row.
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    # The panel is there, its table with headers and its filter with a label.
    assert '<table id="requests">' in page
    assert '<label for="requests-filter">' in page
    headings = re.search(r'<table id="requests"><thead><tr>(.*?)</tr></thead>', page, re.DOTALL)
    assert headings is not None
    assert re.findall(r"<th[^>]*>(.*?)</th>", headings.group(1)) == [
        "time", "method", "route", "status", "duration ms", "trace",
    ]  # fmt: skip
    # The page builds its rows with textContent and attributes, never markup.
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "document.write" not in script


async def test_a_config_value_cannot_close_the_element(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none", api_path="/x</script><script>alert(1)")
    exchange = await call(AegisMiddleware(ok, aegis=aegis), http_scope("/dashboard"))
    page = exchange.body.decode()
    assert "</script><script>alert(1)" not in page
    assert page.count("<script") == 2


async def test_switched_off_the_path_reaches_the_app(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none", dashboard_path="")
    exchange = await call(AegisMiddleware(ok, aegis=aegis), http_scope("/dashboard"))
    assert exchange.body == b"app"


async def test_token_from_header_query_or_cookie(make_aegis: Callable[..., Aegis]) -> None:
    aegis = make_aegis(metrics_registry="none", access={"dashboard": {"tokens": [TOKEN]}})
    middleware = AegisMiddleware(ok, aegis=aegis)
    refused = await call(middleware, http_scope("/dashboard"))
    assert refused.status == 401
    assert json.loads(refused.body)["error"]["code"] == "unauthorized"
    wrong = await call(middleware, http_scope("/dashboard", query_string=b"token=nope-nope-nope"))
    assert wrong.status == 401
    for scope in (
        http_scope("/dashboard", headers=[(b"authorization", f"Bearer {TOKEN}".encode())]),
        http_scope("/dashboard", headers=[(b"cookie", f"a=b; aegis_token={TOKEN}".encode())]),
    ):
        assert (await call(middleware, scope)).status == 200
    # From the URL: traded for the cookie (tests/dashboard/test_token_cookie.py).
    traded = await call(
        middleware, http_scope("/dashboard", query_string=f"token={TOKEN}".encode())
    )
    assert traded.status == 303
    # The token from the URL opens the page only, not other groups' routes.
    metrics = await call(
        AegisMiddleware(ok, aegis=make_aegis(
            metrics_registry="none", access={"metrics": {"tokens": [TOKEN]}}
        )),
        http_scope("/metrics", query_string=f"token={TOKEN}".encode()),
    )  # fmt: skip
    assert metrics.status == 401
