"""Apps for tests/realtime/test_edges.py, served by uvicorn with ``--factory``.

Each is wrapped in :func:`counted`: ``GET /sessions?count=N`` (answered
outside the middleware) waits until N WebSocket connections have been through
the middleware, then flushes and answers the sessions it recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi import WebSocket as FastAPIWebSocket
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from aegis_mw import Aegis, AegisMiddleware
from aegis_mw.testing import recorded_sessions
from tests.harness import OPEN_MONITORING

ASGIApp = Any
WAIT = 10.0


def _aegis() -> Aegis:
    return Aegis(sink="memory://", access=OPEN_MONITORING, update_interval=100)


def counted(app: ASGIApp, aegis: Aegis) -> ASGIApp:
    ended = 0
    waiters: list[asyncio.Event] = []

    async def sessions(scope: Any, receive: Any, send: Any) -> None:
        want = int(parse_qs(scope["query_string"].decode())["count"][0])
        with anyio.fail_after(WAIT):
            while ended < want:
                event = asyncio.Event()
                waiters.append(event)
                await event.wait()
        found = await anyio.to_thread.run_sync(recorded_sessions, aegis)
        await JSONResponse([session._asdict() for session in found])(scope, receive, send)

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        nonlocal ended
        if scope["type"] == "http" and scope["path"] == "/sessions":
            await sessions(scope, receive, send)
            return
        if scope["type"] != "websocket":
            await app(scope, receive, send)
            return
        try:
            await app(scope, receive, send)
        finally:  # the middleware has offered its record by now
            ended += 1
            for event in waiters:
                event.set()
            waiters.clear()

    return outer


def gone_app() -> ASGIApp:
    """Starlette endpoints that let WebSocketDisconnect escape, as many do."""
    aegis = _aegis()
    go = asyncio.Event()

    async def late_send(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("ready")
        await go.wait()  # the client has closed by then
        await websocket.send_text("late")  # raises WebSocketDisconnect(1006)

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:  # ends with WebSocketDisconnect when the client closes
            await websocket.send_text(await websocket.receive_text())

    async def own_disconnect(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        raise WebSocketDisconnect(1000)  # the app's own, the client still there

    async def release(request: Request) -> PlainTextResponse:
        go.set()
        return PlainTextResponse("released")

    app = Starlette(
        routes=[
            WebSocketRoute("/late-send", late_send),
            WebSocketRoute("/echo", echo),
            WebSocketRoute("/own-disconnect", own_disconnect),
            Route("/release", release, methods=["POST"]),
        ],
        middleware=[Middleware(AegisMiddleware, aegis=aegis)],
    )
    return counted(app, aegis)


def spa_app() -> ASGIApp:
    """A FastAPI app whose catch-all GET serves a single-page app."""
    aegis = _aegis()
    app = FastAPI()

    @app.get("/{full_path:path}")
    async def spa(full_path: str) -> dict[str, str]:
        return {"spa": full_path}

    app.add_middleware(AegisMiddleware, aegis=aegis)
    return counted(app, aegis)


def own_stream_app() -> ASGIApp:
    """A FastAPI app with its own WebSocket route on the stream's default path."""
    aegis = _aegis()
    app = FastAPI()

    @app.websocket("/ws/metrics")
    async def own(websocket: FastAPIWebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("the app's own")
        await websocket.receive_text()
        await websocket.close(4000)

    app.add_middleware(AegisMiddleware, aegis=aegis)
    return counted(app, aegis)


def huge_metrics_app() -> ASGIApp:
    """Custom metrics whose finite values overflow when added up."""
    aegis = _aegis()
    parts = aegis.gauge("huge_parts", "Finite, and huge.", labels=("part",))
    parts.labels("a").set(1e308)
    parts.labels("b").set(1e308)
    aegis.counter("orders", "Orders placed.").inc(3)
    app = Starlette(middleware=[Middleware(AegisMiddleware, aegis=aegis)])
    return counted(app, aegis)
