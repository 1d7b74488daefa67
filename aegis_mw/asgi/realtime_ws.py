"""``/ws/metrics`` over ASGI: the handshake checks, then one reader and one
sender per connection (``docs/realtime-protocol.md``).

Handshake: the ``Origin`` must be the app's own host or an allowed origin
(else 403: a page on another site must not read the metrics with a user's
cookies), the ``websocket`` access group's rule (or, without one, the
``dashboard`` group's) must pass, with its token taken from the
``Authorization`` header, an ``aegis_token`` cookie or a ``token`` query
parameter (a browser cannot set headers on a WebSocket), and the connection
limits must have room (else it is accepted and closed at once, so the
client sees the close code and reason).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..access.check import Decision
from ..realtime import protocol
from ..realtime.hub import Hub
from ..realtime.limits import CLOSE_POLICY, CLOSE_TOO_BIG, MessageRate
from ..types import Receive, Scope, Send
from .mounted import header, token_of

if TYPE_CHECKING:
    from .mounted import MountedRoutes

#: ``get`` sections -> JSON API endpoints answering them.
GET_ENDPOINTS = {
    "overview": "overview",
    "requestRate": "request-rate",
    "latencyPercentiles": "latency",
    "statusDistribution": "status-distribution",
    "topEndpoints": "top-endpoints",
}
#: How long a stalled client's close frame may wait for room.
CLOSE_GRACE_SECONDS = 1.0


def hub_of(mounted: MountedRoutes) -> Hub:
    """The pipeline's hub, made on the first connection."""
    aegis = mounted.aegis
    if aegis.hub is None:
        aegis.hub = Hub(aegis)
    hub: Hub = aegis.hub
    return hub


def origin_allowed(scope: Scope, allowed: tuple[str, ...]) -> bool:
    """No Origin (not a browser), the app's own host, or an allowed origin."""
    origin = header(scope, b"origin").strip().lower()
    if not origin:
        return True
    if "*" in allowed or origin in allowed:
        return True
    host = header(scope, b"host").strip().lower()
    # The page's own host: same host and port, whatever the scheme (a TLS
    # terminating proxy turns https into http before the app sees it).
    return bool(host) and origin.partition("://")[2] == host


def handshake_refusal(
    mounted: MountedRoutes, scope: Scope, extra_origins: tuple[str, ...] = ()
) -> tuple[int, str, str] | None:
    """Why this handshake is refused (HTTP status, code, message), or None."""
    allowed = mounted.aegis.settings.ws_allowed_origins + extra_origins
    if not origin_allowed(scope, allowed):
        return 403, "forbidden_origin", "this origin may not open the stream"
    decision = _authorize(mounted, scope)
    if not decision.allowed:
        return decision.status, decision.code, decision.message
    return None


async def serve(
    mounted: MountedRoutes,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    extra_origins: tuple[str, ...] = (),
) -> None:
    """One connection to ``ws_path``, from handshake to close. ``extra_origins``
    are allowed besides the settings' (the pages a WSGI app served, for the
    stream's own server on another port)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    refusal = handshake_refusal(mounted, scope, extra_origins)
    if refusal is not None:
        await _refuse(scope, send, *refusal)
        return
    hub = hub_of(mounted)
    address = mounted.client_ip(scope) or "unknown"
    refused = hub.limits.admit(address)
    if refused is not None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": refused[0], "reason": refused[1]})
        return
    try:
        # History (``get``) is the JSON API's: its rule applies too.
        may_read_history = mounted.authorize("api", scope, token=token_of(scope)).allowed
        await Connection(mounted, hub, scope, receive, send, may_read_history).run()
    finally:
        hub.limits.release(address)


def _authorize(mounted: MountedRoutes, scope: Scope) -> Decision:
    """The first of the ``websocket``, ``dashboard`` and ``api`` groups that
    has a rule decides: the stream carries the API's realtime figures, so it
    is never more open than they are unless a rule of its own says so."""
    for group in ("websocket", "dashboard", "api"):
        if group in mounted.rules:
            return mounted.authorize(group, scope, token=token_of(scope))
    return mounted.authorize("websocket", scope)


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """Refuse the handshake with an HTTP status where the server can send one
    (the ASGI ``websocket.http.response`` extension), else with 403."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": CLOSE_POLICY})


class Connection:
    """One accepted client: its subscription, reader and sender."""

    def __init__(
        self,
        mounted: MountedRoutes,
        hub: Hub,
        scope: Scope,
        receive: Receive,
        send: Send,
        may_read_history: bool = True,
    ) -> None:
        settings = mounted.aegis.settings
        self.may_read_history = may_read_history
        self.mounted = mounted
        self.hub = hub
        self.receive = receive
        self._send = send
        self.client_id = hub.new_client_id()
        self.subscription: protocol.Subscription = dict(protocol.DEFAULT_SUBSCRIPTION)
        self.max_bytes = settings.ws_max_message_bytes
        rate = settings.ws_message_rate
        self.rate = MessageRate(rate, max(1.0, 2 * rate))
        self.stall_timeout = settings.ws_stall_timeout
        self._lock = anyio.Lock()
        self.closed = False

    async def send_text(self, text: str) -> bool:
        """Send one message; False when the connection is gone or has stalled
        (then it is closed). Every send, a frame or an answer, may wait at
        most ``ws_stall_timeout``: a client that stops reading is let go."""
        with anyio.move_on_after(self.stall_timeout):
            # One message at a time: the reader's answers and the sender's frames.
            async with self._lock:
                if self.closed:
                    return False
                try:
                    await self._send({"type": "websocket.send", "text": text})
                except OSError:  # the client went away mid-send (ClientDisconnected)
                    self.closed = True
                    return False
                return True
        # It stopped reading. Say why if the close frame still fits; either
        # way the server drops the connection once the handler returns.
        self.closed = True
        with anyio.move_on_after(CLOSE_GRACE_SECONDS):
            await self._close_now(CLOSE_POLICY, "client stopped reading")
        return False

    async def close(self, code: int, reason: str) -> None:
        async with self._lock:
            if not self.closed:
                self.closed = True
                await self._close_now(code, reason)

    async def _close_now(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except OSError:
            pass  # already gone

    async def run(self) -> None:
        await self._send({"type": "websocket.accept"})
        hub = self.hub
        hub.subscriptions[self.client_id] = self.subscription
        try:
            await self.send_text(
                protocol.hello(
                    self.client_id, _version(), round(hub.interval * 1000), self.subscription
                )
            )
            async with anyio.create_task_group() as group:
                # Whichever ends first (a disconnect, a close, a stall) ends both.
                async def until_done(part: Callable[[], Awaitable[None]]) -> None:
                    await part()
                    group.cancel_scope.cancel()

                group.start_soon(until_done, self._sender)
                group.start_soon(until_done, self._reader)
        finally:
            hub.subscriptions.pop(self.client_id, None)

    async def _sender(self) -> None:
        hub = self.hub
        while not self.closed:
            tick = hub.next_tick()
            await anyio.sleep(hub.seconds_until(tick))
            names = protocol.frame_sections(self.subscription)
            if not names:
                continue
            if not await self.send_text(await hub.frame(tick, names)):
                return

    async def _reader(self) -> None:
        while not self.closed:
            message = await self.receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                self.closed = True
                return
            if kind != "websocket.receive":
                continue
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if _too_big(data, self.max_bytes):
                await self.close(CLOSE_TOO_BIG, f"messages are at most {self.max_bytes} bytes")
                return
            if not self.rate.allow(time.monotonic()):
                await self.close(CLOSE_POLICY, "too many messages")
                return
            try:
                parsed = protocol.parse(data)
            except protocol.ProtocolError as exc:
                await self.send_text(protocol.error(exc.code, exc.message))
                continue
            await self._answer(parsed)

    async def _answer(self, message: protocol.ClientMessage) -> None:
        if isinstance(message, protocol.Subscribe | protocol.Unsubscribe):
            # Updated in place: the hub reads the same dict for its union.
            self.subscription.update(message.apply(self.subscription))
            await self.send_text(protocol.subscribed(self.subscription))
            names = protocol.frame_sections(self.subscription)
            if names:
                await self.send_text(await self.hub.fresh_frame(names))
        elif isinstance(message, protocol.Ping):
            await self.send_text(protocol.pong(message.data))
        else:
            await self.send_text(await self._get(message))

    async def _get(self, message: protocol.Get) -> str:
        api = self.mounted.api
        if api is None:
            return protocol.error("history_unavailable", "the JSON API is switched off")
        if not self.may_read_history:
            return protocol.error("forbidden", "the api access rule does not admit this client")
        endpoint = GET_ENDPOINTS[message.section]
        query = f"range={message.range}".encode()
        response = await self.mounted.read_history(endpoint, query)
        payload: Any = json.loads(response.body)
        if response.status != 200:
            error = payload.get("error") or {}
            return protocol.error(str(error.get("code", "error")), str(error.get("message", "")))
        return protocol.result(message.section, message.range, payload["data"])


def _too_big(data: str | bytes, limit: int) -> bool:
    """More than ``limit`` bytes on the wire (text counts as UTF-8)."""
    if isinstance(data, bytes) or len(data) > limit:  # a character is at least a byte
        return len(data) > limit
    return len(data.encode("utf-8")) > limit


def _version() -> str:
    from .. import __version__

    return __version__
