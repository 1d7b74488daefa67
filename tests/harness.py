"""Driving ASGI apps at the message level, without a server.

``Exchange`` plays the server for one HTTP request: it feeds request messages
to the app, records every message the app sends, and can report a client
disconnect. Tests use it to check exactly what the middleware passes through.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from typing import Any

import anyio

Message = dict[str, Any]


#: The monitoring data opened on purpose, for tests that read it and are not
#: about access control (which is private by default: tests/access/).
OPEN_MONITORING = {"api": "open", "dashboard": "open", "websocket": "open"}
#: The same for a server started in a child process (``AEGIS_ACCESS``).
OPEN_MONITORING_ENV = {"AEGIS_ACCESS": json.dumps(OPEN_MONITORING)}

#: The request path a differential test's pipelines report on /metrics
#: (``aegis_build_info``), the one difference between the paths by design.
SAME_BUILD = "compared"


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    headers: Sequence[tuple[bytes, bytes]] = (),
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    query_string: bytes = b"",
    root_path: str = "",
    **extra: Any,
) -> dict[str, Any]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": root_path,
        "query_string": query_string,
        "headers": [*headers]
        if any(name == b"host" for name, _ in headers)
        else [(b"host", b"testserver"), *headers],
        "client": client,
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    scope.update(extra)
    return scope


def websocket_scope(path: str = "/ws", **extra: Any) -> dict[str, Any]:
    scope = http_scope(path, **extra)
    scope["type"] = "websocket"
    scope["scheme"] = "ws"
    scope["subprotocols"] = []
    scope.pop("method")
    return scope


class Exchange:
    """One request's worth of server: queued inbound messages, recorded outbound ones."""

    def __init__(
        self, inbound: Sequence[Message] = ({"type": "http.request", "body": b""},)
    ) -> None:
        self.sent: list[Message] = []
        self._inbound: deque[Message] = deque(inbound)
        self._arrived: anyio.Event | None = None

    def push(self, message: Message) -> None:
        """Queue another message for the app's next ``receive()``."""
        self._inbound.append(message)
        if self._arrived is not None:
            self._arrived.set()

    async def receive(self) -> Message:
        while not self._inbound:
            self._arrived = anyio.Event()
            await self._arrived.wait()
        return self._inbound.popleft()

    async def send(self, message: Message) -> None:
        self.sent.append(dict(message))

    @property
    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def call(app: Any, scope: dict[str, Any], exchange: Exchange | None = None) -> Exchange:
    """Run one request through ``app``; returns the exchange with what was sent."""
    exchange = exchange or Exchange()
    await app(scope, exchange.receive, exchange.send)
    return exchange


_UNSET: Any = object()


def inbox_item(
    path: str,
    *,
    method: str = "GET",
    route: str = "/r",
    status: int = 200,
    start: float = 1000.0,
    ttfb: float | None = _UNSET,
    end: float | None = None,
    request_bytes: int = 0,
    response_bytes: int = 0,
    client: tuple[str, int] | None = None,
    error: str = "",
) -> list[Any]:
    """A finished request's inbox item, as the middleware queues it (layout in
    ``aegis_mw/core/items.py``), for tests that feed ``Recorder.offer`` directly.
    Times are monotonic seconds; by default the response starts 1 ms after
    ``start`` and ends 1 ms later."""
    return [
        method, route, path, status, start,
        start + 0.001 if ttfb is _UNSET else ttfb,
        start + 0.002 if end is None else end,
        request_bytes, response_bytes, client, None, error, False, None,
    ]  # fmt: skip
