"""How a request that raised or never finished its response is recorded.

Only requests off the happy path get here, so clarity wins over speed:

- the app raised before the response started: 500, with the error;
- it raised after (even after the last byte): the sent status, with the error;
- the client went away first (``http.disconnect`` seen, a connection error,
  or a framework's ``ClientDisconnect``) or the task was cancelled: 499;
- it returned without any response: 500; mid-body: the sent status, flagged.

A WebSocket session's exception is judged by :func:`session_disconnect`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .items import DISCONNECTED, END, ERROR, STATUS
from .labels import describe_error
from .record import CLIENT_CLOSED_STATUS

NO_RESPONSE = "RuntimeError: app returned without sending a response"
INCOMPLETE_RESPONSE = "RuntimeError: app returned before the response body was complete"
_DISCONNECT_ERRORS = frozenset({"ClientDisconnect", "ClientDisconnected"})
#: A framework's word for a session's end (Starlette's, Litestar's), with a close code.
_SESSION_ENDS = "WebSocketDisconnect"


def is_disconnect(exc: BaseException) -> bool:
    """The client went away: a broken connection, or a server/framework saying so."""
    return isinstance(exc, ConnectionError) or type(exc).__name__ in _DISCONNECT_ERRORS


def session_disconnect(exc: BaseException, client_gone: bool) -> int | None:
    """The close code of a WebSocket session that raised only because its
    client went away (1006 unless the exception carries one); None when the
    exception is an error.

    ``client_gone``: the server said so first (a ``websocket.disconnect``
    received, or a send that failed as a disconnect). Only then does a
    framework's ``WebSocketDisconnect`` count: Starlette raises it for both,
    but an app may raise it too, and an app's own exception is an error.
    """
    if is_disconnect(exc):
        return 1006
    if not client_gone or not any(cls.__name__ == _SESSION_ENDS for cls in type(exc).__mro__):
        return None
    code = getattr(exc, "code", None)
    return int(code) if isinstance(code, int) and not isinstance(code, bool) else 1006


def settle(
    item: list[Any], failure: BaseException | None, clock: Callable[[], float], error_limit: int
) -> None:
    """Fill in status, end and error of an HTTP item that did not end normally."""
    disconnect = failure is not None and is_disconnect(failure)
    if failure is not None and isinstance(failure, Exception) and not disconnect:
        item[ERROR] = describe_error(failure, error_limit)
    if disconnect:
        # Even when the end was stamped: it was stamped as the last body message
        # went to the server, which then failed to deliver it.
        if item[END] is None:
            item[END] = clock()
        item[STATUS] = CLIENT_CLOSED_STATUS
        return
    if item[END] is not None:
        return  # the response went out whole; the app raised afterwards
    item[END] = clock()
    cancelled = failure is not None and not isinstance(failure, Exception)
    if item[DISCONNECTED] or cancelled:
        item[STATUS] = CLIENT_CLOSED_STATUS  # nobody got an answer
    elif item[STATUS] == 0:
        item[STATUS] = 500
        if not item[ERROR]:
            item[ERROR] = NO_RESPONSE
    elif not item[ERROR]:
        item[ERROR] = INCOMPLETE_RESPONSE
