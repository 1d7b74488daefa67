"""Cumulative figures per label set, for the Prometheus exposition.

The flusher folds every drained item here, under the same lock as the
realtime ring, so a scrape reads counters that the request path never
touched: requests by ``(method, route, status)``, and by ``(method, route)``
latency and time-to-first-byte histograms (bucket counts kept non-cumulative,
summed at read time, as prometheus-client does) and body sizes. WebSocket
sessions count by ``(route, close code)``.

Each ``(method, route)`` also keeps a histogram of the realtime ring's fine
buckets (:mod:`.histogram`, 2% wide), for the live top endpoints' p95: the
exposition's buckets are far too coarse for a percentile (5 ms wide at first,
so a 0.5 ms route would show a p95 near 5 ms). It is a fixed array of 8-byte
counts (about 3.8 kB a series, no objects per count): its size is bounded
by the series count, which the route cap bounds.

Label values are bounded: methods outside the standard nine fold into
``_OTHER``, routes pass the same cap as the stored records (``RouteCap``)
and close codes, which a client chooses, fold into ranges
(:func:`close_code_label`), so no request can add a label set the app does
not have.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import histogram
from .exemplars import Exemplars
from .items import PendingSession
from .labels import STANDARD_METHODS
from .record import OTHER_METHOD, OVERFLOW_ROUTE, UNMATCHED_ROUTE
from .storable import ROUTE_LIMIT, url_field

#: prometheus-client's default buckets, in seconds.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

# Layout of a (method, route) series list, followed by the duration buckets
# (len(bounds) + 1, the last one +Inf) and the TTFB buckets (as many).
COUNT, DURATION_SUM, TTFB_COUNT, TTFB_SUM, REQUEST_BYTES, RESPONSE_BYTES = range(6)
BUCKETS_BASE = 6

RouteLabel = Callable[[str], str]
#: (requests key, series, fine histogram, is HEAD) for a known label set.
_Known = tuple[tuple[str, str, str], list[float], "array[int]", bool]
#: At most this many (method, route, status) triples are remembered: the
#: route cap and the nine methods bound them, but an app may send any status.
KNOWN_LIMIT = 10_000


class LabeledTotals:
    """Counters and histograms by label set, since start (or since a fork)."""

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.requests: dict[tuple[str, str, str], int] = {}
        self.series: dict[tuple[str, str], list[float]] = {}
        self.sessions: dict[tuple[str, str], int] = {}
        #: (method, route) -> counts in :mod:`.histogram`'s buckets (milliseconds).
        self.latency: dict[tuple[str, str], array[int]] = {}
        #: Requests and sessions whose route became <overflow> (the records'
        #: finalizer counts the same ones, once written).
        self.route_overflow = 0
        #: The latest traced request per counter series and duration bucket
        #: (filled from the finalized records, see :mod:`.exemplars`).
        self.exemplars = Exemplars(self.bounds)
        self._status_text: dict[int, str] = {}
        # (method, route, status) as items carry them, for plain values seen
        # before -> what folding one needs: (requests key, series, fine
        # histogram, is HEAD). One lookup instead of the label work.
        self._known: dict[tuple[str, str, int], _Known] = {}

    def copy(self, *, exemplars: bool = True) -> LabeledTotals:
        """An independent copy; ``exemplars=False`` leaves them out (the live
        views, which never show them)."""
        other = LabeledTotals(self.bounds)
        other.requests = dict(self.requests)
        other.series = {key: list(values) for key, values in self.series.items()}
        other.sessions = dict(self.sessions)
        other.latency = {key: counts[:] for key, counts in self.latency.items()}
        other.route_overflow = self.route_overflow
        if exemplars:
            other.exemplars = self.exemplars.copy()
        other._status_text = self._status_text
        return other  # its own _known: the entries point at this object's lists

    def _new_series(self) -> list[float]:
        return [0] * (BUCKETS_BASE + 2 * (len(self.bounds) + 1))

    def fold(self, items: Iterable[Any], route_label: RouteLabel) -> None:
        """Add items; ``route_label`` turns a route into its label value (the
        route cap's :meth:`~aegis_mw.core.labels.RouteCap.label`). An item
        that cannot be read (a malformed one from a third-party caller of
        ``Recorder.offer``) is skipped before anything is changed."""
        known = self._known
        requests = self.requests
        bounds = self.bounds
        ttfb_base = BUCKETS_BASE + len(bounds) + 1
        bucket_index = histogram.bucket_index
        for item in items:
            try:
                if type(item) is PendingSession:
                    route = self._route(item.route, route_label)
                    key = (route, close_code_label(item.close_code))
                    self.sessions[key] = self.sessions.get(key, 0) + 1
                    continue
                try:
                    entry = known.get((item[0], item[1], item[3]))
                except TypeError:  # an unhashable value: the general path
                    entry = None
                if entry is None:
                    labels = self._labels(item)
                    head = labels[0] == "HEAD"
                else:
                    head = entry[3]
                start = item[4]
                duration = float(item[6] - start)
                ttfb = item[5]
                if ttfb is not None:
                    ttfb = float(ttfb - start)
                request_bytes = int(item[7])
                response_bytes = 0 if head else int(item[8])  # no body for HEAD
                # Everything read: only now change anything.
                if entry is None:
                    entry = self._label_set(item, labels, route_label)
                key3, values, counts, _ = entry
                # Not finite (NaN, inf): no bucket, as the realtime ring keeps none.
                if duration - duration == 0.0:
                    counts[bucket_index(duration * 1000.0)] += 1
                requests[key3] += 1
                values[COUNT] += 1
                values[DURATION_SUM] += duration
                values[BUCKETS_BASE + bisect_left(bounds, duration)] += 1
                if ttfb is not None:
                    values[TTFB_COUNT] += 1
                    values[TTFB_SUM] += ttfb
                    values[ttfb_base + bisect_left(bounds, ttfb)] += 1
                values[REQUEST_BYTES] += request_bytes
                values[RESPONSE_BYTES] += response_bytes
            except Exception:
                continue

    def _route(self, route: Any, route_label: RouteLabel) -> str:
        text = _route_text(route)
        label = route_label(text)
        if label == OVERFLOW_ROUTE and text != OVERFLOW_ROUTE:
            self.route_overflow += 1
        return label

    def _labels(self, item: Any) -> tuple[str, str]:
        """The method and status label values of an item not seen before;
        raises for a status that is no number (nothing changed yet)."""
        method = item[0]
        if method not in STANDARD_METHODS:
            method = OTHER_METHOD
        status = item[3]
        text = self._status_text.get(status) if type(status) is int else None
        if text is None:
            text = str(int(status))
            # Only plain ints as keys: an app's status object must not be kept.
            if type(status) is int and len(self._status_text) < 1000:
                self._status_text[status] = text
        return method, text

    def _label_set(self, item: Any, labels: tuple[str, str], route_label: RouteLabel) -> _Known:
        """The counters of an item's label set, created when new; remembered
        for the fast path when the item's values are plain and its labels
        stay what they are (an overflowed route is counted each time)."""
        method, text = labels
        route = self._route(item[1], route_label)
        key3 = (method, route, text)
        self.requests.setdefault(key3, 0)
        values = self.series.get((method, route))
        if values is None:
            values = self.series[(method, route)] = self._new_series()
        counts = self.latency.get((method, route))
        if counts is None:
            counts = self.latency[(method, route)] = array("Q", bytes(8 * histogram.COUNT))
        entry = (key3, values, counts, method == "HEAD")
        raw = (item[0], item[1], item[3])
        if (
            type(raw[0]) is str and type(raw[1]) is str and type(raw[2]) is int
            and raw[0] == method and route != OVERFLOW_ROUTE and len(self._known) < KNOWN_LIMIT
        ):  # fmt: skip
            self._known[raw] = entry
        return entry


#: Close codes RFC 6455 and the IANA registry define (1004, 1005, 1006 and
#: 1015 are never sent in a frame, but servers report them).
STANDARD_CLOSE_CODES = range(1000, 1016)


def close_code_label(code: Any) -> str:
    """A session's close code as a label value, from a bounded set: the
    standard codes one by one, ``3xxx`` (codes registered for libraries and
    frameworks), ``4xxx`` (private use), ``other`` for anything else (codes
    no peer may send, non-integers) and ``none`` for no code. The stored
    session keeps the code itself."""
    if code is None:
        return "none"
    if type(code) is not int:
        return "other"
    if code in STANDARD_CLOSE_CODES:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "other"


def _route_text(route: Any) -> str:
    """The route as the records store it (cut and repaired as the finalizer
    does), so a label and a stored route, and the exemplars taken from the
    records, agree; a value that is no text (its record is not stored)
    as ``str`` makes it."""
    try:
        return url_field(UNMATCHED_ROUTE if route is None else route, ROUTE_LIMIT)
    except TypeError:
        return str(route)
