"""``/dashboard?token=...`` is traded for a cookie and a redirect, so the token is
not in the access log on every page load: 303 to the same URL without it
(other parameters kept), the ``aegis_token`` cookie set HttpOnly,
SameSite=Strict, Secure over https, once for each path the page's requests go
to; a wrong token gets no cookie and the usual answer. ASGI and WSGI here,
Django in tests/contrib/test_django_dashboard.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.cookies import SimpleCookie
from typing import Any

import pytest

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.harness import call, http_scope
from tests.wsgi.test_middleware import environ_for, serve

# The middlewares' own request paths, compiled and pure-Python, lead here alike.
pytestmark = pytest.mark.usefixtures("hot_path")
TOKEN = "dashboard-token-1234"
#: Another parameter, raw UTF-8 and %-escaped, either side of the token.
QUERY = f"range=1h&token={TOKEN}&note=%C3%A9t%C3%A9".encode()
LANDING = "/dashboard?range=1h&note=%C3%A9t%C3%A9"
PATHS = ["/dashboard", "/api/metrics", "/ws/metrics"]
BOTH = {"dashboard": {"tokens": [TOKEN]}, "api": {"tokens": [TOKEN]}}


def cookies(set_cookies: list[str]) -> list[dict[str, Any]]:
    """Each Set-Cookie header as the browser reads it."""
    found = []
    for text in set_cookies:
        jar: SimpleCookie = SimpleCookie()
        jar.load(text)
        [(name, morsel)] = jar.items()
        found.append(
            {
                "name": name,
                "value": morsel.value,
                "path": morsel["path"],
                "httponly": bool(morsel["httponly"]),
                "samesite": morsel["samesite"],
                "secure": bool(morsel["secure"]),
                "expires": morsel["expires"] or morsel["max-age"],
            }
        )
    return found


def assert_traded(status: int, headers: list[tuple[str, str]], *, secure: bool) -> None:
    assert status == 303
    named = {name.lower(): value for name, value in headers}
    assert named["location"] == LANDING
    assert named["cache-control"] == "no-store"
    assert named["referrer-policy"] == "no-referrer"
    set_cookies = [value for name, value in headers if name.lower() == "set-cookie"]
    expected = [
        {"name": "aegis_token", "value": TOKEN, "path": path, "httponly": True,
         "samesite": "Strict", "secure": secure, "expires": ""}
        for path in PATHS
    ]  # fmt: skip
    assert cookies(set_cookies) == expected


def asgi_headers(sent: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in sent[0]["headers"]]


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_asgi_trades_the_token_for_a_cookie(
    make_aegis: Callable[..., Aegis], scheme: str
) -> None:
    middleware = AegisMiddleware(ok, aegis=make_aegis(metrics_registry="none", access=BOTH))
    traded = await call(middleware, http_scope("/dashboard", query_string=QUERY, scheme=scheme))
    assert_traded(traded.status or 0, asgi_headers(traded.sent), secure=scheme == "https")
    assert traded.body == b""
    # The landing URL: the page, with the cookie a browser sends back.
    cookie = [(b"cookie", f"aegis_token={TOKEN}".encode())]
    landed = await call(middleware, http_scope("/dashboard", query_string=b"range=1h",
                                               headers=cookie))  # fmt: skip
    assert landed.status == 200 and b"<title>aegis_mw dashboard</title>" in landed.body
    # The page's API calls carry the cookie too; without it they are refused.
    api = await call(middleware, http_scope("/api/metrics/realtime", headers=cookie))
    assert api.status == 200
    assert (await call(middleware, http_scope("/api/metrics/realtime"))).status == 401
    # HEAD trades too; a wrong token gets the usual 401 and no cookie.
    head = await call(middleware, http_scope("/dashboard", method="HEAD", query_string=QUERY))
    assert head.status == 303
    wrong = await call(middleware, http_scope("/dashboard", query_string=b"token=nope-nope-nope"))
    assert wrong.status == 401
    assert "set-cookie" not in dict(asgi_headers(wrong.sent))


@pytest.mark.anyio
async def test_only_a_token_some_rule_takes_is_traded(make_aegis: Callable[..., Aegis]) -> None:
    """An open page with a token for its API: traded. A token no rule takes, or a
    page with no credential rule at all: the page as it is, no cookie."""
    only_api = make_aegis(
        metrics_registry="none", access={"api": {"tokens": [TOKEN]}, "dashboard": "open"}
    )
    middleware = AegisMiddleware(ok, aegis=only_api)
    traded = await call(middleware, http_scope("/dashboard", query_string=QUERY))
    assert_traded(traded.status or 0, asgi_headers(traded.sent), secure=False)
    wrong = await call(middleware, http_scope("/dashboard", query_string=b"token=nope-nope-nope"))
    assert wrong.status == 200 and "set-cookie" not in dict(asgi_headers(wrong.sent))
    open_page = AegisMiddleware(ok, aegis=make_aegis(metrics_registry="none"))
    served = await call(open_page, http_scope("/dashboard", query_string=QUERY))
    assert served.status == 200 and "set-cookie" not in dict(asgi_headers(served.sent))
    # A valid Authorization header does not make a wrong URL token worth a cookie.
    header = [(b"authorization", f"Bearer {TOKEN}".encode())]
    both = AegisMiddleware(ok, aegis=make_aegis(metrics_registry="none", access=BOTH))
    scope = http_scope("/dashboard", query_string=b"token=nope-nope-nope", headers=header)
    page = await call(both, scope)
    assert page.status == 200 and "set-cookie" not in dict(asgi_headers(page.sent))


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_wsgi_trades_the_token_for_a_cookie(make_aegis: Callable[..., Aegis], scheme: str) -> None:
    aegis = make_aegis(metrics_registry="none", access=BOTH)
    middleware = AegisWSGIMiddleware(lambda environ, start: [b"app"], aegis=aegis)
    environ = environ_for("/dashboard", QUERY_STRING=QUERY.decode("latin-1"))
    environ["wsgi.url_scheme"] = scheme
    response, body = serve(middleware, environ)
    assert response.status == "303 See Other" and body == b""
    assert_traded(303, response.headers, secure=scheme == "https")
    cookie = {"HTTP_COOKIE": f"aegis_token={TOKEN}"}
    landed, _ = serve(middleware, environ_for("/dashboard", QUERY_STRING="range=1h", **cookie))
    assert landed.status == "200 OK"
    api, body = serve(middleware, environ_for("/api/metrics/realtime", **cookie))
    assert api.status == "200 OK" and "data" in json.loads(body)
    wrong, _ = serve(middleware, environ_for("/dashboard", QUERY_STRING="token=nope-nope-nope"))
    assert wrong.status == "401 Unauthorized"
    assert "set-cookie" not in {name.lower() for name, _ in wrong.headers}
