"""The history queries: one Python API behind the JSON API and the CLI.

Every query reads rollups (never the request log, except :meth:`requests`),
so its cost depends on the range and the number of routes, not on traffic.
Answers are plain JSON-ready dicts; times are ISO 8601 UTC, durations in
milliseconds. ``failed`` counts server errors (5xx, or the app raised), as
the realtime figures do; ``client_errors`` counts 4xx.

Example::

    queries = HistoryQueries(SQLiteSink("aegis.db"))
    queries.overview("24h")["latency_ms"]["p95"]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ..core import histogram
from ..core.history import HistorySource, RequestQuery, is_trace_id
from ..core.record import isoformat
from ..core.rollup import RollupRow, add_dense
from .ranges import DEFAULT_HORIZONS, QueryError, TimeRange, resolve

SORTS = ("count", "p95", "errors")
Time = str | float | datetime | None


class Totals:
    """Rollup rows added together."""

    __slots__ = (
        "classes", "duration_max", "duration_min", "duration_sum", "errors", "histogram",
        "rate_limited", "request_bytes", "requests", "response_bytes",
    )  # fmt: skip

    def __init__(self) -> None:
        self.requests = self.errors = self.rate_limited = 0
        self.request_bytes = self.response_bytes = 0
        self.duration_sum = 0.0
        self.duration_min = float("inf")
        self.duration_max = 0.0
        self.classes = [0] * 6  # index = status class
        self.histogram: list[int] = []  # by bucket index, allocated on the first add

    def add(self, row: RollupRow) -> None:
        self.requests += row.requests
        self.errors += row.errors
        self.rate_limited += row.rate_limited
        self.request_bytes += row.request_bytes
        self.response_bytes += row.response_bytes
        self.duration_sum += row.duration_sum
        self.duration_min = min(self.duration_min, row.duration_min)
        self.duration_max = max(self.duration_max, row.duration_max)
        self.classes[row.status_class] += row.requests
        if row.histogram:
            if not self.histogram:
                self.histogram = [0] * histogram.COUNT
            add_dense(self.histogram, row.histogram)

    def successful(self, errors_below_400: int) -> int:
        """1xx-3xx responses whose app did not raise."""
        return sum(self.classes[1:4]) - errors_below_400

    def latency(self) -> dict[str, float | None]:
        if not self.requests:
            return dict.fromkeys(("avg", "p50", "p95", "p99", "min", "max"))
        p50, p95, p99 = _percentiles(self.histogram, self.duration_min, self.duration_max)
        return {
            "avg": _ms(self.duration_sum / self.requests),
            "p50": p50,
            "p95": p95,
            "p99": p99,
            "min": _ms(self.duration_min),
            "max": _ms(self.duration_max),
        }


def _ms(value: float) -> float:
    return round(value, 3)


def _percentiles(counts: list[int], lowest: float, highest: float) -> list[float | None]:
    # Within the rows' own min and max: a bucket midpoint may lie past both.
    quantiles = histogram.percentiles(counts, (0.5, 0.95, 0.99), lowest=lowest, highest=highest)
    return [None if v is None else _ms(v) for v in quantiles]


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 3) if seconds > 0 else 0.0


class HistoryQueries:
    """Overview, series, top endpoints and the request log of one source.

    ``horizons`` says how long each rollup resolution is kept (see
    :func:`.ranges.horizons`), so old ranges are read at resolutions that
    still exist. Methods raise :class:`QueryError` for bad input.
    """

    def __init__(
        self,
        source: HistorySource,
        *,
        clock: Callable[[], float] = time.time,
        horizons: Mapping[int, float] = DEFAULT_HORIZONS,
    ) -> None:
        self.source = source
        self.clock = clock
        self.horizons = dict(horizons)

    # -- ranges ------------------------------------------------------------------
    def window(self, range: str | None = None, since: Time = None, until: Time = None) -> TimeRange:
        return resolve(range, since, until, now=self.clock(), kept=self.horizons)

    def _rows(self, window: TimeRange, *, by_route: bool, coarse: bool = False) -> list[RollupRow]:
        rows: list[RollupRow] = []
        for level, start, end in window.coarse_segments() if coarse else window.segments():
            rows.extend(self.source.read_rollups(level, start, end, by_route=by_route))
        return rows

    @staticmethod
    def _describe(window: TimeRange) -> dict[str, Any]:
        return {
            "from": isoformat(window.start),
            "to": isoformat(window.end),
            "step_seconds": window.step,
        }

    # -- queries ------------------------------------------------------------------
    def overview(
        self, range: str | None = None, since: Time = None, until: Time = None
    ) -> dict[str, Any]:
        """Totals, rates and latency over the range."""
        window = self.window(range, since, until)
        totals = Totals()
        errors_below_400 = 0
        for row in self._rows(window, by_route=False, coarse=True):
            totals.add(row)
            if row.status_class < 4:
                errors_below_400 += row.errors
        return {
            "range": self._describe(window),
            "total": totals.requests,
            "successful": totals.successful(errors_below_400),
            "failed": totals.errors,
            "client_errors": totals.classes[4],
            "error_rate": round(totals.errors / totals.requests, 6) if totals.requests else 0.0,
            "requests_per_second": _rate(totals.requests, window.until - window.start),
            "rate_limited": totals.rate_limited,
            "latency_ms": totals.latency(),
            "status": _classes(totals),
            "request_bytes": totals.request_bytes,
            "response_bytes": totals.response_bytes,
        }

    def _series(self, window: TimeRange) -> list[Totals]:
        points = [Totals() for _ in range(window.points)]
        for row in self._rows(window, by_route=False):
            points[(row.bucket - window.start) // window.step].add(row)
        return points

    def _timestamps(self, window: TimeRange) -> Iterable[str]:
        return (isoformat(window.start + i * window.step) for i in range(window.points))

    def request_rate(
        self, range: str | None = None, since: Time = None, until: Time = None
    ) -> dict[str, Any]:
        """Requests, errors and requests per second per step."""
        window = self.window(range, since, until)
        series = self._series(window)
        return {
            "range": self._describe(window),
            "points": [
                {
                    "timestamp": stamp,
                    "requests": point.requests,
                    "errors": point.errors,
                    "requests_per_second": _rate(point.requests, window.step),
                }
                for stamp, point in zip(self._timestamps(window), series, strict=True)
            ],
        }

    def latency(
        self, range: str | None = None, since: Time = None, until: Time = None
    ) -> dict[str, Any]:
        """Average, p50, p95 and p99 latency per step (null where no requests)."""
        window = self.window(range, since, until)
        points = []
        for stamp, point in zip(self._timestamps(window), self._series(window), strict=True):
            latency = point.latency()
            points.append(
                {
                    "timestamp": stamp,
                    "requests": point.requests,
                    **{key: latency[key] for key in ("avg", "p50", "p95", "p99")},
                }
            )
        return {"range": self._describe(window), "points": points}

    def status_distribution(
        self, range: str | None = None, since: Time = None, until: Time = None
    ) -> dict[str, Any]:
        """Requests per status class per step."""
        window = self.window(range, since, until)
        return {
            "range": self._describe(window),
            "points": [
                {"timestamp": stamp, **_classes(point)}
                for stamp, point in zip(self._timestamps(window), self._series(window), strict=True)
            ],
        }

    def top_endpoints(
        self,
        range: str | None = None,
        since: Time = None,
        until: Time = None,
        *,
        limit: int = 10,
        sort: str = "count",
    ) -> dict[str, Any]:
        """Routes by request count, p95 latency or errors (highest first)."""
        if sort not in SORTS:
            raise QueryError("sort", f"sort must be one of {', '.join(SORTS)}")
        _check_limit(limit)
        window = self.window(range, since, until)
        by_route: dict[tuple[str, str], Totals] = {}
        for row in self._rows(window, by_route=True, coarse=True):
            key = (row.route, row.method)
            totals = by_route.get(key)
            if totals is None:
                totals = by_route[key] = Totals()
            totals.add(row)
        seconds = window.until - window.start
        endpoints = []
        for (route, method), totals in by_route.items():
            latency = totals.latency()
            endpoints.append(
                {
                    "route": route,
                    "method": method,
                    "requests": totals.requests,
                    "errors": totals.errors,
                    "error_rate": round(totals.errors / totals.requests, 6),
                    "requests_per_second": _rate(totals.requests, seconds),
                    "latency_ms": {k: latency[k] for k in ("avg", "p50", "p95", "p99", "max")},
                }
            )
        order: Callable[[dict[str, Any]], Any] = {
            "count": lambda e: -e["requests"],
            "errors": lambda e: -e["errors"],
            "p95": lambda e: -(e["latency_ms"]["p95"] or 0.0),
        }[sort]
        endpoints.sort(key=lambda e: (order(e), e["route"], e["method"]))
        return {"range": self._describe(window), "sort": sort, "endpoints": endpoints[:limit]}

    def requests(self, query: RequestQuery | None = None, **filters: Any) -> dict[str, Any]:
        """Stored requests matching the filters, newest first (see
        :class:`RequestQuery`); with sampling, only those the log kept."""
        if query is None:
            query = RequestQuery(**filters)
        elif filters:
            raise TypeError("pass a RequestQuery or filters, not both")
        _check_limit(query.limit)
        if query.offset < 0:
            raise QueryError("offset", "offset must be 0 or more")
        if query.trace_id is not None and not is_trace_id(query.trace_id):
            # An uppercase or short id would match nothing, silently.
            raise QueryError("trace_id", "trace_id must be 32 lowercase hex digits, not all zeros")
        records = self.source.read_requests(query)
        return {
            "limit": query.limit,
            "offset": query.offset,
            "requests": [record.to_json() for record in records],
        }


def _classes(totals: Totals) -> dict[str, int]:
    return {f"{klass}xx": totals.classes[klass] for klass in range(1, 6)}


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise QueryError("limit", "limit must be an integer from 1 to 1000")
