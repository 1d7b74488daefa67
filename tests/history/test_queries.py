"""The history queries, run alike on memory, SQLite and the real PostgreSQL.

Every figure is checked against the records themselves: counts exactly,
averages to the microsecond, percentiles within the histogram's 2%.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.core.history import HistorySource, RequestQuery
from aegis_mw.core.record import RequestRecord
from aegis_mw.history import HistoryQueries, QueryError
from aegis_mw.sinks import MemorySink, SQLiteSink, build_sink

from .dataset import (
    NOW,
    batches,
    exact_percentile,
    expected_overview,
    make_records,
    open_sink,
    trace_of,
)

RECORDS = make_records()


def _fill(sink: Any) -> Any:
    for batch in batches(RECORDS):
        sink.write(batch)
    return sink


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HistorySource]:
    sink = open_sink(request.param, request, tmp_path)
    yield _fill(sink)
    sink.close()


@pytest.fixture
def queries(source: HistorySource) -> HistoryQueries:
    return HistoryQueries(source, clock=lambda: NOW)


def _inside(window_from: float, window_to: float) -> list[RequestRecord]:
    return [r for r in RECORDS if window_from <= r.timestamp < window_to]


def _bounds(answer: dict[str, Any]) -> tuple[float, float]:
    from aegis_mw.history.ranges import parse_time

    return parse_time("from", answer["range"]["from"]), parse_time("to", answer["range"]["to"])


@pytest.mark.parametrize("name", ["5m", "15m", "1h", "6h", "24h"])
def test_overview_matches_the_records(queries: HistoryQueries, name: str) -> None:
    answer = queries.overview(name)
    inside = _inside(*_bounds(answer))
    assert inside, "the dataset covers every range tested"
    for key, value in expected_overview(inside).items():
        assert answer[key] == value, key
    durations = [r.duration_ms for r in inside]
    latency = answer["latency_ms"]
    assert latency["avg"] == pytest.approx(sum(durations) / len(durations), abs=1e-3)
    assert latency["min"] == pytest.approx(min(durations), abs=1e-3)
    assert latency["max"] == pytest.approx(max(durations), abs=1e-3)
    for key, quantile in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        exact = exact_percentile(durations, quantile)
        assert abs(latency[key] - exact) / exact <= 0.02, key
    assert answer["error_rate"] == round(answer["failed"] / answer["total"], 6)
    start, _ = _bounds(answer)
    assert answer["requests_per_second"] == round(len(inside) / (NOW - start), 3)


def test_an_empty_range_is_all_zero(queries: HistoryQueries) -> None:
    answer = queries.overview(None, NOW + 86_400, NOW + 90_000)
    assert answer["total"] == 0 and answer["error_rate"] == 0.0
    assert answer["latency_ms"] == dict.fromkeys(("avg", "p50", "p95", "p99", "min", "max"))


@pytest.mark.parametrize("name", ["15m", "1h", "6h"])
def test_series_are_zero_filled_and_add_up(queries: HistoryQueries, name: str) -> None:
    rate = queries.request_rate(name)
    start, end = _bounds(rate)
    step = rate["range"]["step_seconds"]
    points = rate["points"]
    assert len(points) == -(-(end - start) // step)
    per_point = Counter(int((r.timestamp - start) // step) for r in _inside(start, end))
    assert [p["requests"] for p in points] == [per_point.get(i, 0) for i in range(len(points))]
    assert all(p["requests_per_second"] == round(p["requests"] / step, 3) for p in points)

    statuses = queries.status_distribution(name)["points"]
    assert [sum(p[f"{n}xx"] for n in range(1, 6)) for p in statuses] == [
        p["requests"] for p in points
    ]
    latency = queries.latency(name)["points"]
    for point in latency:
        if point["requests"] == 0:
            assert point["p95"] is None and point["avg"] is None
        else:
            assert point["p50"] <= point["p95"] <= point["p99"]


def test_latency_points_match_exact_percentiles(queries: HistoryQueries) -> None:
    answer = queries.latency("6h")
    start, _ = _bounds(answer)
    step = answer["range"]["step_seconds"]
    for index, point in enumerate(answer["points"]):
        durations = [
            r.duration_ms for r in _inside(start + index * step, start + (index + 1) * step)
        ]
        assert point["requests"] == len(durations)
        if durations:
            exact = exact_percentile(durations, 0.95)
            assert abs(point["p95"] - exact) / exact <= 0.02


@pytest.mark.parametrize("sort", ["count", "p95", "errors"])
def test_top_endpoints(queries: HistoryQueries, sort: str) -> None:
    answer = queries.top_endpoints("6h", limit=5, sort=sort)
    inside = _inside(*_bounds(answer))
    groups: dict[tuple[str, str], list[RequestRecord]] = {}
    for record in inside:
        groups.setdefault((record.route, record.method), []).append(record)
    assert len(answer["endpoints"]) == 5
    for endpoint in answer["endpoints"]:
        group = groups[(endpoint["route"], endpoint["method"])]
        assert endpoint["requests"] == len(group)
        assert endpoint["errors"] == sum(1 for r in group if r.status >= 500 or r.error)
    key = {"count": "requests", "errors": "errors"}.get(sort)
    values = [e[key] if key else e["latency_ms"]["p95"] for e in answer["endpoints"]]
    assert values == sorted(values, reverse=True)
    if key:  # exact counts: the top five are the five largest
        everything = sorted(
            (sum(1 for r in g if r.status >= 500 or r.error) if sort == "errors" else len(g))
            for g in groups.values()
        )
        assert values == everything[::-1][:5]


def test_requests_log_filters(queries: HistoryQueries) -> None:
    def ids(**filters: Any) -> list[str]:
        return [r["request_id"] for r in queries.requests(**filters)["requests"]]

    newest = sorted(RECORDS, key=lambda r: (r.timestamp, r.request_id), reverse=True)
    assert ids(limit=7) == [r.request_id for r in newest[:7]]
    assert ids(limit=5, offset=3) == [r.request_id for r in newest[3:8]]
    slow = [r.request_id for r in newest if r.route == "/search" and r.duration_ms >= 50]
    assert ids(route="/search", min_duration_ms=50.0, limit=1000) == slow
    server_errors = [r.request_id for r in newest if 500 <= r.status < 600 and r.method == "GET"]
    assert ids(status_from=500, status_to=600, method="GET", limit=1000) == server_errors
    since, until = NOW - 600, NOW - 300
    window = [r.request_id for r in newest if since <= r.timestamp < until]
    assert ids(since=since, until=until, limit=1000) == window
    record = queries.requests(limit=1)["requests"][0]
    assert record == newest[0].to_json()
    # One trace's requests (an exact match), alone and with other filters.
    trace = trace_of(5 * 7)
    in_trace = [r.request_id for r in newest if r.trace_id == trace]
    assert len(in_trace) >= 5
    assert ids(trace_id=trace, limit=1000) == in_trace
    assert ids(trace_id=trace, limit=3, offset=1) == in_trace[1:4]
    assert ids(trace_id=trace, method="GET", limit=1000) == [
        r.request_id for r in newest if r.trace_id == trace and r.method == "GET"
    ]
    assert ids(trace_id="f" * 32) == []
    traced = queries.requests(trace_id=trace, limit=1)["requests"][0]
    assert (traced["trace_id"], len(traced["span_id"])) == (trace, 16)


def test_bad_input_raises_query_errors(queries: HistoryQueries) -> None:
    with pytest.raises(QueryError) as caught:
        queries.top_endpoints("1h", sort="slowest")
    assert caught.value.parameter == "sort"
    for limit in (0, 1001):
        with pytest.raises(QueryError) as caught:
            queries.requests(RequestQuery(limit=limit))
        assert caught.value.parameter == "limit"
    for trace_id in ("F" * 32, "f" * 31, "0" * 32, 7):
        with pytest.raises(QueryError) as caught:
            queries.requests(trace_id=trace_id)
        assert caught.value.parameter == "trace_id"


ANSWERS = [
    ("overview", ("1h",)),
    ("overview", ("24h",)),
    ("request_rate", ("6h",)),
    ("latency", ("1h",)),
    ("status_distribution", ("15m",)),
    ("top_endpoints", ("24h",)),
]


def _answers(queries: HistoryQueries) -> list[Any]:
    found: list[Any] = [getattr(queries, name)(*args) for name, args in ANSWERS]
    found.append(queries.requests(limit=50, route="/items/{id}"))
    found.append(queries.requests(limit=1000, trace_id=trace_of(5 * 11)))
    return found


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_every_backend_answers_exactly_as_memory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    memory = _fill(MemorySink())
    if backend == "sqlite":
        other: Any = _fill(SQLiteSink(str(tmp_path / "aegis.db")))
    else:
        other = _fill(build_sink(request.getfixturevalue("postgres_url")))
    try:
        expected = _answers(HistoryQueries(memory, clock=lambda: NOW))
        assert _answers(HistoryQueries(other, clock=lambda: NOW)) == expected
    finally:
        other.close()


def test_a_batch_written_twice_counts_once(source: HistorySource) -> None:
    """Every batch again, same ids (a retry after a write that did commit)."""
    _fill(source)
    answer = HistoryQueries(source, clock=lambda: NOW).overview("24h")
    assert answer["total"] == len(_inside(*_bounds(answer)))


def _at_bucket_edges() -> tuple[float, float]:
    """A duration just above the lower edge of its histogram bucket (the bucket's
    reported midpoint is ~2% higher) and one just below the upper edge of the
    next bucket (its midpoint is ~2% lower)."""
    from aegis_mw.core.histogram import GROWTH, bucket_index, bucket_value

    index = bucket_index(10.0)
    low = bucket_value(index) / GROWTH**0.5 * 1.001
    high = bucket_value(index + 1) * GROWTH**0.5 * 0.999
    assert bucket_index(low) == index and bucket_value(index) > low
    assert bucket_index(high) == index + 1 and bucket_value(index + 1) < high
    return low, high


def test_percentiles_stay_within_the_observed_min_and_max(tmp_path: Path) -> None:
    """Percentiles read from buckets are clamped to the group's min and max: a
    route whose every request took d reports d, never a bucket midpoint past it."""
    low, high = _at_bucket_edges()
    records = [
        RequestRecord(
            request_id=f"{number:016x}", timestamp=NOW - 60 - number, method="GET",
            route=route, path=route, status=200, duration_ms=duration, ttfb_ms=None,
            request_bytes=0, response_bytes=0, client_ip=None, error="",
        )
        for number, (route, duration) in enumerate([("/low", low), ("/high", high)] * 50)
    ]  # fmt: skip
    sink = SQLiteSink(str(tmp_path / "aegis.db"))
    for batch in batches(records):
        sink.write(batch)
    queries = HistoryQueries(sink, clock=lambda: NOW)
    top = {e["route"]: e["latency_ms"] for e in queries.top_endpoints("1h")["endpoints"]}
    for route, duration in (("/low", low), ("/high", high)):
        latency = top[route]
        assert latency["max"] == round(duration, 3)
        assert latency["p50"] == latency["p95"] == latency["p99"] == latency["max"]
    overview = queries.overview("1h")["latency_ms"]
    assert overview["p50"] >= overview["min"] == round(low, 3)
    assert overview["p99"] <= overview["max"] == round(high, 3)
    for point in queries.latency("1h")["points"]:
        if point["requests"]:
            assert round(low, 3) <= point["p50"] <= point["p99"] <= round(high, 3)
    sink.close()
