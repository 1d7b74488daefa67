"""The ``send`` and ``receive`` the app is given: they note what passes and
change nothing.

``observe_send`` is the pure-Python path's send wrapper; the compiled path
notes the usual messages itself and hands it every other call or message, so
both behave the same there too. ``observe_receive`` serves both paths:
``receive()`` must stay a real coroutine (frameworks check), and it only runs
when the app reads the body or waits for a disconnect. Indexes are those of ``core/items.py``,
written as literals: a constant is cheaper than a global on this path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.trace_context import TraceSource, response_trace
from ..types import Message, Receive, Send


def observe_send(
    item: list[Any], clock: Callable[[], float], send: Send, source: TraceSource | None = None
) -> Callable[..., Any]:
    """A ``send`` for the app: a plain function returning the server's own
    awaitable, so it adds no coroutine frame. The clock stops when the final
    body message is handed to the server: streamed bodies are timed to
    completion, background tasks (which run after it) are not. With
    OpenTelemetry seen (``source``), a span current when the response starts
    is the request's if none was at its start."""
    tracing = source if source is not None and source[0] is not None else None

    def send_wrapper(message: Message) -> Any:
        kind = message["type"]
        if kind == "http.response.body":
            body = message.get("body")
            if body:
                item[8] += len(body)  # response_bytes
            if not message.get("more_body"):
                item[6] = clock()  # end
        elif kind == "http.response.start":
            item[3] = message["status"]
            item[5] = clock()  # ttfb
            if tracing is not None:
                item[13] = response_trace(tracing, item[13])
        elif kind == "http.response.pathsend":  # the whole file in one message
            item[6] = clock()
        elif kind == "http.response.zerocopysend":
            item[8] += message.get("count") or 0
            if not message.get("more_body"):
                item[6] = clock()
        return send(message)

    return send_wrapper


async def observe_receive(item: Any, receive: Receive) -> Message:
    """The app's ``receive()``: counts request body bytes, notes a disconnect."""
    message = await receive()
    kind = message["type"]
    if kind == "http.request":
        body = message.get("body")
        if body:
            item[7] += len(body)  # request_bytes
    elif kind == "http.disconnect":
        item[12] = True  # disconnected
    return message
