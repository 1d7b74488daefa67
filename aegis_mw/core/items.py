"""What waits in the inbox between the request path and the flusher.

An HTTP request is a plain tuple, the cheapest thing the request path can
build; a WebSocket session (rare) is a small class. Times are monotonic
seconds. Layout of the HTTP tuple::

    (method, route, path, status, start, ttfb, end, request_bytes,
     response_bytes, client, forwarded, error)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HttpItem = tuple[Any, ...]
HTTP_FIELDS = 12
# Positions the realtime ring reads.
STATUS, START, END, ERROR = 3, 4, 6, 11


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


InboxItem = HttpItem | PendingSession
