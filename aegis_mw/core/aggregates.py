"""Realtime aggregates: a per-second ring of counts and latency histograms.

Each slot is one flat list for one second of the monotonic clock::

    [second, requests, errors, duration_sum_ms, 1xx, 2xx, 3xx, 4xx, 5xx,
     duration_min_ms, duration_max_ms, *histogram]

The min and max keep percentiles read from the histogram within what was
observed (a bucket's midpoint can lie past every duration in it).

Only the flusher thread writes the ring: it folds every item it drains from
the inbox, keyed by the second the request completed. The request path never
touches it. Readers combine the ring with a copy of the items still waiting
in the inbox, so what they see is exact and current. A lock held by the
flusher while it moves one batch from the inbox into the ring (at most
``batch_size`` items, a few milliseconds at most) and by readers while they
copy keeps the two consistent; the request path never takes it, so call
readers from a worker thread, not an event loop.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from . import histogram
from .items import END, ERROR, HTTP_FIELDS, START, STATUS, PendingSession, python_run_end
from .labeled import BUCKETS_BASE, DEFAULT_BUCKETS, TTFB_COUNT, TTFB_SUM, LabeledTotals
from .labeled import COUNT as SERIES_COUNT
from .labeled import DURATION_SUM as SERIES_DURATION_SUM
from .labeled import REQUEST_BYTES as SERIES_REQUEST_BYTES
from .labeled import RESPONSE_BYTES as SERIES_RESPONSE_BYTES
from .labels import RouteCap
from .pending_sums import loops_fit, settle_or_drop, settled
from .record import RequestRecord
from .storable import whole_number

#: Where a finalized record holds a value only when it was traced.
TRACED_FIELD = RequestRecord._fields.index("trace_id")

RING_SIZE = 128  # > 60 s of history plus the current second; a power of two for masking
MASK = RING_SIZE - 1
SECOND, REQUESTS, ERRORS, DURATION_SUM = 0, 1, 2, 3
STATUS_BASE = 3  # slot[STATUS_BASE + status // 100] for classes 1..5
SUMMED_END = 9  # slot[REQUESTS:SUMMED_END] add up into the totals
DURATION_MIN, DURATION_MAX = 9, 10
HIST_BASE = 11
SLOT_LEN = HIST_BASE + histogram.COUNT
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
WINDOW = 60
#: The ring's and the series' layouts as the compiled fold must see them
#: (``_hotpath.FOLD_LAYOUT``); it is used only where the two agree.
FOLD_LAYOUT = (
    (MASK, SECOND, REQUESTS, ERRORS, DURATION_SUM, STATUS_BASE, DURATION_MIN, DURATION_MAX,
     HIST_BASE),
    (SERIES_COUNT, SERIES_DURATION_SUM, TTFB_COUNT, TTFB_SUM, SERIES_REQUEST_BYTES,
     SERIES_RESPONSE_BYTES, BUCKETS_BASE),
)  # fmt: skip
#: The most bucket bounds the compiled fold takes (it keeps them on its stack).
MAX_COMPILED_BOUNDS = 64


def _empty_slot(second: int) -> list[Any]:
    slot: list[Any] = [0] * SLOT_LEN
    slot[SECOND] = second
    slot[DURATION_SUM] = 0.0
    slot[DURATION_MIN] = float("inf")
    slot[DURATION_MAX] = float("-inf")
    return slot


@dataclass(frozen=True)
class RealtimeSnapshot:
    """Traffic of the last seconds, read from memory (no storage involved)."""

    requests_per_second_1s: float
    requests_per_second_10s: float
    requests_per_second_60s: float
    window_requests: int
    window_errors: int
    error_rate: float
    latency_avg_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    total_requests: int
    total_errors: int
    status_totals: dict[str, int]
    in_flight: int
    websocket_connections_active: int
    websocket_sessions_total: int


class SecondFigures(NamedTuple):
    """One second of the ring (a monotonic-clock second)."""

    second: int
    requests: int
    errors: int
    #: Responses by class, 1xx to 5xx.
    status: tuple[int, int, int, int, int]
    latency_avg_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None


def _fold(
    ring: list[list[Any]], totals: list[Any], items: Iterable[Any], good: list[Any] | None = None
) -> int:
    """Add HTTP items to ``ring`` (slots keyed by completion second) and return
    how many WebSocket sessions went by. Items older than the slot they map
    to (a long stall) go straight into ``totals``. A malformed item is skipped
    before anything is changed; with ``good`` given, the well-formed items are
    appended to it.
    """
    sessions = 0
    bucket_index = histogram.bucket_index
    for item in items:
        if type(item) is PendingSession:
            sessions += 1
        else:  # an HTTP item: a list, or the compiled path's HttpItem
            try:  # everything that can fail, before anything is changed
                end = item[END]
                status = item[STATUS]
                if type(status) is not int:
                    # 200.0 or HTTPStatus.OK count as 200, as the finalizer
                    # stores them; a bool or a str makes the item malformed.
                    status = whole_number(status)
                duration_ms = (end - item[START]) * 1000.0
                if duration_ms - duration_ms != 0.0:
                    # NaN or infinite (a start time of +inf): it would make
                    # every sum it joins NaN or infinite.
                    raise ValueError("duration is not finite")
                second = int(end)
                failed = status >= 500 or bool(item[ERROR])
                status_class = status // 100
                status_index = STATUS_BASE + (status_class if 0 < status_class < 6 else 5)
                bucket = HIST_BASE + bucket_index(duration_ms)
                if len(item) != HTTP_FIELDS:
                    continue
            except Exception:
                continue
            slot = ring[second & MASK]
            if slot[SECOND] != second:
                if slot[SECOND] < second:
                    for position in range(REQUESTS, SUMMED_END):
                        totals[position] += slot[position]
                    slot = ring[second & MASK] = _empty_slot(second)
                else:
                    slot = totals
            slot[REQUESTS] += 1
            if failed:
                slot[ERRORS] += 1
            slot[DURATION_SUM] += duration_ms
            slot[status_index] += 1
            if slot is not totals:
                slot[bucket] += 1
                if duration_ms < slot[DURATION_MIN]:
                    slot[DURATION_MIN] = duration_ms
                if duration_ms > slot[DURATION_MAX]:
                    slot[DURATION_MAX] = duration_ms
        if good is not None:
            good.append(item)
    return sessions


class RealtimeAggregates:
    """The realtime figures: written by the flusher, read by anyone."""

    def __init__(
        self,
        routes: RouteCap | None = None,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        compiled: ModuleType | None = None,
    ) -> None:
        #: The route cap the records pass too (the finalizer shares it), so
        #: metric labels and stored routes agree.
        self.routes = routes if routes is not None else RouteCap(1000)
        #: Cumulative figures per label set, for the Prometheus exposition.
        self.labeled = LabeledTotals(buckets)
        self.ring: list[list[Any]] = [_empty_slot(-1) for _ in range(RING_SIZE)]
        # What rotated out of the ring: running totals since start.
        self.totals: list[Any] = _empty_slot(-1)
        self.websocket_sessions = 0
        #: Items taken from the inbox so far, well-formed or not.
        self.drained = 0
        self._lock = threading.Lock()
        # Written by the request path (one event loop) on entry and exit.
        self.in_flight = 0
        self.websockets_active = 0
        # Request paths that keep their own in-flight count (the compiled
        # one), summed at read time: the request path pays no attribute writes.
        self._in_flight_sources: weakref.WeakSet[Any] = weakref.WeakSet()
        #: The other worker processes' live figures (``live_share.Peers``),
        #: added to this one's by every live read; None for a process alone.
        self.peers: Callable[[], Any] | None = None
        #: The compiled fold (``_hotpath.fold_items``), or None: it takes the
        #: plain compiled items of known label sets, the rest are folded here.
        self._item_type: type | None = None if compiled is None else compiled.HttpItem
        self._compiled_fold = (
            compiled.fold_items
            if compiled is not None
            and compiled.FOLD_LAYOUT == FOLD_LAYOUT
            and loops_fit(compiled)
            and len(self.labeled.bounds) <= MAX_COMPILED_BOUNDS
            and all(type(bound) is float for bound in self.labeled.bounds)
            else None
        )
        #: The compiled fold's sums not yet in the ring, the series and the
        #: request counts (``_hotpath.FoldPending``): settled before anyone
        #: reads them and before the Python fold changes them.
        self._pending: Any = (
            None
            if self._compiled_fold is None or compiled is None
            else compiled.FoldPending(self.ring, self.labeled.requests)
        )

    def settle(self) -> None:
        """Write the compiled fold's pending sums into the figures (readers
        do it themselves; for callers that read the lists directly)."""
        with self._lock:
            self._settle()

    def _settle(self) -> None:
        if self._pending is not None:
            settle_or_drop(self, "realtime figures")

    def add_in_flight_source(self, source: Any) -> None:
        """Count ``source.in_flight`` (an int the source keeps) in ``in_flight``."""
        self._in_flight_sources.add(source)

    def in_flight_now(self) -> int:
        """Requests started and not finished, on every request path."""
        sources = list(self._in_flight_sources)
        return self.in_flight + sum(int(source.in_flight) for source in sources)

    def reset(self) -> None:
        """Forget everything (a forked child starts with its own counts)."""
        self.ring[:] = [_empty_slot(-1) for _ in range(RING_SIZE)]
        self.totals = _empty_slot(-1)
        self.drained = 0
        self.labeled = LabeledTotals(self.labeled.bounds)
        if self._pending is not None:  # its sums were the parent's
            self._pending = type(self._pending)(self.ring, self.labeled.requests)
        # A fork may land mid-fold: the child must not inherit a held lock.
        self._lock = threading.Lock()
        self.websocket_sessions = 0
        self.in_flight = 0
        self.websockets_active = 0
        for source in list(self._in_flight_sources):
            source.in_flight = 0

    def fold_drained(self, drain: Callable[[], list[Any]]) -> tuple[list[Any], int]:
        """Flusher only: take items from the inbox and fold them, as one step
        for readers. Returns the well-formed items and how many were not.
        """
        good: list[Any] = []
        with self._lock:
            items = drain()
            self.drained += len(items)
            if self._compiled_fold is None or type(items) is not list:
                self._settle()
                self.websocket_sessions += _fold(self.ring, self.totals, items, good)
                self.labeled.fold(good, self.routes.label)
            else:
                self._fold_compiled(self._compiled_fold, items, good)
        return good, len(items) - len(good)

    def _fold_compiled(self, fold: Callable[..., int], items: list[Any], good: list[Any]) -> None:
        """Fold with the compiled loop; each item it stops at (a new second,
        a label set not seen, an odd value) is folded here, after its pending
        sums are settled, and it goes on."""
        labeled = self.labeled
        index, total = 0, len(items)
        while True:
            index = fold(
                items, index, good, self._pending, labeled._known, labeled.bounds,
                histogram.PLACEMENT,
            )  # fmt: skip
            if index >= total:
                return
            # The item it stopped at, and every following one that is not a
            # compiled item (a pure-Python path's list, a session), here.
            end = python_run_end(items, index, self._item_type)
            if not settled(self, "realtime figures"):
                index = end  # out of memory: left out, counted malformed
                continue
            folded = len(good)
            self.websocket_sessions += _fold(self.ring, self.totals, items[index:end], good)
            labeled.fold(good[folded:], self.routes.label)
            index = end

    def note_exemplars(self, records: list[Any]) -> None:
        """Flusher only: the traced requests of finalized ``records`` become
        the exemplars of their series (see :mod:`.exemplars`); a list with
        none costs one pass (about 20 ns a record) and no lock."""
        # Index 12: a request's trace id, a session's span id (take() leaves
        # sessions out); by index, at half the cost of a type test and a name.
        traced = [record for record in records if record[TRACED_FIELD] is not None]
        if traced:
            with self._lock:
                self.labeled.exemplars.take(traced)

    def labeled_snapshot(
        self, pending: Callable[[], list[Any]], *, exemplars: bool = True
    ) -> LabeledTotals:
        """The per-label totals including the items still waiting in the inbox,
        read as one moment (their route labels predicted on a copy of the cap);
        ``exemplars=False`` leaves those out (readers that never show them)."""
        with self._lock:
            self._settle()
            labeled = self.labeled.copy(exemplars=exemplars)
            routes = self.routes.copy()
            waiting = pending()
        labeled.fold(waiting, routes.label)
        return labeled

    def live_labeled(
        self, pending: Callable[[], list[Any]]
    ) -> tuple[LabeledTotals, Mapping[tuple[str, str], Sequence[int]]]:
        """:meth:`labeled_snapshot` with the other workers' figures by route
        added (requests, 5xx responses, durations: what the live top
        endpoints read; ``/metrics`` merges its own way), and their fine
        latency counts apart, for the few routes a reader shows."""
        labeled = self.labeled_snapshot(pending, exemplars=False)
        others = self.peers() if self.peers is not None else None
        if others is None:
            return labeled, {}
        for (method, route), (requests, errors, duration) in others.routes.items():
            series = labeled.series.get((method, route))
            if series is None:
                series = labeled.series[(method, route)] = labeled._new_series()
            series[SERIES_COUNT] += requests
            series[SERIES_DURATION_SUM] += duration
            if errors:
                key = (method, route, "5xx")
                labeled.requests[key] = labeled.requests.get(key, 0) + int(errors)
        return labeled, others.latency

    def _read(
        self, pending: Callable[[], list[Any]], now_second: int, *, peers: bool = True
    ) -> tuple[list[list[Any]], list[Any], int, tuple[int, int]]:
        """A consistent copy of ring, totals and the not-yet-folded items,
        with the other workers' figures added (``peers``, when there are
        any); and their in-flight requests and open WebSockets."""
        with self._lock:
            self._settle()
            ring = [list(slot) for slot in self.ring]
            totals = list(self.totals)
            sessions = self.websocket_sessions
            waiting = pending()
        sessions += _fold(ring, totals, waiting)
        others = self.peers() if peers and self.peers is not None else None
        if others is None:
            return ring, totals, sessions, (0, 0)
        from .live_share import merge_into_ring

        merge_into_ring(ring, totals, others, now_second)
        return (
            ring,
            totals,
            sessions + others.sessions,
            (others.in_flight, others.websockets_active),
        )

    def publication(self, now_second: int, pending: Callable[[], list[Any]]) -> dict[str, Any]:
        """This process's own live figures, as it publishes them for the
        other workers (``live_share.publication``), its figures by route
        (``live_share.route_figures``) included: all read as one moment, so
        a request recorded meanwhile is in both or in neither (a reader adds
        the totals and the routes up apart: the top endpoints would not sum
        to the requests counted until the next publication)."""
        from .live_share import publication, route_figures

        with self._lock:
            self._settle()
            ring = [list(slot) for slot in self.ring]
            totals = list(self.totals)
            sessions = self.websocket_sessions
            labeled = self.labeled.copy(exemplars=False)
            routes = self.routes.copy()
            waiting = pending()
        sessions += _fold(ring, totals, waiting)
        labeled.fold(waiting, routes.label)
        live = publication(
            ring, totals, sessions, now_second, self.in_flight_now(), self.websockets_active
        )
        live.update(route_figures(labeled))
        return live

    def items_seen(self, waiting: Callable[[], int]) -> int:
        """Items drained so far plus those still waiting, read as one moment."""
        with self._lock:
            return self.drained + waiting()

    def seconds(
        self, now_second: int, pending: Callable[[], list[Any]], count: int = WINDOW
    ) -> list[SecondFigures]:
        """One entry per second for the ``count`` seconds ending with
        ``now_second`` (oldest first), zeros where nothing happened."""
        ring, _, _, _ = self._read(pending, now_second)
        by_second = {slot[SECOND]: slot for slot in ring if slot[SECOND] >= 0}
        out = []
        for second in range(now_second - count + 1, now_second + 1):
            slot = by_second.get(second)
            if slot is None or not slot[REQUESTS]:
                out.append(SecondFigures(second, 0, 0, (0, 0, 0, 0, 0), None, None, None, None))
                continue
            requests = slot[REQUESTS]
            p50, p95, p99 = histogram.percentiles(
                slot[HIST_BASE:],
                (0.5, 0.95, 0.99),
                lowest=slot[DURATION_MIN],
                highest=slot[DURATION_MAX],
            )
            status = tuple(slot[STATUS_BASE + cls] for cls in range(1, 6))
            average = slot[DURATION_SUM] / requests
            figures = (second, requests, slot[ERRORS], status, average, p50, p95, p99)
            out.append(SecondFigures._make(figures))
        return out

    def snapshot(self, now_second: int, pending: Callable[[], list[Any]]) -> RealtimeSnapshot:
        """Rates over the last 1/10/60 complete seconds; latency and error rate
        over the last 60 seconds including the current one; totals since start.
        """
        ring, totals, sessions, (in_flight, websockets) = self._read(pending, now_second)
        by_second: dict[int, list[Any]] = {}
        for slot in ring:
            if slot[SECOND] < 0:
                continue
            for position in range(REQUESTS, SUMMED_END):
                totals[position] += slot[position]
            by_second[slot[SECOND]] = slot

        def requests_between(first: int, last: int) -> int:
            return sum(by_second[s][REQUESTS] for s in range(first, last + 1) if s in by_second)

        window = [
            by_second[s] for s in range(now_second - WINDOW + 1, now_second + 1) if s in by_second
        ]
        requests = sum(slot[REQUESTS] for slot in window)
        errors = sum(slot[ERRORS] for slot in window)
        merged = [0] * histogram.COUNT
        duration_sum = 0.0
        lowest, highest = float("inf"), float("-inf")
        for slot in window:
            duration_sum += slot[DURATION_SUM]
            lowest = min(lowest, slot[DURATION_MIN])
            highest = max(highest, slot[DURATION_MAX])
            for offset, value in enumerate(slot[HIST_BASE:]):
                if value:
                    merged[offset] += value
        p50, p95, p99 = histogram.percentiles(
            merged, (0.5, 0.95, 0.99), lowest=lowest, highest=highest
        )
        return RealtimeSnapshot(
            requests_per_second_1s=float(requests_between(now_second - 1, now_second - 1)),
            requests_per_second_10s=requests_between(now_second - 10, now_second - 1) / 10,
            requests_per_second_60s=requests_between(now_second - 60, now_second - 1) / 60,
            window_requests=requests,
            window_errors=errors,
            error_rate=errors / requests if requests else 0.0,
            latency_avg_ms=duration_sum / requests if requests else None,
            latency_p50_ms=p50,
            latency_p95_ms=p95,
            latency_p99_ms=p99,
            total_requests=int(totals[REQUESTS]),
            total_errors=int(totals[ERRORS]),
            status_totals={
                name: int(totals[STATUS_BASE + cls]) for cls, name in enumerate(STATUS_CLASSES, 1)
            },
            in_flight=self.in_flight_now() + in_flight,
            websocket_connections_active=self.websockets_active + websockets,
            websocket_sessions_total=sessions,
        )
