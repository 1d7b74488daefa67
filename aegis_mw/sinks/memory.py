"""``memory://``: records kept in the process, for tests and experiments."""

from __future__ import annotations

import threading

from ..core.record import Batch, RequestRecord, WebSocketSession


class MemorySink:
    """Keeps every record in memory, once per id, in arrival order.

    Example::

        sink = MemorySink()
        aegis = Aegis(sink=sink)
        ...
        aegis.force_flush()
        assert sink.requests[0].route == "/items/{item_id}"
    """

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, RequestRecord] = {}
        self._sessions: dict[str, WebSocketSession] = {}
        self.batches = 0
        self.closed = False

    def write(self, batch: Batch) -> None:
        with self._lock:
            for record in batch.requests:
                self._requests.setdefault(record.request_id, record)
            for session in batch.sessions:
                self._sessions.setdefault(session.session_id, session)
            self.batches += 1

    def close(self) -> None:
        self.closed = True

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests.values())

    @property
    def sessions(self) -> list[WebSocketSession]:
        with self._lock:
            return list(self._sessions.values())

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()
            self._sessions.clear()
