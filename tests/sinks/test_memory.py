"""The memory sink: once per id, in arrival order, closed by the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aegis_mw import Aegis, Batch, RequestRecord, WebSocketSession, testing
from aegis_mw.sinks import MemorySink
from aegis_mw.testing import FakeClock, recorded, recorded_sessions
from tests.harness import inbox_item


def make_request(number: int, **changes: Any) -> RequestRecord:
    """A well-formed record with a distinct id."""
    record = RequestRecord(
        f"{'a' * 16}{number:016x}", 1_700_000_000.0, "GET", "/r/{n}", f"/r/{number}", 200,
        2.0, 1.0, 0, 5, "127.0.0.1", "",
    )  # fmt: skip
    return record._replace(**changes)


def make_session(number: int, **changes: Any) -> WebSocketSession:
    """A well-formed WebSocket session with a distinct id."""
    session = WebSocketSession(
        f"{'b' * 16}{number:016x}", 1_700_000_000.0, "/ws", f"/ws/{number}", 10.0, 1, 1,
        1000, True, None, "",
    )  # fmt: skip
    return session._replace(**changes)


def test_dedupes_by_id_keeping_the_first_copy_in_arrival_order() -> None:
    """A repeated id is ignored (the first copy stays); new ids are appended in order."""
    sink = MemorySink()
    sink.write(Batch(requests=[make_request(2), make_request(1)], sessions=[make_session(1)]))
    sink.write(Batch(requests=[make_request(2), make_request(1)], sessions=[make_session(1)]))
    sink.write(
        Batch(
            requests=[make_request(1, status=500), make_request(3)],
            sessions=[make_session(1, close_code=1011), make_session(2)],
        )
    )

    assert sink.requests == [make_request(2), make_request(1), make_request(3)]
    assert sink.sessions == [make_session(1), make_session(2)]
    assert sink.batches == 3


def test_views_are_copies_and_clear_empties() -> None:
    """``requests``/``sessions`` are snapshots; ``clear`` forgets ids so they can come again."""
    sink = MemorySink()
    sink.write(Batch(requests=[make_request(1)], sessions=[make_session(1)]))
    view = sink.requests
    view.append(make_request(99))
    assert sink.requests == [make_request(1)]

    sink.clear()
    assert (sink.requests, sink.sessions) == ([], [])
    sink.write(Batch(requests=[make_request(1)]))
    assert sink.requests == [make_request(1)]


def test_testing_module_exports_the_same_sink() -> None:
    """``aegis_mw.testing.MemorySink`` is the sink ``memory://`` builds."""
    assert testing.MemorySink is MemorySink


def test_pipeline_stores_each_record_once_and_closes_the_sink(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Through Aegis, records arrive once across flushes and shutdown closes the sink."""
    aegis = make_aegis(sink="memory://", flush_interval=3600, clock=FakeClock())
    [sink] = aegis.sinks
    assert isinstance(sink, MemorySink)
    assert sink.name == "memory"
    for number in range(3):
        aegis.recorder.offer(
            inbox_item(
                f"/r/{number}",
                route="/r/{n}",
                ttfb=1000.5,
                end=1001.0,
                request_bytes=1,
                response_bytes=2,
            )
        )
    first = recorded(aegis)
    aegis.recorder.offer(inbox_item("/r/3", route="/r/{n}", status=404, ttfb=None, end=1000.0))
    second = recorded(aegis)

    assert [r.path for r in first] == ["/r/0", "/r/1", "/r/2"]
    assert second[:3] == first
    assert [(r.path, r.status, r.ttfb_ms) for r in second[3:]] == [("/r/3", 404, None)]
    assert len({r.request_id for r in second}) == 4
    assert recorded_sessions(aegis) == []
    assert sink.closed is False

    assert aegis.shutdown(timeout=10) is True
    assert sink.closed is True
    assert aegis.stats().sinks[0].written == 4


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"


def test_trace_and_span_ids_are_kept_and_filter_the_request_log() -> None:
    """Traced and untraced records and sessions are kept as they are; the
    request log's ``trace_id`` filter keeps one trace's requests exactly,
    newest first, with the other filters too."""
    from aegis_mw.core.history import RequestQuery

    sink = MemorySink()
    requests = [
        make_request(1, timestamp=1.0, trace_id=TRACE, span_id="00f067aa0ba902b7"),
        make_request(2, timestamp=2.0),
        make_request(3, timestamp=3.0, trace_id=OTHER_TRACE, span_id="b7ad6b7169203331"),
        make_request(4, timestamp=4.0, trace_id=TRACE, span_id="00000000000000aa", status=503),
        make_request(5, timestamp=5.0, trace_id=TRACE.upper(), span_id="00000000000000bb"),
    ]
    sessions = [make_session(1), make_session(2, trace_id=TRACE, span_id="00000000000000cc")]
    sink.write(Batch(requests=requests, sessions=sessions))

    assert sink.requests == requests
    assert sink.sessions == sessions
    assert [s.trace_id for s in sink.sessions] == [None, TRACE]
    assert sink.read_requests(RequestQuery(trace_id=TRACE)) == [requests[3], requests[0]]
    assert sink.read_requests(RequestQuery(trace_id=TRACE, status_from=500)) == [requests[3]]
    assert sink.read_requests(RequestQuery(trace_id=TRACE, limit=1, offset=1)) == [requests[0]]
    assert sink.read_requests(RequestQuery(trace_id=OTHER_TRACE)) == [requests[2]]
    assert sink.read_requests(RequestQuery(trace_id="f" * 32)) == []
    assert len(sink.read_requests(RequestQuery())) == 5  # no filter: traced or not
