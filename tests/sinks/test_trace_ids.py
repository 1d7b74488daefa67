"""Trace and span ids in every sink that reads the request log back: stored
as they are (or as none), read back the same, and the ``trace_id`` filter
answering alike on memory, a SQLite file and the real PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aegis_mw import Batch, RequestRecord
from aegis_mw.core.history import RequestQuery, is_trace_id
from aegis_mw.sinks import build_sink
from tests.sinks.test_sqlite import make_request

T0 = 1_700_000_000.0
#: Five traces of a few requests each, over two batches.
TRACES = [f"{number:08x}" * 4 for number in (0x4BF92F35, 0x0AF76519, 1, 2, 0xFFFFFFFF)]


@pytest.fixture
def sink(history_sink_url: str) -> Iterator[Any]:
    """A history sink of each kind, closed after the test."""
    built = build_sink(history_sink_url)
    yield built
    built.close()


def records(seed: int, count: int, prefix: str) -> list[RequestRecord]:
    """``count`` requests over ten minutes, about a third of them in one of
    TRACES, each with its own span; some at the same instant (ties are
    ordered by request id)."""
    chance = random.Random(seed)
    made = []
    for number in range(count):
        record = make_request(
            number,
            prefix=prefix,
            timestamp=T0 + chance.randrange(0, 600) / 2,
            status=chance.choice((200, 200, 404, 500)),
            route=chance.choice(("/a", "/b/{id}")),
        )
        if chance.random() < 0.35:
            record = record._replace(
                trace_id=chance.choice(TRACES), span_id=f"{chance.getrandbits(64) | 1:016x}"
            )
        made.append(record)
    return made


def newest(
    stored: list[RequestRecord], keep: Callable[[RequestRecord], bool]
) -> list[RequestRecord]:
    kept = [record for record in stored if keep(record)]
    return sorted(kept, key=lambda r: (r.timestamp, r.request_id), reverse=True)


def test_traced_and_untraced_requests_read_back_the_same(sink: Any) -> None:
    """Every field, the ids included (None where there was no trace)."""
    written = [*records(1, 150, "a" * 16), *records(2, 7, "b" * 16)]
    sink.write(Batch(requests=written[:150], batch_id="one"))
    sink.write(Batch(requests=written[150:], batch_id="two"))

    stored = sink.read_requests(RequestQuery(limit=1000))
    assert stored == newest(written, lambda r: True)
    assert {type(r.trace_id) for r in stored} == {str, type(None)}
    assert all(is_trace_id(r.trace_id) for r in stored if r.trace_id is not None)
    assert all((r.trace_id is None) == (r.span_id is None) for r in stored)


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"limit": 2},
        {"limit": 3, "offset": 2},
        {"status_from": 500, "status_to": 600},
        {"route": "/b/{id}", "method": "GET"},
        {"since": T0 + 100, "until": T0 + 200},
        {"min_duration_ms": 50.0},
    ],
)
@pytest.mark.parametrize("trace", TRACES)
def test_the_trace_filter_keeps_exactly_that_traces_requests(
    sink: Any, trace: str, filters: dict[str, Any]
) -> None:
    written = [*records(3, 300, "c" * 16), *records(4, 40, "d" * 16)]
    sink.write(Batch(requests=written, batch_id="traced"))
    query = RequestQuery(trace_id=trace, **filters)

    def keep(record: RequestRecord) -> bool:
        until = filters.get("until")
        return (
            record.trace_id == trace
            and record.status >= filters.get("status_from", 0)
            and record.status < filters.get("status_to", 1000)
            and filters.get("route", record.route) == record.route
            and filters.get("method", record.method) == record.method
            and record.timestamp >= filters.get("since", 0.0)
            and (until is None or record.timestamp < until)
            and record.duration_ms >= filters.get("min_duration_ms", 0.0)
        )

    expected = newest(written, keep)
    if not filters:
        assert len(expected) >= 5  # every trace has requests in the data
    offset, limit = filters.get("offset", 0), filters.get("limit", 100)
    assert sink.read_requests(query) == expected[offset : offset + limit]


def test_an_unknown_trace_and_untraced_rows_match_nothing(sink: Any) -> None:
    sink.write(Batch(requests=[make_request(n) for n in range(70)], batch_id="untraced"))
    assert sink.read_requests(RequestQuery(trace_id=TRACES[0])) == []
    assert len(sink.read_requests(RequestQuery(limit=1000))) == 70
