"""``AegisMiddleware``: pure ASGI, one record per request, nothing else changed.

The HTTP path is written inline in ``__call__`` on purpose: every extra
coroutine, attribute lookup or allocation here is paid by every request of
every user. Per-request state lives in the closure, never on ``self``. The
``send`` wrapper is a plain function returning the server's awaitable, so it
adds no coroutine frame; the clock stops when the final body message is
handed to the server, so streamed bodies are timed to completion and
background tasks (which run after it) are not.
"""

from __future__ import annotations

from typing import Any

from ..aegis import Aegis
from ..core.items import PendingSession
from ..core.labels import describe_error
from ..core.record import CLIENT_CLOSED_STATUS, UNMATCHED_ROUTE
from ..types import ASGIApp, Message, Receive, RouteReader, Scope, Send
from .routing import ScopeRouteReader

NO_RESPONSE = "RuntimeError: app returned without sending a response"
INCOMPLETE_RESPONSE = "RuntimeError: app returned before the response body was complete"
_DISCONNECT_ERRORS = frozenset({"ClientDisconnect", "ClientDisconnected"})


def _is_disconnect(exc: BaseException) -> bool:
    """The client went away: a broken connection, or a server/framework saying so."""
    return isinstance(exc, ConnectionError) or type(exc).__name__ in _DISCONNECT_ERRORS


class AegisMiddleware:
    """Records every HTTP request and WebSocket session of an ASGI app.

    Use it either way::

        app.add_middleware(AegisMiddleware, sink="sqlite:///aegis.db")
        app = AegisMiddleware(app, sink="memory://")

    Pass ``aegis=Aegis(...)`` to keep a handle on the pipeline (for
    ``force_flush``/``stats``), or options to build one. Lifespan events pass
    through; on ``lifespan.shutdown`` the buffers are flushed off the event
    loop before the server is told shutdown is complete.
    """

    def __init__(
        self,
        app: ASGIApp,
        /,
        *,
        aegis: Aegis | None = None,
        route_reader: RouteReader | None = None,
        **options: Any,
    ) -> None:
        if aegis is not None and options:
            raise TypeError("pass either aegis=Aegis(...) or options, not both")
        self.app = app
        self.aegis = aegis if aegis is not None else Aegis(**options)
        if self.aegis.asgi_lifespan is None:
            self.aegis.asgi_lifespan = False
        reader = route_reader if route_reader is not None else ScopeRouteReader()
        self.route_reader = reader
        # The default reader's cache is consulted inline (see __call__); a
        # bound method is cheaper to call than an instance's __call__.
        self._templates = reader.templates if isinstance(reader, ScopeRouteReader) else None
        self._read_route = reader.read if isinstance(reader, ScopeRouteReader) else reader
        self._excluded = self.aegis.excluded_paths
        self._recorder = self.aegis.recorder
        self._inbox = self.aegis.recorder.inbox
        self._aggregates = self.aegis.aggregates
        self._monotonic = self.aegis.clock.monotonic
        self._addresses = self.aegis.client_addresses
        self._check_forwarded = self._addresses.enabled
        self._error_limit = self.aegis.settings.max_error_length

    def _forwarded(self, scope: Scope, client: Any) -> str | None:
        """The forwarded-for header, only when the peer is a trusted proxy."""
        addresses = self._addresses
        if client and addresses.peer_is_trusted(client[0]):
            return addresses.forwarded_value(scope.get("headers") or ())
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await self._websocket(scope, receive, send)
            elif scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        path = scope["path"]
        excluded = self._excluded
        if path in excluded.literal or (excluded.match is not None and excluded.match(path)):
            await self.app(scope, receive, send)
            return

        monotonic = self._monotonic
        start = monotonic()
        status = 0
        ttfb: float | None = None
        end: float | None = None
        response_bytes = 0
        request_bytes = 0
        disconnected = False

        def send_wrapper(message: Message) -> Any:
            nonlocal status, ttfb, end, response_bytes
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    response_bytes += len(body)
                if not message.get("more_body"):
                    end = monotonic()
            elif kind == "http.response.start":
                status = message["status"]
                ttfb = monotonic()
            elif kind == "http.response.pathsend":  # the whole file in one message
                end = monotonic()
            elif kind == "http.response.zerocopysend":
                response_bytes += message.get("count") or 0
                if not message.get("more_body"):
                    end = monotonic()
            return send(message)

        async def receive_wrapper() -> Message:
            nonlocal request_bytes, disconnected
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                body = message.get("body")
                if body:
                    request_bytes += len(body)
            elif kind == "http.disconnect":
                disconnected = True
            return message

        aggregates = self._aggregates
        aggregates.in_flight += 1
        failure: BaseException | None = None
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BaseException as exc:  # recorded, then re-raised unchanged
            failure = exc
            raise
        finally:
            aggregates.in_flight -= 1
            error = ""
            if end is None or failure is not None:
                end, status, error = self._unhappy_end(end, status, failure, disconnected)
            templates = self._templates
            route: Any
            if templates is None:  # a reader of the user's
                route = self._read_route(scope)
            elif (route := scope.get("route")) is None:
                route = UNMATCHED_ROUTE
            elif (route := templates.get(id(route))) is None:
                route = self._read_route(scope)
            client = scope.get("client")
            # Recorder.offer, inlined: this runs for every request.
            inbox = self._inbox
            recorder = self._recorder
            queued = len(inbox)
            if queued < recorder.limit:
                inbox.append(
                    (scope["method"], route, path, status, start, ttfb, end, request_bytes,
                     response_bytes, client,
                     self._forwarded(scope, client) if self._check_forwarded else None, error)
                )  # fmt: skip
                if queued >= recorder.wake_at:
                    recorder.wake_flusher()
            else:
                recorder.refuse()

    def _unhappy_end(
        self, end: float | None, status: int, failure: BaseException | None, disconnected: bool
    ) -> tuple[float, int, str]:
        """End time, status and error for a request that raised or never finished."""
        error = ""
        if failure is not None and isinstance(failure, Exception) and not _is_disconnect(failure):
            error = describe_error(failure, self._error_limit)
        if end is not None:  # the response went out whole; the app raised afterwards
            return end, status, error
        end = self._monotonic()
        # The client left, or the task was cancelled: nobody got an answer.
        cancelled = failure is not None and not isinstance(failure, Exception)
        if disconnected or cancelled or (failure is not None and _is_disconnect(failure)):
            return end, CLIENT_CLOSED_STATUS, error
        if status == 0:
            return end, 500, error or NO_RESPONSE
        return end, status, error or INCOMPLETE_RESPONSE

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if self._excluded.excluded(path):
            await self.app(scope, receive, send)
            return
        monotonic = self._monotonic
        aggregates = self._aggregates
        start = monotonic()
        messages_in = 0
        messages_out = 0
        close_code: int | None = None
        accepted = False

        async def receive_wrapper() -> Message:
            nonlocal messages_in, close_code
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                messages_in += 1
            elif kind == "websocket.disconnect" and close_code is None:
                close_code = message.get("code", 1005)
            return message

        def send_wrapper(message: Message) -> Any:
            nonlocal messages_out, close_code, accepted
            kind = message["type"]
            if kind == "websocket.send":
                messages_out += 1
            elif kind == "websocket.accept" and not accepted:
                accepted = True
                aggregates.websockets_active += 1
            elif kind == "websocket.close" and close_code is None:
                close_code = message.get("code", 1000)
            elif kind == "websocket.http.response.start" and close_code is None:
                close_code = 1008  # handshake refused with an HTTP response
            return send(message)

        error = ""
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception as exc:
            if not _is_disconnect(exc):
                error = describe_error(exc, self._error_limit)
            if close_code is None:
                close_code = 1011 if error else 1006
            raise
        finally:
            if accepted:
                aggregates.websockets_active -= 1
            client = scope.get("client")
            self._recorder.offer(
                PendingSession(
                    start, self._read_route(scope), path, monotonic(), messages_in, messages_out,
                    close_code, accepted, client,
                    self._forwarded(scope, client) if self._check_forwarded else None, error,
                )
            )  # fmt: skip

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.aegis.asgi_lifespan = True
                self.aegis.start()
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self._shutdown_off_loop()
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)

    async def _shutdown_off_loop(self) -> None:
        # anyio runs the blocking flush in a worker thread on asyncio and trio alike.
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.aegis.shutdown)
