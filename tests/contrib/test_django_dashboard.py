"""Django: ``/dashboard?token=...`` traded for a cookie and a redirect, as under
ASGI and WSGI (tests/dashboard/test_token_cookie.py), through Django's own WSGI
handler (one Set-Cookie header per path on the wire) and its ASGI one; Secure
when Django sees https (SECURE_PROXY_SSL_HEADER included)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

django = pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.contrib.django_project.settings")
django.setup()

from django.apps import apps  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.test import AsyncClient, override_settings  # noqa: E402

from aegis_mw import Aegis  # noqa: E402
from tests.dashboard.test_token_cookie import BOTH, QUERY, TOKEN, assert_traded  # noqa: E402
from tests.wsgi.test_middleware import environ_for, serve  # noqa: E402

pytestmark = pytest.mark.usefixtures("hot_path")


@pytest.fixture
def guarded(make_aegis: Callable[..., Aegis]) -> Iterator[None]:
    """The app's pipeline swapped for one whose page and API need TOKEN (each
    handler built below builds Django's middleware chain, and so ours, anew)."""
    config: Any = apps.get_app_config("aegis_mw")
    saved = config._pipeline
    config._pipeline = make_aegis(metrics_registry="none", access=BOTH)
    try:
        yield
    finally:
        config._pipeline = saved


@pytest.mark.usefixtures("guarded")
@pytest.mark.parametrize("https", [False, True], ids=["http", "https-behind-a-proxy"])
def test_django_trades_the_token_for_a_cookie(https: bool) -> None:
    proxy = {"SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https")}
    with override_settings(**proxy):
        handler = get_wsgi_application()
        extra = {"HTTP_X_FORWARDED_PROTO": "https"} if https else {}
        environ = environ_for("/dashboard", QUERY_STRING=QUERY.decode("latin-1"), **extra)
        environ["HTTP_HOST"] = "testserver"
        response, body = serve(handler, environ)
    assert response.status.startswith("303") and body == b""
    assert_traded(303, response.headers, secure=https)
    cookie = {"HTTP_COOKIE": f"aegis_token={TOKEN}", "HTTP_HOST": "testserver"}
    landed, _ = serve(handler, environ_for("/dashboard", QUERY_STRING="range=1h", **cookie))
    assert landed.status.startswith("200")
    api, _ = serve(handler, environ_for("/api/metrics/realtime", **cookie))
    assert api.status.startswith("200")
    wrong, _ = serve(handler, environ_for("/dashboard", QUERY_STRING="token=nope-nope-nope",
                                          HTTP_HOST="testserver"))  # fmt: skip
    assert wrong.status.startswith("401")
    assert "set-cookie" not in {name.lower() for name, _ in wrong.headers}


@pytest.mark.anyio
@pytest.mark.usefixtures("guarded")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_django_under_asgi_trades_it_too(anyio_backend: str) -> None:
    response = await AsyncClient().get("/dashboard", QUERY_STRING=QUERY.decode("latin-1"))
    assert response.status_code == 303
    assert response["Location"] == "/dashboard?range=1h&note=%C3%A9t%C3%A9"
    morsels = sorted(response.cookies.values(), key=lambda morsel: str(morsel["path"]))
    assert [(m.key, m.value, m["path"]) for m in morsels] == [
        ("aegis_token", TOKEN, "/api/metrics"),
        ("aegis_token", TOKEN, "/dashboard"),
        ("aegis_token", TOKEN, "/ws/metrics"),
    ]
    assert all(m["httponly"] and m["samesite"] == "Strict" and not m["secure"] for m in morsels)
