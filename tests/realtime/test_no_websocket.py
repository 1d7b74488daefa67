"""A server without WebSocket support: uvicorn started with ``--ws none`` (as
after a bare ``pip install uvicorn``) passes the stream's handshake on as a
plain HTTP request. The middleware answers it with a 426 that says what to
install, and logs why once, not at every retry of a page."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.harness import OPEN_MONITORING_ENV, call, http_scope
from tests.servers import child_environment, uvicorn_server
from tests.wsgi.test_middleware import environ_for, serve

APP = "tests.realtime.ws_app:app"
TIMEOUT = 10.0
WARNING = "a WebSocket handshake for /ws/metrics arrived as a plain HTTP request"


def refusal(url: str) -> tuple[int, dict[str, Any]]:
    """A real ``websockets`` client's handshake: the HTTP status and JSON body."""
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=TIMEOUT)
    response = refused.value.response
    return response.status_code, json.loads(response.body)


@pytest.mark.slow
def test_uvicorn_without_websockets_gets_a_426_and_one_warning(tmp_path: Path) -> None:
    env = child_environment(AEGIS_UPDATE_INTERVAL="200", **OPEN_MONITORING_ENV)
    with uvicorn_server(APP, tmp_path, "--ws", "none", env=env) as server:
        url = f"ws://127.0.0.1:{server.port}/ws/metrics"
        for _ in range(3):  # a page retrying
            status, body = refusal(url)
            assert status == 426
            assert body["error"]["code"] == "websocket_unsupported"
            assert "no WebSocket support" in body["error"]["message"]
            assert "uvicorn[standard]" in body["error"]["message"]
        # A page cannot send a handshake of its own, but a plain GET now
        # learns why its stream failed.
        plain = httpx.get(f"{server.url}/ws/metrics", timeout=TIMEOUT)
        assert plain.status_code == 426 and plain.headers["upgrade"] == "websocket"
        assert plain.json()["error"]["code"] == "websocket_unsupported"
        assert httpx.get(f"{server.url}/ok", timeout=TIMEOUT).status_code == 200
        # The refused handshakes are not app traffic.
        realtime = httpx.get(f"{server.url}/api/metrics/realtime", timeout=TIMEOUT).json()
        assert realtime["data"]["total_requests"] == 1
        # uvicorn's own line, to be sure this is the failure users meet.
        assert server.log.wait_for("Unsupported upgrade request", TIMEOUT)
        server.terminate()  # the whole log, for the count below
    warnings = [line for line in server.log.text.splitlines() if WARNING in line]
    assert len(warnings) == 1, server.log.text
    assert "uvicorn[standard]" in warnings[0] and "(logged once)" in warnings[0]


@pytest.mark.usefixtures("hot_path")
@pytest.mark.anyio
async def test_plain_http_on_the_stream_path_is_answered_not_recorded(
    make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    aegis = make_aegis(metrics_registry="none")
    middleware = AegisMiddleware(app, aegis=aegis)
    # No handshake seen yet: only that this is a WebSocket path.
    before = await call(middleware, http_scope("/ws/metrics"))
    assert before.status == 426
    assert json.loads(before.body)["error"]["code"] == "upgrade_required"
    assert WARNING not in caplog.text
    upgrade = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
    for _ in range(2):
        handshake = await call(middleware, http_scope("/ws/metrics", headers=upgrade))
        assert handshake.status == 426
        assert json.loads(handshake.body)["error"]["code"] == "websocket_unsupported"
    assert caplog.text.count(WARNING) == 1
    after = await call(middleware, http_scope("/ws/metrics"))
    assert json.loads(after.body)["error"]["code"] == "websocket_unsupported"
    assert aegis.force_flush(10)
    assert recorded(aegis) == []


def test_a_wsgi_app_answers_on_the_stream_path(
    make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"app"]

    aegis = make_aegis(metrics_registry="none")
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    response, body = serve(middleware, environ_for("/ws/metrics", HTTP_UPGRADE="websocket"))
    assert response.status == "426 Upgrade Required"
    error = json.loads(body)["error"]
    assert error["code"] == "websocket_unsupported" and "ws_port" in error["message"]
    serve(middleware, environ_for("/ws/metrics", HTTP_UPGRADE="websocket"))
    assert caplog.text.count(WARNING) == 1
    assert aegis.force_flush(10)
    assert recorded(aegis) == []
