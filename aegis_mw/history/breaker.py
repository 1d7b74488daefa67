"""A circuit breaker per history store: reads fail at once while it is down.

Closed, reads go to the store. A read that fails because the store cannot be
reached (the source says which of its errors mean that, see
:func:`unavailable`) opens the breaker: for ``retry_after`` seconds every read
raises :class:`StoreUnavailable` at once, without waiting for a connection,
a lock or a thread. Then the breaker is half-open: one read (the probe) tries
the store while the others still fail at once; its success closes the breaker,
its failure opens it for another ``retry_after``. A probe that has not
answered within ``probe_limit`` seconds (a store that accepted the connection
and then hung) no longer holds the breaker: the next read probes instead. The
outage is logged when
it starts and when it ends, once each, however many reads it refused: never a
traceback per request.

Example::

    breaker = StoreBreaker("sqlite:aegis.db", retry_after=5.0)
    queries = HistoryQueries(GuardedSource(SQLiteSink("aegis.db"), breaker))
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from ..core.custom_history import CustomRow
from ..core.custom_metrics import MetricSnapshot
from ..core.events import EventQuery, read_merged
from ..core.history import HistorySource, RequestQuery
from ..core.labels import describe_error
from ..core.record import EventRecord, RequestRecord
from ..core.rollup import RollupRow

logger = logging.getLogger("aegis_mw.history")
T = TypeVar("T")
_CLOSED, _OPEN, _PROBING = "closed", "open", "probing"


class StoreUnavailable(Exception):
    """The store cannot be read now; ``retry_after`` is whole seconds (>= 1)."""

    def __init__(self, store: str, retry_after: int) -> None:
        super().__init__(f"the history store {store} cannot be read now")
        self.store = store
        self.retry_after = retry_after


def unavailable(source: object, error: Exception) -> bool:
    """Whether ``error`` from a read of ``source`` means the store cannot be
    reached (rather than a fault of the read): the source's own
    ``read_unavailable(error)`` decides where it has one (the database sinks
    do), else any ``OSError`` does."""
    classify = getattr(source, "read_unavailable", None)
    if callable(classify):
        return bool(classify(error))
    return isinstance(error, OSError)


class StoreBreaker:
    """Closed, open or probing; thread-safe (reads come from many threads)."""

    def __init__(
        self,
        store: str,
        *,
        retry_after: float,
        probe_limit: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.retry_after = retry_after
        self.probe_limit = probe_limit
        self._clock = clock
        # Held only to read and change the state, never across I/O or logging.
        self._lock = threading.Lock()
        self._state = _CLOSED
        self._probe_at = 0.0  # open: when a read may try the store again
        self._probe_started = 0.0  # probing: when the probe was let through
        self._since = 0.0  # when the outage began
        self._refused = 0  # reads answered at once during this outage

    @property
    def state(self) -> str:
        return self._state

    def admit(self) -> bool:
        """Let a read through (True: it is the probe of a half-open breaker),
        or raise :class:`StoreUnavailable` while the store is known to be down."""
        with self._lock:
            if self._state == _CLOSED:
                return False
            now = self._clock()
            if (self._state == _OPEN and now >= self._probe_at) or (
                self._state == _PROBING and now >= self._probe_started + self.probe_limit
            ):
                # A probe still out after probe_limit has hung: this read probes.
                self._state, self._probe_started = _PROBING, now
                return True
            self._refused += 1
            wait = self._probe_at - now
        # While a probe runs, its answer is at most read_timeout away.
        raise StoreUnavailable(self.store, max(1, math.ceil(wait)))

    def succeeded(self) -> None:
        """The store answered: close (and say so once, if it was open)."""
        with self._lock:
            if self._state == _CLOSED:
                return
            self._state = _CLOSED
            down, refused = self._clock() - self._since, self._refused
        logger.warning(
            "aegis_mw: the history store %s can be read again after %.1f s "
            "(%d reads were answered 503 meanwhile)",
            self.store, down, refused,
        )  # fmt: skip

    def failed(self, error: Exception) -> int:
        """The store could not be reached: open for ``retry_after`` seconds
        (logged once per outage); returns the seconds to retry after."""
        with self._lock:
            now = self._clock()
            started = self._state == _CLOSED
            self._state = _OPEN
            self._probe_at = now + self.retry_after
            if started:
                self._since, self._refused = now, 0
        if started:
            logger.warning(
                "aegis_mw: the history store %s cannot be read (%s); reads answer 503 "
                "at once for %g s, then one tries again",
                self.store, describe_error(error, 300), self.retry_after,
            )  # fmt: skip
        else:
            logger.debug("aegis_mw: the history store %s is still down", self.store)
        return max(1, math.ceil(self.retry_after))

    def abandon(self, probe: bool) -> None:
        """A read ended without an answer either way (cancelled): if it was the
        probe, the next read probes instead."""
        if not probe:
            return
        with self._lock:
            if self._state == _PROBING:
                self._state, self._probe_at = _OPEN, self._clock()

    def reset_after_fork(self) -> None:
        """A forked child: a fresh lock (the parent's may have been held) and
        the state kept (the store is as far from the child as from its
        parent), but for a probe under way: that read is the parent's, so the
        child's next read probes instead of waiting out ``probe_limit``."""
        self._lock = threading.Lock()
        if self._state == _PROBING:
            self._state, self._probe_at = _OPEN, self._clock()


class EventsUnavailable(RuntimeError):
    """The history store has no read side for events."""


class GuardedSource:
    """A :class:`HistorySource` whose reads pass through its store's breaker."""

    def __init__(self, source: HistorySource, breaker: StoreBreaker) -> None:
        self.source = source
        self.breaker = breaker

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]:
        return self._read(
            lambda: self.source.read_rollups(resolution, start, end, by_route=by_route)
        )

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        return self._read(lambda: self.source.read_requests(query))

    def read_custom_rollups(
        self, metric: str, resolution: int, start: int, end: int, limit: int = 2**62
    ) -> list[CustomRow]:
        """The app's own metric's stored changes (none from a source that
        keeps none)."""
        read = getattr(self.source, "read_custom_rollups", None)
        if read is None:
            return []
        return self._read(lambda: read(metric, resolution, start, end, limit))

    def read_custom_metrics(self) -> list[MetricSnapshot]:
        """The app's own metrics the history holds (none from a source that
        keeps none)."""
        read = getattr(self.source, "read_custom_metrics", None)
        if read is None:
            return []
        return self._read(read)

    def read_events(self, query: EventQuery) -> list[EventRecord]:
        """A page of the stored events and the request log's errors (see
        :func:`aegis_mw.core.events.read_merged`); only stored events when
        the source keeps no request log."""
        read_events = getattr(self.source, "read_events", None)
        if read_events is None:
            raise EventsUnavailable("the history store keeps no events")
        return self._read(lambda: read_merged(query, read_events, self.source.read_requests))

    def count_events(self, since: float) -> tuple[int, int]:
        """How many events are stored, and how many of them at or after ``since``."""
        count_events = getattr(self.source, "count_events", None)
        if count_events is None:
            raise EventsUnavailable("the history store keeps no events")
        total, recent = self._read(lambda: count_events(since))
        return int(total), int(recent)

    def prune(self, raw_before: float, rollups_before: Mapping[int, float], limit: int) -> int:
        return self.source.prune(raw_before, rollups_before, limit)

    def probe(self) -> None:
        """For a use of the same store that is no history read (the
        incidents', the alert store's), while the breaker is not closed:
        :class:`StoreUnavailable` at once while the store is known to be
        down; when a probe is due, a read of nothing (an empty range of
        rollups) is the probe, so the store answering closes the breaker and
        failing to reach it opens it again, before the use runs. The use's
        own failure then opens nothing: a write that fails on the store's
        write lock is no outage of the reads."""
        self._read(lambda: self.source.read_rollups(60, 0, 0, by_route=False))

    def guarded(self, call: Callable[[], T]) -> T:
        """``call``, a use of the same store that is not one of its reads (the
        audit's write of posted events), through the breaker:
        :class:`StoreUnavailable` at once while the store is known to be
        down, and its failure to reach the store (a write lock held past its
        timeout too) opens the breaker for the reads as well, so the next
        post's answer does not wait for it again."""
        return self._read(call)

    def _read(self, read: Callable[[], T]) -> T:
        breaker = self.breaker
        probe = breaker.admit()
        try:
            result = read()
        except Exception as error:
            if unavailable(self.source, error):
                raise StoreUnavailable(breaker.store, breaker.failed(error)) from error
            breaker.succeeded()  # the store answered; this read was at fault
            raise
        except BaseException:
            breaker.abandon(probe)
            raise
        breaker.succeeded()
        return result
