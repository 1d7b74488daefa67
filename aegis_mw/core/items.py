"""What waits in the inbox between the request path and the flusher.

An HTTP request is a list that the middleware builds once when the request
starts and then fills in as messages pass (status, times, byte counts);
when the request ends the same list is queued, so nothing is copied. A
WebSocket session (rare) is a small class. Times are monotonic seconds.
Layout of the HTTP list, by index::

    0 method   1 route   2 path   3 status   4 start   5 ttfb   6 end
    7 request_bytes   8 response_bytes   9 client   10 forwarded   11 error
    12 disconnected (the middleware's own note; not stored)
    13 trace (what core/trace_context.py picked up: a span, a header, or None)

A list (not a tuple) because the request path writes into it. Other callers
of ``Recorder.offer`` build the same 14-element list, for a request that just
started: ``[method, None, path, 0, start, None, None, 0, 0, client, None, "", False, None]``.
The compiled request path queues its own ``HttpItem`` instead, with the same
layout, read and written by index like the list; readers treat every item
that is not a ``PendingSession`` as such a sequence.
"""

from __future__ import annotations

from collections.abc import MutableSequence
from dataclasses import dataclass
from typing import Any

HttpItem = MutableSequence[Any]
METHOD, ROUTE, PATH, STATUS, START, TTFB, END = 0, 1, 2, 3, 4, 5, 6
REQUEST_BYTES, RESPONSE_BYTES, CLIENT, FORWARDED, ERROR, DISCONNECTED = 7, 8, 9, 10, 11, 12
TRACE = 13
HTTP_FIELDS = 14


@dataclass(slots=True)
class PendingSession:
    """A finished WebSocket session waiting in the inbox."""

    start: float
    route: str
    path: str
    end: float
    messages_in: int
    messages_out: int
    close_code: int | None
    accepted: bool
    client: tuple[str, int] | None
    forwarded: str | None
    error: str
    trace: Any = None


InboxItem = HttpItem | PendingSession


def python_run_end(items: list[Any], index: int, item_type: type | None) -> int:
    """Where the Python code's share of ``items`` ends when a compiled loop of
    the flusher stopped at ``index``: after that item and every following
    one that is not ``item_type`` (the compiled loops' own items); so a batch
    of lists from a pure-Python path takes one pass, not one call per item."""
    end = index + 1
    total = len(items)
    while end < total and type(items[end]) is not item_type:
        end += 1
    return end
