"""``/ws/metrics`` for WSGI apps: a WSGI server speaks no WebSocket, so a
``websockets`` server in a daemon thread of the process serves the stream on
``ws_port`` (``ws_host``), with the protocol, limits, origin and access rules
of the ASGI side: the same handler runs behind a small ASGI shim, which
also lends it WebSocket pings, so that clients which never acknowledge
frames are held and timed by their pongs (``docs/realtime-protocol.md``).

The page the app serves lives on the app's port, the stream on another, so
an origin is not "the stream's own host": each origin this process served
the dashboard to (scheme and ``Host`` of that request; at most
``LEARNED_ORIGINS`` hosts) is allowed, besides ``ws_allowed_origins``. Not
any port of the stream's host: another service there (a page on another port)
would get the stream with the user's cookie, which browsers do not keep apart
by port. With several worker processes the first to bind the port serves it
(its own process's figures), and allows the pages it served itself: name the
page's origin in ``ws_allowed_origins`` so that pages any worker served connect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import TYPE_CHECKING, Any

from ..asgi.realtime_ws import handshake_refusal, serve
from ..types import Message

if TYPE_CHECKING:
    from ..asgi.mounted import MountedRoutes

logger = logging.getLogger("aegis_mw")

#: Dashboard origins a process learns at most (any client may send any Host).
LEARNED_ORIGINS = 16


def require_websockets(port: int, source: str) -> None:
    """``ws_port`` serves the stream with ``websockets``: without it the page
    would poll forever while the server starts as if all were well."""
    import importlib.util

    if importlib.util.find_spec("websockets") is None:
        from ..core.errors import ConfigError

        raise ConfigError(
            "ws_port",
            port,
            "the stream on ws_port needs the websockets package: "
            "pip install 'aegis_mw[flask]' (or 'aegis_mw[django]', or websockets itself)",
            source,
        )


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RealtimeServer:
    """The stream's server thread; started once per process."""

    def __init__(self, mounted: MountedRoutes, host: str, port: int) -> None:
        self.mounted = mounted
        self.host = host
        self.port = port
        #: Origins whose pages this process served the dashboard to; replaced
        #: whole (never changed in place), as the server thread reads it.
        self.origins: frozenset[str] = frozenset()
        self._learning = threading.Lock()
        self.ready = threading.Event()
        self.failed = ""
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Future[None] | None = None

    def start(self, pid: int) -> None:
        """Start in this process (again after a fork: threads do not survive one)."""
        if self._pid == pid:
            return
        self._pid = pid
        self.ready.clear()
        self._thread = threading.Thread(target=self._run, name="aegis-realtime", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Close the server and its connections (the thread is a daemon: a
        process that never calls this simply ends with it)."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(_finish, stop)
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except OSError as exc:  # the port is another worker's, or not ours to bind
            self.failed = str(exc)
            logger.info("aegis: /ws/metrics not served by this process (%s)", exc)
        finally:
            self.ready.set()

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve as websockets_serve

        async with websockets_serve(
            self._handle, self.host, self.port, process_request=self._check
        ) as server:
            sockets = list(server.sockets)
            if sockets:
                self.port = sockets[0].getsockname()[1]  # the real one, for port 0
            self._loop = asyncio.get_running_loop()
            self._stop = self._loop.create_future()
            self.ready.set()
            await self._stop  # serve until stop() or the end of the process

    def served_to(self, host: str) -> None:
        """The dashboard was served to ``host`` (its request's ``Host``): its
        page may open the stream, in either scheme (a TLS proxy may stand in
        front). Learned once, and only the first LEARNED_ORIGINS."""
        pair = {f"http://{host}", f"https://{host}"}
        if pair <= self.origins:
            return
        with self._learning:
            if len(self.origins) < 2 * LEARNED_ORIGINS:
                self.origins = self.origins | pair

    def _scope(self, connection: Any, request: Any) -> dict[str, Any]:
        path, _, query = request.path.partition("?")
        headers = [(name.lower().encode("latin-1"), value.encode("latin-1"))
                   for name, value in request.headers.raw_items()]  # fmt: skip
        peer = connection.remote_address
        return {
            "type": "websocket",
            "path": path,
            "query_string": query.encode("latin-1"),
            "headers": headers,
            "client": (peer[0], peer[1]) if peer else None,
        }

    def _check(self, connection: Any, request: Any) -> Any:
        """Refuse before the handshake, with an HTTP status, as under ASGI."""
        scope = self._scope(connection, request)
        if scope["path"] != self.mounted.aegis.settings.ws_path:
            return connection.respond(404, "not found\n")
        refusal = handshake_refusal(self.mounted, scope, tuple(self.origins))
        if refusal is None:
            return None
        status, code, message = refusal
        response = connection.respond(
            status, json.dumps({"error": {"code": code, "message": message}})
        )
        response.headers["Content-Type"] = "application/json"
        return response

    async def _handle(self, connection: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        scope = self._scope(connection, connection.request)
        connected = False

        async def receive() -> Message:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            try:
                data = await connection.recv()
            except ConnectionClosed:
                return {"type": "websocket.disconnect", "code": connection.close_code or 1006}
            key = "text" if isinstance(data, str) else "bytes"
            return {"type": "websocket.receive", key: data}

        async def send(message: Message) -> None:
            kind = message["type"]
            try:
                if kind == "websocket.send":
                    await connection.send(message["text"])
                elif kind == "websocket.close":
                    await connection.close(message.get("code", 1000), message.get("reason", ""))
            except ConnectionClosed as exc:  # as ASGI servers say it: the client went away
                raise ConnectionResetError(str(exc)) from exc

        async def ping() -> None:
            # Here the connection is ours: a WebSocket ping's pong says the
            # client read everything sent before it (see realtime.flow), so even
            # a client that never sends an ack is held and timed.
            try:
                await (await connection.ping())
            except ConnectionClosed as exc:
                raise ConnectionResetError(str(exc)) from exc

        await serve(
            self.mounted, scope, receive, send, extra_origins=tuple(self.origins), ping=ping
        )
