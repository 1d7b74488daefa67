"""WebSocket connections, recorded as sessions (never as HTTP latency)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.items import PendingSession
from ..core.labels import describe_error
from ..core.outcome import is_disconnect, session_disconnect
from ..core.trace_context import asgi_trace
from ..types import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from .middleware import AegisMiddleware


async def record_session(
    middleware: AegisMiddleware, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run one WebSocket connection through the app, counting what passes."""
    app = middleware.app
    path = scope["path"]
    if middleware.aegis.excluded_paths.excluded(path):
        await app(scope, receive, send)
        return
    clock = middleware.aegis.clock.monotonic
    aggregates = middleware.aegis.aggregates
    start = clock()
    # At the handshake, where an instrumentation outside made its span current.
    source = middleware.trace_source
    trace = None if source is None else asgi_trace(source, scope)
    messages_in = 0
    messages_out = 0
    close_code: int | None = None
    accepted = False
    # The server said the client went away: an exception after that may be a
    # framework's way of saying so too (core/outcome.py).
    client_gone = False

    async def receive_wrapper() -> Message:
        nonlocal messages_in, close_code, client_gone
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            messages_in += 1
        elif kind == "websocket.disconnect":
            client_gone = True
            if close_code is None:
                close_code = message.get("code", 1005)
        return message

    async def send_wrapper(message: Message) -> None:
        nonlocal messages_out, close_code, accepted, client_gone
        kind = message["type"]
        if kind == "websocket.accept" and not accepted:
            accepted = True
            aggregates.websockets_active += 1
        elif kind == "websocket.close" and close_code is None:
            close_code = message.get("code", 1000)
        elif kind == "websocket.http.response.start" and close_code is None:
            close_code = 1008  # handshake refused with an HTTP response
        try:
            await send(message)
        except Exception as exc:
            if is_disconnect(exc):
                client_gone = True
            raise
        if kind == "websocket.send":
            messages_out += 1  # once sent: one the server refused never left

    error = ""
    try:
        await app(scope, receive_wrapper, send_wrapper)
    except Exception as exc:
        code = session_disconnect(exc, client_gone)
        if code is None:
            error = describe_error(exc, middleware.aegis.settings.max_error_length)
        if close_code is None:
            close_code = 1011 if code is None else code
        raise
    finally:
        if accepted:
            aggregates.websockets_active -= 1
        try:
            session = PendingSession(
                start, middleware.route_of(scope), path, clock(), messages_in, messages_out,
                close_code, accepted, scope.get("client"),
                middleware.forwarded(scope) if middleware.aegis.client_addresses.enabled else None,
                error, trace,
            )  # fmt: skip
            middleware.aegis.recorder.offer(session)
        except Exception:  # never hide the app's exception behind one of ours
            middleware.aegis.recorder.dropped["internal_error"] += 1
