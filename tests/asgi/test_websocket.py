"""WebSocket sessions through AegisMiddleware: recorded as sessions, never as HTTP latency."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import FakeClock, recorded, recorded_sessions
from tests.harness import Exchange, websocket_scope

pytestmark = pytest.mark.anyio

CONNECT = {"type": "websocket.connect"}
DISCONNECT = {"type": "websocket.disconnect", "code": 4001}


class Rejected(Exception):
    """An app's exception that carries a close code of its own."""

    code = 4000


def text(value: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": value}


async def test_a_session_is_recorded_with_its_messages(make_aegis: Callable[..., Aegis]) -> None:
    """Messages in and out, the client's close code, the route and the duration."""
    clock = FakeClock()
    aegis = make_aegis(clock=clock)
    active_during: list[int] = []

    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        active_during.append(aegis.realtime().websocket_connections_active)
        for _ in range(3):
            message = await websocket.receive_text()
            clock.advance(0.5)
            if message != "quiet":
                await websocket.send_text(message.upper())
        await websocket.receive()  # the disconnect

    app = Starlette(routes=[WebSocketRoute("/ws/chat/{room}", chat)])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    exchange = Exchange(
        [
            CONNECT,
            text("hi"),
            text("quiet"),
            text("yo"),
            {"type": "websocket.disconnect", "code": 1001},
        ]
    )
    await app(websocket_scope("/ws/chat/lobby"), exchange.receive, exchange.send)

    assert [m["type"] for m in exchange.sent] == [
        "websocket.accept",
        "websocket.send",
        "websocket.send",
    ]
    assert [m.get("text") for m in exchange.sent[1:]] == ["HI", "YO"]
    [session] = recorded_sessions(aegis)
    assert (session.route, session.path) == ("/ws/chat/{room}", "/ws/chat/lobby")
    assert (session.messages_in, session.messages_out, session.close_code) == (3, 2, 1001)
    assert session.accepted is True or session.accepted == 1
    assert session.duration_ms == pytest.approx(1500.0)
    assert active_during == [1]
    snapshot = aegis.realtime()
    assert (snapshot.websocket_connections_active, snapshot.websocket_sessions_total) == (0, 1)
    assert snapshot.total_requests == 0 and recorded(aegis) == []


async def test_server_side_close_code(make_aegis: Callable[..., Aegis]) -> None:
    """When the app closes first, its close code is the session's."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})

    exchange = Exchange([CONNECT])
    await AegisMiddleware(app, aegis=aegis)(websocket_scope(), exchange.receive, exchange.send)
    assert exchange.sent[-1] == {"type": "websocket.close", "code": 4000, "reason": "bye"}
    [session] = recorded_sessions(aegis)
    assert (session.close_code, session.accepted, session.messages_out) == (4000, True, 0)


async def test_refused_handshake(make_aegis: Callable[..., Aegis]) -> None:
    """A close before accept is a refused session, never counted as active."""
    aegis = make_aegis()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    exchange = Exchange([CONNECT])
    await AegisMiddleware(app, aegis=aegis)(websocket_scope(), exchange.receive, exchange.send)
    [session] = recorded_sessions(aegis)
    assert (session.accepted, session.close_code) == (False, 1008)
    assert aegis.realtime().websocket_connections_active == 0


async def test_an_app_error_in_a_session_is_recorded_and_reraised(
    make_aegis: Callable[..., Aegis],
) -> None:
    """The exception propagates unchanged; the session says 1011 and names it."""
    aegis = make_aegis()
    failure = RuntimeError("handler crashed")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        raise failure

    exchange = Exchange([CONNECT])
    with pytest.raises(RuntimeError) as caught:
        await AegisMiddleware(app, aegis=aegis)(websocket_scope(), exchange.receive, exchange.send)
    assert caught.value is failure
    [session] = recorded_sessions(aegis)
    assert (session.close_code, session.error) == (1011, "RuntimeError: handler crashed")
    assert aegis.realtime().websocket_connections_active == 0


async def test_excluded_websocket_paths_are_not_recorded(make_aegis: Callable[..., Aegis]) -> None:
    """exclude_paths applies to WebSocket paths too."""
    aegis = make_aegis(exclude_paths=["/ws/internal/*"])

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1000})

    exchange = Exchange([CONNECT])
    await AegisMiddleware(app, aegis=aegis)(
        websocket_scope("/ws/internal/x"), exchange.receive, exchange.send
    )
    assert exchange.sent == [{"type": "websocket.close", "code": 1000}]
    assert recorded_sessions(aegis) == []


async def test_a_client_gone_is_no_error_but_the_apps_own_exceptions_are(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Starlette's WebSocketDisconnect, escaping the endpoint after the server
    said the client left (a disconnect received, a send refused with
    ClientDisconnected), ends the session with its code and no error. Raised
    while the client is there, or another exception after it left (one with a
    code too), it is the app's error, as before."""
    aegis = make_aegis()

    async def after_close(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            await websocket.receive_text()

    async def send_refused(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("never arrives")

    async def own(websocket: WebSocket) -> None:
        await websocket.accept()
        raise WebSocketDisconnect(1000)

    async def bug_after_close(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive()
        raise ValueError("bug")

    async def coded_after_close(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive()
        raise Rejected("no")

    app = Starlette(
        routes=[
            WebSocketRoute("/after-close", after_close),
            WebSocketRoute("/send-refused", send_refused),
            WebSocketRoute("/own", own),
            WebSocketRoute("/bug-after-close", bug_after_close),
            WebSocketRoute("/coded-after-close", coded_after_close),
        ]
    )
    app.add_middleware(AegisMiddleware, aegis=aegis)

    class Gone(Exchange):
        async def send(self, message: dict[str, Any]) -> None:
            if message["type"] == "websocket.send":
                raise ClientDisconnected  # uvicorn's, once the client has left
            await super().send(message)

    cases: list[tuple[str, Exchange, type[Exception]]] = [
        ("/after-close", Exchange([CONNECT, text("hi"), DISCONNECT]), WebSocketDisconnect),
        ("/send-refused", Gone([CONNECT]), WebSocketDisconnect),
        ("/own", Exchange([CONNECT]), WebSocketDisconnect),
        ("/bug-after-close", Exchange([CONNECT, DISCONNECT]), ValueError),
        ("/coded-after-close", Exchange([CONNECT, DISCONNECT]), Rejected),
    ]
    for path, exchange, raised in cases:
        with pytest.raises(raised):  # re-raised unchanged
            await app(websocket_scope(path), exchange.receive, exchange.send)

    found = {s.path: (s.close_code, s.error, s.messages_out) for s in recorded_sessions(aegis)}
    assert found == {
        "/after-close": (4001, "", 0),
        "/send-refused": (1006, "", 0),
        "/own": (1011, "WebSocketDisconnect: 1000", 0),
        "/bug-after-close": (4001, "ValueError: bug", 0),
        "/coded-after-close": (4001, "Rejected: no", 0),
    }
    assert aegis.realtime().websocket_connections_active == 0
