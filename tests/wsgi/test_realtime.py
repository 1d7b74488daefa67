"""/ws/metrics for WSGI apps: a websockets server thread on ws_port speaking
the same protocol, with the same origin and access rules (the dashboard's
own origin allowed once the page was served), spoken to by the real
websockets client."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from aegis_mw import Aegis
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.servers import free_port
from tests.wsgi.test_middleware import environ_for, serve

WAIT = 10.0


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def streaming(make_aegis: Callable[..., Aegis]) -> Iterator[tuple[AegisWSGIMiddleware, int]]:
    port = free_port()
    aegis = make_aegis(metrics_registry="none", ws_port=port, update_interval=100)
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    serve(middleware, environ_for("/first"))  # the first request starts the stream's server
    realtime = middleware._routes.realtime
    assert realtime is not None and realtime.ready.wait(WAIT) and not realtime.failed
    yield middleware, port
    realtime.stop()


def test_the_stream_speaks_the_protocol(streaming: tuple[AegisWSGIMiddleware, int]) -> None:
    middleware, port = streaming
    for _ in range(4):
        serve(middleware, environ_for("/ok"))
    with connect(f"ws://127.0.0.1:{port}/ws/metrics") as ws:
        hello = json.loads(ws.recv(timeout=WAIT))
        assert hello["type"] == "hello" and hello["data"]["updateInterval"] == 100
        total = 0
        for _ in range(50):
            frame = json.loads(ws.recv(timeout=WAIT))
            total = frame["data"]["overview"]["total_requests"]
            if total == 5:
                break
        assert total == 5
        ws.send(json.dumps({"type": "ping", "data": "x"}))
        while (message := json.loads(ws.recv(timeout=WAIT)))["type"] != "pong":
            pass
        assert message["data"] == "x"
        ws.send("{broken")
        while (message := json.loads(ws.recv(timeout=WAIT)))["type"] != "error":
            pass
        assert message["data"]["code"] == "invalid_json"


def test_origins_the_page_was_served_to_are_allowed(
    streaming: tuple[AegisWSGIMiddleware, int],
) -> None:
    middleware, port = streaming
    url = f"ws://127.0.0.1:{port}/ws/metrics"
    page_origin = "http://app.example:8000"
    with pytest.raises(InvalidStatus) as refused:
        connect(url, origin=page_origin)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"]["code"] == "forbidden_origin"
    # The app serves its dashboard to that origin: from then on its page may connect.
    page, _ = serve(middleware, environ_for("/dashboard", HTTP_HOST="app.example:8000"))
    assert page.status == "200 OK"
    with connect(url, origin=page_origin) as ws:  # type: ignore[arg-type]
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "hello"
    with pytest.raises(InvalidStatus) as elsewhere:
        connect(url, origin="http://evil.example:8000")  # type: ignore[arg-type]
    assert elsewhere.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as other_path:
        connect(f"ws://127.0.0.1:{port}/other")
    assert other_path.value.response.status_code == 404


def test_the_origins_learned_from_dashboard_requests_are_bounded(
    streaming: tuple[AegisWSGIMiddleware, int],
) -> None:
    """Any client may send any Host: the origins learned from them stop at
    LEARNED_ORIGINS hosts, and one already learned is not learned again."""
    from aegis_mw.wsgi.realtime import LEARNED_ORIGINS

    middleware, port = streaming
    realtime = middleware._routes.realtime
    assert realtime is not None
    for n in range(LEARNED_ORIGINS + 5):
        serve(middleware, environ_for("/dashboard", HTTP_HOST=f"h{n}.example"))
    learned = realtime.origins
    assert len(learned) == 2 * LEARNED_ORIGINS
    serve(middleware, environ_for("/dashboard", HTTP_HOST="h0.example"))
    assert realtime.origins is learned  # known: not replaced
    url = f"ws://127.0.0.1:{port}/ws/metrics"
    with connect(url, origin="https://h0.example") as ws:  # type: ignore[arg-type]
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "hello"
    for refused_origin in (f"http://h{LEARNED_ORIGINS}.example", f"http://127.0.0.1:{port + 1}"):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=refused_origin)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403, refused_origin


def test_the_page_knows_where_the_stream_is(
    streaming: tuple[AegisWSGIMiddleware, int], make_aegis: Callable[..., Aegis]
) -> None:
    middleware, port = streaming
    page, body = serve(middleware, environ_for("/dashboard"))
    config = body.split(b'id="aegis-config">', 1)[1].split(b"</script>", 1)[0]
    assert json.loads(config)["wsPort"] == port
    # The page's policy lets it reach that port, on the host it was loaded from.
    policy = dict(page.headers)["content-security-policy"]
    assert f"connect-src 'self' ws://*:{port} wss://*:{port}" in policy
    # Without ws_port the page polls the API instead.
    plain = AegisWSGIMiddleware(app, aegis=make_aegis(metrics_registry="none"))
    _, body = serve(plain, environ_for("/dashboard"))
    config = body.split(b'id="aegis-config">', 1)[1].split(b"</script>", 1)[0]
    assert json.loads(config)["wsPath"] == ""


def test_a_token_rule_applies_before_the_handshake(make_aegis: Callable[..., Aegis]) -> None:
    port = free_port()
    aegis = make_aegis(metrics_registry="none", ws_port=port,
                       access={"dashboard": {"tokens": ["page-token-1234"]}})  # fmt: skip
    middleware = AegisWSGIMiddleware(app, aegis=aegis)
    serve(middleware, {**environ_for("/first"), "wsgi.input": io.BytesIO()})
    assert middleware._routes.realtime is not None and middleware._routes.realtime.ready.wait(WAIT)
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{port}/ws/metrics")
    assert refused.value.response.status_code == 401
    with connect(f"ws://127.0.0.1:{port}/ws/metrics?token=page-token-1234") as ws:
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "hello"
    middleware._routes.realtime.stop()
