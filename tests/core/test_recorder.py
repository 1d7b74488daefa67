"""The recorder's inbox: its bound, its drop counters, its wake-ups, exact under threads."""

from __future__ import annotations

import threading
from collections.abc import Callable

from aegis_mw import Aegis
from aegis_mw.core.aggregates import RealtimeAggregates
from aegis_mw.core.items import PendingSession
from aegis_mw.core.recorder import DROP_REASONS, Recorder
from tests.core.faulty_sinks import (
    WAIT,
    FaultySink,
    frozen,
    http_item,
    offer_all,
    paths,
    sink_drops,
)

THREADS = 8
PER_THREAD = 5000


def no_drops(**counts: int) -> dict[str, int]:
    return {reason: counts.get(reason, 0) for reason in DROP_REASONS}


def new_recorder(*, max_buffer: int, batch_size: int) -> Recorder:
    return Recorder(aggregates=RealtimeAggregates(), max_buffer=max_buffer, batch_size=batch_size)


def offer_concurrently(
    aegis: Aegis,
    *,
    threads: int = THREADS,
    per_thread: int = PER_THREAD,
    midway: Callable[[], object] | None = None,
) -> set[str]:
    """Offer ``threads * per_thread`` distinct requests from that many threads at once.

    ``midway`` is called by the first thread halfway through its offers.
    """
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def produce(worker: int) -> None:
        try:
            barrier.wait(WAIT)
            offer = aegis.recorder.offer
            for index in range(per_thread):
                if midway is not None and worker == 0 and index == per_thread // 2:
                    midway()
                offer(http_item(f"/t{worker}/{index}"))
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=produce, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(worker.is_alive() for worker in workers)
    assert failures == []
    return {f"/t{worker}/{index}" for worker in range(threads) for index in range(per_thread)}


# -- the recorder alone ------------------------------------------------------


def test_offer_beyond_max_buffer_keeps_the_oldest_and_counts_buffer_full() -> None:
    """A full inbox refuses exactly the excess, counted as buffer_full."""
    recorder = new_recorder(max_buffer=3, batch_size=100)
    items = [http_item(path) for path in paths(5)]
    for item in items:
        recorder.offer(item)
    assert list(recorder.inbox) == items[:3]
    assert recorder.dropped == no_drops(buffer_full=2)


def test_closed_recorder_counts_shutdown_drops_and_reopens() -> None:
    """Closed, every offer is refused as shutdown without raising; reopened, the bound is back."""
    recorder = new_recorder(max_buffer=2, batch_size=100)
    recorder.offer(http_item("/open"))
    recorder.closed = True
    assert recorder.limit == 0
    for path in paths(4):
        recorder.offer(http_item(path))
    assert [item[2] for item in recorder.inbox] == ["/open"]
    assert recorder.dropped == no_drops(shutdown=4)
    recorder.closed = False
    assert recorder.limit == 2
    for path in paths(3, "/again"):
        recorder.offer(http_item(path))
    assert [item[2] for item in recorder.inbox] == ["/open", "/again/0"]
    assert recorder.dropped == no_drops(shutdown=4, buffer_full=2)


def test_offer_wakes_the_flusher_once_a_batch_waits() -> None:
    """The wake lock is released when the batch_size-th item arrives, not before."""
    recorder = new_recorder(max_buffer=100, batch_size=3)
    recorder.offer(http_item("/1"))
    recorder.offer(http_item("/2"))
    assert recorder.wake.locked()
    recorder.offer(http_item("/3"))
    assert not recorder.wake.locked()
    # Further producers find it released already: no RuntimeError, still released.
    recorder.offer(http_item("/4"))
    recorder.wake_flusher()
    assert not recorder.wake.locked()
    # The flusher consumes the wake-up; the next item over the mark wakes it again.
    assert recorder.wake.acquire(timeout=0)
    recorder.offer(http_item("/5"))
    assert not recorder.wake.locked()


def test_drain_takes_the_oldest_first_up_to_the_limit() -> None:
    """drain(limit) pops in arrival order and never more than is there."""
    recorder = new_recorder(max_buffer=10, batch_size=100)
    items = [http_item(path) for path in paths(5)]
    for item in items:
        recorder.offer(item)
    assert recorder.drain(2) == items[:2]
    assert recorder.pending() == items[2:]
    assert recorder.drain(10) == items[2:]
    assert recorder.drain(10) == []


# -- the inbox bound inside a running pipeline -----------------------------------


def test_inbox_overflow_while_the_flusher_sleeps_drops_exactly_the_excess(
    rig: Callable[..., Aegis],
) -> None:
    """B + X offers while the flusher sleeps: X counted buffer_full; the B are stored once."""
    bound, excess = 20, 7
    sink = FaultySink("inbox-bound")
    sink.down = True
    # batch_size > max_buffer and an hour-long interval: no offer wakes the flusher.
    aegis = rig(sink, max_buffer=bound, batch_size=100)
    offered = paths(bound + excess)
    with frozen(aegis):
        offer_all(aegis, offered)
        assert len(aegis.recorder.inbox) == bound
        assert aegis.recorder.dropped == no_drops(buffer_full=excess)

    assert aegis.force_flush(WAIT) is False
    stats = aegis.stats()
    assert stats.sinks[0].backlog == bound
    assert stats.buffered == 0  # moved from the inbox to the sink's backlog
    assert stats.dropped == no_drops(buffer_full=excess)

    sink.heal()
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == offered[:bound]
    assert set(sink.deliveries.values()) == {1}
    stats = aegis.stats()
    assert stats.sinks[0].written == bound
    assert stats.buffered == 0
    assert stats.dropped == no_drops(buffer_full=excess)


def test_sessions_and_requests_travel_together(rig: Callable[..., Aegis]) -> None:
    """A PendingSession offered between requests is stored as a session, once."""
    sink = FaultySink("mixed")
    aegis = rig(sink)
    aegis.recorder.offer(http_item("/before"))
    aegis.recorder.offer(
        PendingSession(1.0, "/ws", "/ws/1", 2.5, 3, 4, 1000, True, ("127.0.0.1", 1), None, "")
    )
    aegis.recorder.offer(http_item("/after"))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == ["/before", "/after"]
    [session] = sink.sessions
    assert (session.path, session.duration_ms, session.messages_in, session.close_code) == (
        "/ws/1",
        1500.0,
        3,
        1000,
    )
    assert sink.batch_sizes == [3]


def test_stats_offered_counts_records_refused_by_a_full_inbox(rig: Callable[..., Aegis]) -> None:
    """stats().offered counts every record produced, the refused ones included."""
    sink = FaultySink("offered")
    aegis = rig(sink, max_buffer=5, batch_size=100)
    with frozen(aegis):
        offer_all(aegis, paths(8))
    assert aegis.force_flush(WAIT) is True
    stats = aegis.stats()
    assert stats.dropped == no_drops(buffer_full=3)
    assert stats.sinks[0].written == 5
    # PipelineStats: every offered record is buffered, written, sampled out or dropped.
    assert stats.offered == 8


# -- exact counts under concurrency ----------------------------------------------


def test_concurrent_offers_are_all_stored_once(rig: Callable[..., Aegis]) -> None:
    """8 threads x 5,000 offers with room for all: every one stored exactly once."""
    sink = FaultySink("threads-roomy")
    aegis = rig(sink, flush_interval=0.05, batch_size=500)
    offered = offer_concurrently(aegis)
    assert aegis.force_flush(WAIT) is True
    stored = sink.paths
    assert len(stored) == THREADS * PER_THREAD
    assert set(stored) == offered
    assert set(sink.deliveries.values()) == {1}
    stats = aegis.stats()
    assert stats.dropped == no_drops()
    assert stats.offered == THREADS * PER_THREAD
    assert stats.sinks[0].written == THREADS * PER_THREAD
    assert stats.buffered == 0


def test_concurrent_offers_with_a_small_buffer_are_stored_or_counted(
    rig: Callable[..., Aegis],
) -> None:
    """8 threads x 5,000 offers into max_buffer=64: stored + dropped == offered exactly."""
    sink = FaultySink("threads-tight")
    aegis = rig(sink, flush_interval=0.05, batch_size=16, max_buffer=64)
    offered = offer_concurrently(aegis)
    assert aegis.force_flush(WAIT) is True
    stored = sink.paths
    assert len(set(stored)) == len(stored)
    assert set(stored) <= offered
    stats = aegis.stats()
    dropped = stats.dropped
    assert dropped["buffer_full"] > 0
    assert dropped["shutdown"] == stats.sinks[0].dropped["shutdown_timeout"] == 0
    assert len(stored) + sum(dropped.values()) == THREADS * PER_THREAD
    assert stats.sinks[0].written == len(stored)
    assert stats.buffered == 0


def test_offers_racing_a_shutdown_are_stored_or_counted(rig: Callable[..., Aegis]) -> None:
    """Shutdown while 8 threads offer: every record is stored or counted, none raises."""
    sink = FaultySink("threads-shutdown")
    aegis = rig(sink, flush_interval=0.05, batch_size=64, max_buffer=1000)
    results: list[bool] = []
    offered = offer_concurrently(aegis, midway=lambda: results.append(aegis.shutdown(WAIT)))
    assert results == [True]
    stored = sink.paths
    assert len(set(stored)) == len(stored)
    assert set(stored) <= offered
    stats = aegis.stats()
    dropped = stats.dropped
    assert dropped["shutdown"] > 0
    assert stats.sinks[0].dropped == sink_drops()
    assert len(stored) + sum(dropped.values()) == THREADS * PER_THREAD
    assert len(aegis.recorder.inbox) == 0
