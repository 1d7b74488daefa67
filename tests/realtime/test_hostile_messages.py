"""Hostile client messages on real servers: uvicorn with each of its WebSocket
implementations and the WSGI apps' stream server. Each gets its answer, the
connection stays open, and the server logs no error."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from aegis_mw import Aegis
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.harness import OPEN_MONITORING_ENV
from tests.realtime.hostile import HOSTILE
from tests.servers import child_environment, free_port, uvicorn_server
from tests.wsgi.test_middleware import environ_for, serve

pytestmark = pytest.mark.slow

APP = "tests.realtime.ws_app:app"
TIMEOUT = 10.0
#: uvicorn's WebSocket implementations (``--ws``).
IMPLEMENTATIONS = ("websockets", "websockets-sansio", "wsproto")


def answer_to(ws: ClientConnection, text: str | bytes) -> dict[str, Any]:
    """Send ``text`` (bytes: in a binary frame); the next message that is not a frame."""
    ws.send(text)
    for _ in range(100):
        message = json.loads(ws.recv(timeout=TIMEOUT))
        assert isinstance(message, dict) and isinstance(message.pop("seq"), int)
        if message["type"] != "metrics":
            return message
    raise AssertionError(f"no answer to {text[:60]}")


def each_gets_its_answer(url: str) -> None:
    with connect(url, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "hello"
        for text, code in HOSTILE:
            answer = answer_to(ws, text)
            if code is None:
                assert answer == {"type": "pong", "data": json.loads(text)["data"]}
            else:
                assert answer["type"] == "error", text[:60]
                assert answer["data"]["code"] == code, text[:60]
        for binary in (b'{"type": "ping", "data": NaN}', b"\xff\xfe\x00", b"\xed\xa0\x80"):
            answer = answer_to(ws, binary)
            assert answer["type"] == "error" and answer["data"]["code"] == "invalid_json"
        assert answer_to(ws, '{"type": "ping", "data": 1}') == {"type": "pong", "data": 1}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_under_uvicorn(tmp_path: Path, implementation: str) -> None:
    env = child_environment(
        AEGIS_UPDATE_INTERVAL="100", AEGIS_WS_MESSAGE_RATE="1000", **OPEN_MONITORING_ENV
    )
    with uvicorn_server(APP, tmp_path, "--ws", implementation, env=env) as server:
        each_gets_its_answer(f"ws://127.0.0.1:{server.port}/ws/metrics")
        log = server.log.text
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@contextmanager
def stream_server(make_aegis: Callable[..., Aegis], **options: Any) -> Iterator[str]:
    """The stream server of a WSGI app (started by its first request); its URL."""
    port = free_port()
    aegis = make_aegis(metrics_registry="none", ws_port=port, **options)
    middleware = AegisWSGIMiddleware(ok_app, aegis=aegis)
    serve(middleware, environ_for("/first"))
    realtime = middleware._routes.realtime
    assert realtime is not None and realtime.ready.wait(TIMEOUT) and not realtime.failed
    try:
        yield f"ws://127.0.0.1:{port}/ws/metrics"
    finally:
        realtime.stop()


def test_under_the_wsgi_stream_server(
    make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with stream_server(make_aegis, update_interval=100, ws_message_rate=1000) as url:
        each_gets_its_answer(url)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
