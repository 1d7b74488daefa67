"""WebSocket connections, recorded as sessions (never as HTTP latency)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.items import PendingSession
from ..core.labels import describe_error
from ..core.outcome import is_disconnect
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
        await app(scope, receive_wrapper, send_wrapper)
    except Exception as exc:
        if not is_disconnect(exc):
            error = describe_error(exc, middleware.aegis.settings.max_error_length)
        if close_code is None:
            close_code = 1011 if error else 1006
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
