"""An app with a WebSocket route of its own, recorded as sessions; the sink and
other options come from AEGIS_* variables."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from aegis_mw import AegisMiddleware


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


app = Starlette(routes=[WebSocketRoute("/echo", echo)], middleware=[Middleware(AegisMiddleware)])
