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

Then every message is numbered, and a client that acknowledges them is held
to a window of unacknowledged ones and closed when its acknowledgement stops
(:mod:`..realtime.flow`): a blocking send would notice a slow reader only
once the server's and the kernel's buffers (megabytes) are full.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..access.check import Decision
from ..realtime import protocol
from ..realtime.flow import ACK_WINDOW, AckError, Flow
from ..realtime.hub import Hub
from ..realtime.limits import CLOSE_POLICY, CLOSE_TOO_BIG, MessageRate
from ..realtime.wakeup import Wakeup
from ..types import Receive, Scope, Send
from .mounted import origin_allowed, token_of

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
#: Seconds before a tick that count as the tick (see Connection._sender).
TIMER_SLACK = 0.001
#: Sends a WebSocket ping and returns once its pong is back (see :func:`serve`).
Ping = Callable[[], Awaitable[None]]


def hub_of(mounted: MountedRoutes) -> Hub:
    """The pipeline's hub, made on the first connection."""
    aegis = mounted.aegis
    if aegis.hub is None:
        aegis.hub = Hub(aegis)
    hub: Hub = aegis.hub
    return hub


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
    ping: Ping | None = None,
) -> None:
    """One connection to ``ws_path``, from handshake to close. ``extra_origins``
    are allowed besides the settings' (the pages a WSGI app served, for the
    stream's own server on another port). ``ping``, from a server that owns
    the WebSocket connection, sends a WebSocket ping and returns when its pong
    arrives (raising ``OSError`` once the connection is gone): its pongs then
    acknowledge for clients that do not acknowledge by themselves."""
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
        connection = Connection(mounted, hub, scope, receive, send, may_read_history, ping=ping)
        await connection.run()
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
    """One accepted client: its subscription, reader and sender, and the flow
    control that holds frames a client has not acknowledged (:mod:`..realtime.flow`)."""

    def __init__(
        self,
        mounted: MountedRoutes,
        hub: Hub,
        scope: Scope,
        receive: Receive,
        send: Send,
        may_read_history: bool = True,
        *,
        ping: Ping | None = None,
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
        # With pings, the transport acknowledges from the start.
        self.flow = Flow(ACK_WINDOW, self.stall_timeout, acking=ping is not None)
        self._ping = ping
        #: The seq of the last message the server took (a ping sent after it
        #: follows it on the wire).
        self.written = 0
        #: Set when the acknowledgement moves or messages begin to wait for one.
        self._flow_moved = Wakeup()
        #: Set after each message taken, for the pinger.
        self._wrote = Wakeup()
        self._lock = anyio.Lock()
        self.closed = False

    async def send_text(self, text: str) -> bool:
        """Send one message, numbered; False when the connection is gone or has
        stalled (then it is closed). Every send, a frame or an answer, may wait
        at most ``ws_stall_timeout``: a client that stops reading is let go."""
        with anyio.move_on_after(self.stall_timeout):
            # One message at a time: the reader's answers and the sender's frames.
            async with self._lock:
                if self.closed:
                    return False
                flow = self.flow
                seq = flow.assign(self.hub.monotonic())
                if flow.acking and flow.outstanding() == 1:
                    self._flow_moved.set()  # a stall deadline begins: the sender re-plans
                try:
                    await self._send({"type": "websocket.send",
                                      "text": protocol.numbered(text, seq)})  # fmt: skip
                except OSError:  # the client went away mid-send (ClientDisconnected)
                    self.closed = True
                    return False
                self.written = seq
                if self._ping is not None:
                    self._wrote.set()
                return True
        await self._give_up()
        return False

    async def _give_up(self) -> None:
        """It stopped reading. Say why if the close frame still fits; either
        way the server drops the connection once the handler returns."""
        self.closed = True
        with anyio.move_on_after(CLOSE_GRACE_SECONDS):
            async with self._lock:
                await self._close_now(CLOSE_POLICY, "client stopped reading")

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
            hello = protocol.hello(
                self.client_id, _version(), round(hub.interval * 1000), self.subscription,
                ack_window=self.flow.window, stall_timeout_ms=round(self.stall_timeout * 1000),
            )  # fmt: skip
            async with anyio.create_task_group() as group:
                # Whichever ends first (a disconnect, a close, a stall) ends both.
                async def until_done(part: Callable[[], Awaitable[None]]) -> None:
                    await part()
                    group.cancel_scope.cancel()

                if self._ping is not None:
                    # Not until_done: it stops early once the client acknowledges.
                    group.start_soon(self._pinger, self._ping)
                if await self.send_text(hello):
                    group.start_soon(until_done, self._sender)
                    group.start_soon(until_done, self._reader)
                else:
                    group.cancel_scope.cancel()
        finally:
            hub.subscriptions.pop(self.client_id, None)

    async def _sender(self) -> None:
        """A frame at every tick while the window is open; while it is closed,
        none, and the newest as soon as an acknowledgement opens it. Closes a
        client whose acknowledgement has not moved for ``ws_stall_timeout``."""
        hub, flow = self.hub, self.flow
        due = hub.next_tick()
        while not self.closed:
            now = hub.monotonic()
            if flow.stalled(now):
                await self._give_up()
                return
            window_open = flow.window_open()
            wait = hub.seconds_until(due) if window_open else math.inf
            # The event loop may fire a timer up to its clock's resolution
            # early: that close to the tick counts as the tick.
            if wait > TIMER_SLACK:
                deadline = flow.deadline()
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if window_open and self.stall_timeout >= hub.interval:
                    # Nothing to wake for before the tick: an acknowledgement
                    # only moves the deadline later, and one that appears
                    # meanwhile is at least ws_stall_timeout away. A plain sleep:
                    # a timeout by cancellation costs far more, at every tick.
                    await anyio.sleep(wait)
                else:  # held, or deadlines nearer than a tick: woken by acknowledgements
                    await self._flow_moved.wait(wait)
                continue
            # Due and allowed: the current tick's frame (after a hold, a later
            # tick's than the one that was due).
            tick = max(due, hub.current_tick())
            names = protocol.frame_sections(self.subscription)
            if names and not await self.send_text(await hub.frame(tick, names)):
                return
            due = max(tick, hub.current_tick()) + 1

    async def _pinger(self, ping: Ping) -> None:
        """Acknowledge for the client what its WebSocket layer has read: a pong
        comes back only once everything sent before its ping was read (one
        ping at a time, after the latest message). Ends when the client
        acknowledges by itself, or the connection is gone."""
        flow = self.flow
        while not self.closed and not flow.client_acks:
            if self.written <= flow.acked:
                await self._wrote.wait()
                continue
            seq = self.written
            try:
                await ping()
            except OSError:
                return
            if flow.ack(seq, self.hub.monotonic(), by_client=False):
                self._flow_moved.set()

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
            parsed: protocol.ClientMessage | protocol.ProtocolError
            try:
                parsed = protocol.parse(data)
                if isinstance(parsed, protocol.Ack) and self._acknowledge(parsed.seq):
                    # Free of the rate limit: a client cannot send more of these
                    # than it was sent messages.
                    continue
            except protocol.ProtocolError as exc:
                parsed = exc
            if not self.rate.allow(time.monotonic()):
                await self.close(CLOSE_POLICY, "too many messages")
                return
            if isinstance(parsed, protocol.ProtocolError):
                await self.send_text(protocol.error(parsed.code, parsed.message))
            else:
                await self._answer(parsed)

    def _acknowledge(self, seq: int) -> bool:
        """Count a client's ack; True when it moved (or was its first)."""
        try:
            moved = self.flow.ack(seq, self.hub.monotonic())
        except AckError as exc:
            raise protocol.ProtocolError("invalid_field", str(exc)) from None
        if moved:
            self._flow_moved.set()
        return moved

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
        elif isinstance(message, protocol.Get):
            await self.send_text(await self._get(message))
        # An ack that did not move: nothing to answer.

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
