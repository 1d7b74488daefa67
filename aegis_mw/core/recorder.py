"""The inbox: the one place the request path writes to.

A finished request's item (a list the middleware filled in as the request
ran, see ``items.py``) is appended to a bounded deque; that is all. No I/O,
no lock that can block, no JSON, no formatting, no aggregate update: the
flusher thread folds items into the realtime ring, numbers them, stamps
wall time and builds records. ``deque.append`` is atomic, so request
threads (WSGI) need no lock either.
"""

from __future__ import annotations

import threading
from collections import deque

from . import deque_take
from .aggregates import RealtimeAggregates
from .deque_take import DequeTake
from .events import EventQueue
from .items import InboxItem

#: Why items were refused or lost before reaching any sink; the keys of
#: ``Recorder.dropped``. ``invalid`` counts items that cannot become a
#: storable record (skipped, their neighbours kept): malformed items handed to
#: ``Recorder.offer``, and values with no faithful repair, such as an app's
#: ``str`` status or a number beyond its column (see ``storable``);
#: ``internal_error`` a request the middleware failed to record (a bug of
#: ours). Sink-level losses are counted per sink (``SinkRunner.dropped``).
DROP_REASONS = ("buffer_full", "shutdown", "invalid", "internal_error")


class Recorder:
    """Owns the inbox between the request path and the flusher thread."""

    def __init__(
        self,
        *,
        aggregates: RealtimeAggregates,
        max_buffer: int,
        batch_size: int,
        take: DequeTake = deque_take.PYTHON,
    ) -> None:
        self.aggregates = aggregates
        self._take_left = take.take_left
        self.max_buffer = max_buffer
        self.inbox: deque[InboxItem] = deque()
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        #: The app's own events (``Aegis.event``): a tenth of the inbox's bound
        #: (at least 1,000) and 16 MiB, waking the flusher as the inbox does.
        self.events = EventQueue(
            max(max_buffer // 10, min(max_buffer, 1000)),
            wake_at=max(min(batch_size, max_buffer // 10) - 1, 1),
            wake=self.wake_flusher,
        )
        self._closed = False
        # What the request path compares the queue length against: max_buffer
        # while open, 0 once closed, so one comparison covers both.
        self.limit = max_buffer
        #: Set by the flusher while it runs a cycle someone waits for.
        self.hurried = False
        # Wake the flusher once this many items were already queued (never
        # later than the bound, or a burst would be refused while it sleeps).
        self.wake_at = min(batch_size, max_buffer) - 1
        #: ``[limit, wake_at]`` again, for the compiled request path: it reads
        #: them from this list (updated in place) without an attribute lookup.
        self.bounds = [self.limit, self.wake_at]
        # Released (never acquired) by producers to wake the flusher early:
        # ``Lock.release`` cannot block, unlike ``Event.set``, which takes a
        # lock the flusher may be holding.
        self.wake = threading.Lock()
        self.wake.acquire()

    @property
    def closed(self) -> bool:
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value
        self.events.closed = value
        self.limit = self.bounds[0] = 0 if value else self.max_buffer

    def fill(self) -> float:
        """The share of ``max_buffer`` the inbox holds; 1.0 once closed, and
        while ``hurried`` (a ``force_flush`` under way), so the pipeline
        writes at full speed when it was asked to or shutdown's deadline
        runs (see :mod:`.gil_slices`)."""
        if self._closed or self.hurried:
            return 1.0
        return len(self.inbox) / self.max_buffer

    def reset_after_fork(self) -> None:
        """In a forked child: the parent still owns and writes what was buffered.

        The deque is cleared in place: the middleware holds a reference to it.
        """
        self.inbox.clear()
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.events.reset_after_fork()
        self.wake = threading.Lock()
        self.wake.acquire()

    def wake_flusher(self) -> None:
        wake = self.wake
        if wake.locked():
            try:
                wake.release()
            except RuntimeError:  # another producer released it first
                pass

    def refuse(self) -> None:
        """Count an item that did not fit (the request path's rare branch)."""
        self.dropped["shutdown" if self._closed else "buffer_full"] += 1

    def offer(self, item: InboxItem) -> None:
        """Queue one finished request or session. O(1), never blocks.

        The ASGI middleware does the same inline (it is the hottest path);
        other callers use this.
        """
        inbox = self.inbox
        queued = len(inbox)
        if queued >= self.limit:
            self.refuse()
            return
        inbox.append(item)
        if queued >= self.wake_at:
            self.wake_flusher()

    def drain(self, limit: int) -> list[InboxItem]:
        """Flusher side: take up to ``limit`` items, oldest first."""
        return self._take_left(self.inbox, limit)

    def pending(self) -> list[InboxItem]:
        """A copy of what waits in the inbox, for readers of the aggregates."""
        return list(self.inbox)
