"""A function as a sink: receives Batch objects on the sink thread, failures retried."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from aegis_mw import Aegis, Batch, RequestRecord, WebSocketSession
from aegis_mw.core.items import PendingSession
from aegis_mw.sinks import CallableSink
from aegis_mw.testing import FakeClock
from tests.harness import inbox_item


def offer_requests(aegis: Aegis, paths: list[str]) -> None:
    for path in paths:
        aegis.recorder.offer(
            inbox_item(
                path,
                route="/r/{n}",
                ttfb=1000.5,
                end=1001.0,
                response_bytes=3,
                client=("127.0.0.1", 1),
            )
        )


class Collector:
    """A callable sink that keeps what it is given and notes where it ran."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[Batch] = []
        self.threads: list[str] = []
        self.failures = failures
        self.closed = 0

    def __call__(self, batch: Batch) -> None:
        self.threads.append(threading.current_thread().name)
        self.batches.append(batch)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("downstream unavailable")

    def close(self) -> None:
        self.closed += 1


def test_callable_receives_batch_objects_on_the_sink_thread(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Each write hands the function a Batch of RequestRecord/WebSocketSession, off the caller."""
    collector = Collector()
    aegis = make_aegis(sink=collector, flush_interval=3600, clock=FakeClock())
    offer_requests(aegis, ["/r/1", "/r/2"])
    aegis.recorder.offer(
        PendingSession(1000.0, "/ws", "/ws", 1002.0, 3, 4, 1000, True, None, None, "")
    )

    assert aegis.force_flush(timeout=10) is True

    [batch] = collector.batches
    assert type(batch) is Batch
    assert [type(r) for r in batch.requests] == [RequestRecord, RequestRecord]
    assert [r.path for r in batch.requests] == ["/r/1", "/r/2"]
    assert [type(s) for s in batch.sessions] == [WebSocketSession]
    assert (batch.sessions[0].messages_in, batch.sessions[0].messages_out) == (3, 4)
    assert len(batch) == 3
    [sink] = aegis.sinks
    assert isinstance(sink, CallableSink)
    assert sink.name == "callable:Collector"
    assert collector.threads == [f"aegis-sink-{sink.name}"]


def test_function_name_is_its_qualified_name() -> None:
    """A plain function's sink is named after its ``__qualname__``; a missing close is fine."""

    def ship(batch: Batch) -> None:
        return None

    sink = CallableSink(ship)
    assert sink.name == "callable:test_function_name_is_its_qualified_name.<locals>.ship"
    sink.close()


def test_exception_is_a_counted_sink_error_and_retried(make_aegis: Callable[..., Aegis]) -> None:
    """A raising callable leaves the records backlogged; the next flush delivers the same ones."""
    collector = Collector(failures=2)
    aegis = make_aegis(sink=collector, flush_interval=3600, clock=FakeClock())
    offer_requests(aegis, ["/r/1", "/r/2", "/r/3"])

    assert aegis.force_flush(timeout=10) is False
    [stats] = aegis.stats().sinks
    assert (stats.written, stats.errors, stats.consecutive_failures, stats.backlog) == (0, 1, 1, 3)
    assert stats.last_error == "RuntimeError: downstream unavailable"
    assert stats.timeouts == 0

    assert aegis.force_flush(timeout=10) is False
    [stats] = aegis.stats().sinks
    assert (stats.written, stats.errors, stats.consecutive_failures, stats.backlog) == (0, 2, 2, 3)

    assert aegis.force_flush(timeout=10) is True
    [stats] = aegis.stats().sinks
    assert (stats.written, stats.errors, stats.consecutive_failures, stats.backlog) == (3, 2, 0, 0)
    assert aegis.stats().dropped == {
        "buffer_full": 0,
        "shutdown": 0,
        "invalid": 0,
        "internal_error": 0,
    }
    # The same records, same ids, every time.
    attempts = [[r.request_id for r in batch.requests] for batch in collector.batches]
    assert len(attempts) == 3
    assert attempts[0] == attempts[1] == attempts[2]
    assert len(set(attempts[0])) == 3


def test_close_is_forwarded_once_on_shutdown(make_aegis: Callable[..., Aegis]) -> None:
    """Shutdown writes what is left and then calls the callable's own ``close``."""
    collector = Collector()
    aegis = make_aegis(sink=collector, flush_interval=3600, clock=FakeClock())
    offer_requests(aegis, ["/r/1"])
    assert collector.closed == 0

    assert aegis.shutdown(timeout=10) is True
    assert aegis.shutdown(timeout=10) is True

    assert collector.closed == 1
    assert [[r.path for r in b.requests] for b in collector.batches] == [["/r/1"]]


def test_records_offered_after_shutdown_are_counted_not_delivered(
    make_aegis: Callable[..., Aegis],
) -> None:
    """After shutdown the callable is not called again; late records count as ``shutdown``."""
    calls: list[Any] = []
    aegis = make_aegis(sink=calls.append, flush_interval=3600, clock=FakeClock())
    assert aegis.shutdown(timeout=10) is True

    offer_requests(aegis, ["/late"])

    assert calls == []
    assert aegis.stats().dropped["shutdown"] == 1
