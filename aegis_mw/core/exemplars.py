"""Exemplars: a traced request's trace id beside the series it was counted in.

OpenMetrics lets a counter sample and each histogram bucket carry one
exemplar, a sample's link to a trace (``# {trace_id="..."} value
timestamp``). Here each request counter series (method, route, status) and
each bucket of each duration histogram (method, route) keeps the last traced
request taken that landed in it (prometheus-client keeps the latest one
observed), which bounds the scrape's cost by the series (one exemplar a line
at most), never by the traffic. Requests are sampled per route (see
:meth:`Exemplars.take`): the slow buckets, where a trace is most wanted,
keep theirs until a newer slow request replaces it.

They are taken from the finalized records in the flusher (only traced
requests cost anything), so the request path does no work for them.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from .history import is_span_id, is_trace_id
from .record import RequestRecord

#: At most this many (method, route) series keep exemplars (the route cap
#: and the nine methods bound them already), and this many statuses each
#: (an app may send any status).
MAX_SERIES = 10_000
MAX_STATUSES = 100
#: Seconds within which a series takes only its slower requests and new
#: statuses (see :meth:`Exemplars.take`): well under any scrape interval.
WINDOW = 1.0

#: (trace id, span id or None, seconds the request took, when it ended in
#: seconds since the epoch). A bucket's exemplar has the duration as its
#: value; a request counter's is the same request counted once (value 1).
Exemplar = tuple[str, str | None, float, float]
#: Per (method, route): the exemplar of each duration bucket (+Inf last, None
#: while no traced request fell there), and the request counter's by status.
Series = tuple[list[Exemplar | None], dict[int, Exemplar]]


class Exemplars:
    """An exemplar per duration bucket and per request counter series, sampled."""

    __slots__ = ("_windows", "bounds", "series")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[tuple[str, str], Series] = {}
        #: The flusher's sampling state per series: [end of the window, the
        #: slowest duration taken in it (ms), the series' statuses].
        self._windows: dict[tuple[str, str], list[Any]] = {}

    def copy(self) -> Exemplars:
        other = Exemplars(self.bounds)
        other.series = {
            key: (list(buckets), dict(statuses)) for key, (buckets, statuses) in self.series.items()
        }
        return other

    def take(self, records: Iterable[Any]) -> None:
        """Keep the traced requests of ``records`` (in the order they finished):
        their method, route and status are the label values already (the
        finalizer maps them as the totals do).

        Sampled per series: within a :data:`WINDOW` of the first request
        taken, a traced request is taken only when it is slower than every
        one taken in the window, or has a status the series has no exemplar
        of; the others are passed over at the cost of one lookup. So a busy
        route refreshes its exemplars about once a window (a scrape shows the
        latest anyway), while its outliers and its first errors are kept."""
        series, bounds, windows = self.series, self.bounds, self._windows
        width = len(bounds) + 1
        for record in records:
            if type(record) is not RequestRecord or record[12] is None:
                continue  # a WebSocket session counts in no request series
            key = (record[2], record[3])  # method, route
            started, status, duration_ms = record[1], record[5], record[6]
            seconds = duration_ms / 1000.0
            window = windows.get(key)
            inside = False
            if window is not None:
                # Within the window: started before it ends, ended after it
                # began (a long request is inside; a wall clock set back
                # starts a new one).
                inside = window[0] - WINDOW <= started + seconds and started < window[0]
                if inside and duration_ms <= window[1] and status in window[2]:
                    continue
            if seconds - seconds != 0.0:  # not finite: in no bucket, as in the totals
                continue
            exemplar = (record[12], record[13], seconds, started + seconds)
            entry = series.get(key)
            if entry is None:
                if len(series) >= MAX_SERIES:
                    continue
                entry = series[key] = ([None] * width, {})
            buckets, statuses = entry
            buckets[bisect_left(bounds, seconds)] = exemplar
            if status in statuses or len(statuses) < MAX_STATUSES:
                statuses[status] = exemplar
            if window is None or not inside:
                windows[key] = [started + WINDOW, duration_ms, statuses]
            elif duration_ms > window[1]:
                window[1] = duration_ms

    def merge(self, other: Exemplars) -> None:
        """Add another process's: the later of two for the same place wins."""
        width = len(self.bounds) + 1
        for key, (their_buckets, their_statuses) in other.series.items():
            buckets, statuses = self.series.setdefault(key, ([None] * width, {}))
            for index, exemplar in enumerate(their_buckets):
                if exemplar is not None and _later(exemplar, buckets[index]):
                    buckets[index] = exemplar
            for status, exemplar in their_statuses.items():
                if _later(exemplar, statuses.get(status)):
                    statuses[status] = exemplar

    def encode(self) -> dict[str, list[list[Any]]]:
        """JSON-able form for the multi-process snapshot files."""
        return {
            "buckets": [
                [*key, index, *exemplar]
                for key, (buckets, _) in self.series.items()
                for index, exemplar in enumerate(buckets)
                if exemplar is not None
            ],
            "requests": [
                [*key, status, *exemplar]
                for key, (_, statuses) in self.series.items()
                for status, exemplar in statuses.items()
            ],
        }

    @classmethod
    def decode(cls, data: Any, bounds: Sequence[float]) -> Exemplars:
        """What :meth:`encode` wrote; entries that are not well formed (a file
        damaged or written by something else) are left out one by one: an
        exemplar is never worth a failed scrape."""
        exemplars = cls(bounds)
        if not isinstance(data, dict):
            return exemplars
        width = len(exemplars.bounds) + 1
        series = exemplars.series
        for part in ("buckets", "requests"):
            for entry in _entries(data.get(part)):
                method, route, place, *rest = entry
                exemplar = _exemplar(rest)
                if (
                    exemplar is None
                    or type(method) is not str
                    or type(route) is not str
                    or type(place) is not int  # a bucket's index, or a status
                    or (part == "buckets" and not 0 <= place < width)
                ):
                    continue
                if part == "buckets" and bisect_left(exemplars.bounds, exemplar[2]) != place:
                    continue  # a value outside its bucket's range: OpenMetrics forbids it
                buckets, statuses = series.setdefault((method, route), ([None] * width, {}))
                if part == "buckets":
                    buckets[place] = exemplar
                else:
                    statuses[place] = exemplar
        return exemplars


def _later(exemplar: Exemplar, than: Exemplar | None) -> bool:
    return than is None or exemplar[3] > than[3]


def _entries(value: Any) -> list[list[Any]]:
    if not isinstance(value, list):
        return []
    return [entry for entry in value if isinstance(entry, list) and len(entry) == 7]


def _exemplar(values: list[Any]) -> Exemplar | None:
    """An exemplar from (trace id, span id, seconds, timestamp), or None when
    one of them is not what a scrape may show."""
    trace_id, span_id, seconds, timestamp = values
    if not is_trace_id(trace_id) or not (span_id is None or is_span_id(span_id)):
        return None
    if not (finite_number(seconds) and finite_number(timestamp)):
        return None
    return (trace_id, span_id, float(seconds), float(timestamp))


def finite_number(value: Any) -> bool:
    """An int or float that is a finite float (JSON's integers have no bound:
    ``float()`` of a huge one raises)."""
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and abs(value) <= sys.float_info.max
