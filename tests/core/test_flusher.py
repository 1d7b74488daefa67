"""Fault injection into the flusher: sinks that fail, lose acks, hang, and pipelines that stop."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import aegis_mw.core.flush_cycle as flush_cycle_module
import aegis_mw.core.sink_runner as sink_runner_module
from aegis_mw import Aegis
from aegis_mw.core.record import Batch
from aegis_mw.core.recorder import DROP_REASONS
from aegis_mw.core.stats import PipelineStats
from aegis_mw.sinks.sqlite import SQLiteSink
from tests.core.conftest import QUIET
from tests.core.faulty_sinks import (
    WAIT,
    FaultySink,
    SinkDown,
    frozen,
    http_item,
    offer_all,
    paths,
    sink_stats,
    sink_threads,
    wait_in_flight,
)

#: Nothing happens in the background: the flusher waits for force_flush,


def drops(**counts: int) -> dict[str, int]:
    """Inbox-level drop counts (PipelineStats.dropped)."""
    return {reason: counts.get(reason, 0) for reason in DROP_REASONS}


def sink_drops(**counts: int) -> dict[str, int]:
    """One sink's drop counts (SinkStats.dropped)."""
    return {reason: counts.get(reason, 0) for reason in ("backlog_full", "shutdown_timeout")}


def accounted(stats: PipelineStats, sink: int = 0) -> int:
    """Every offered item once, by PipelineStats' per-sink conservation law."""
    entry = stats.sinks[sink]
    return (
        stats.buffered + sum(stats.dropped.values()) + stats.sampled_out
        + entry.written + entry.backlog + sum(entry.dropped.values())
    )  # fmt: skip


def drop_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "aegis_mw.flusher" and record.getMessage().startswith("aegis dropped")
    ]


def sqlite_paths(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT path FROM aegis_requests ORDER BY path").fetchall()
    finally:
        connection.close()
    return [row[0] for row in rows]


# -- 1. overflow of a sink's backlog ---------------------------------------------


def test_backlog_overflow_drops_exactly_the_excess(rig: Callable[..., Aegis]) -> None:
    """Sink down, max_buffer=B: B kept, X counted backlog_full; once up, exactly the B stored."""
    bound, excess = 20, 7
    sink = FaultySink("backlog-bound")
    sink.down = True
    aegis = rig(sink, max_buffer=bound, batch_size=100)
    kept, extra = paths(bound, "/kept"), paths(excess, "/extra")
    offer_all(aegis, kept)
    assert aegis.force_flush(WAIT) is False
    offer_all(aegis, extra)
    assert aegis.force_flush(WAIT) is False
    stats = aegis.stats()
    assert stats.sinks[0].backlog == bound
    assert (stats.dropped, stats.sinks[0].dropped) == (drops(), sink_drops(backlog_full=excess))
    assert accounted(stats) == stats.offered == bound + excess
    assert sink.paths == []

    sink.heal()
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == kept
    assert set(sink.deliveries.values()) == {1}
    stats = aegis.stats()
    assert stats.sinks[0].written == bound
    assert stats.sinks[0].backlog == 0
    assert (stats.dropped, stats.sinks[0].dropped) == (drops(), sink_drops(backlog_full=excess))
    assert accounted(stats) == stats.offered == bound + excess


# -- 2. down, then up ------------------------------------------------------------


def test_sink_down_then_up_stores_every_record_once(rig: Callable[..., Aegis]) -> None:
    """While down force_flush fails and stats say why; once up every record is stored once."""
    sink = FaultySink("down-up")
    sink.down = True
    aegis = rig(sink, batch_size=10)
    offered = paths(25)
    # As the middleware appends: in one go, without waking the flusher.
    aegis.recorder.inbox.extend(http_item(path) for path in offered)

    assert aegis.force_flush(WAIT) is False
    stats = aegis.stats()
    [entry] = stats.sinks
    assert (entry.errors, entry.consecutive_failures, entry.timeouts) == (1, 1, 0)
    assert (entry.backlog, entry.written) == (25, 0)
    assert entry.last_error == "SinkDown: sink down"
    assert stats.buffered == 0  # out of the inbox, into the sink's backlog
    assert stats.flusher_alive is True

    assert aegis.force_flush(WAIT) is False
    entry = sink_stats(aegis, "down-up")
    assert (entry.errors, entry.consecutive_failures) == (2, 2)
    assert len(sink.attempts) == 2

    sink.heal()
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == offered
    assert set(sink.deliveries.values()) == {1}
    assert sink.batch_sizes == [10, 10, 5]
    stats = aegis.stats()
    [entry] = stats.sinks
    assert (entry.errors, entry.consecutive_failures, entry.backlog, entry.written) == (2, 0, 0, 25)
    assert stats.buffered == 0
    assert stats.dropped == drops()


# -- 3. committed, but the acknowledgement was lost ---------------------------------


def test_lost_acknowledgement_is_retried_and_stored_once(rig: Callable[..., Aegis]) -> None:
    """A write that stored and then raised is sent again; each record is kept once."""
    sink = FaultySink("lost-ack")
    sink.lose_acks = 1
    aegis = rig(sink)
    offered = paths(6)
    offer_all(aegis, offered)
    assert aegis.force_flush(WAIT) is False
    assert sink.paths == offered
    entry = sink_stats(aegis, "lost-ack")
    assert (entry.errors, entry.backlog, entry.written) == (1, 6, 0)

    assert aegis.force_flush(WAIT) is True
    assert sink.paths == offered
    assert sorted(sink.deliveries.values()) == [2] * 6
    entry = sink_stats(aegis, "lost-ack")
    assert (entry.errors, entry.backlog, entry.written, entry.consecutive_failures) == (1, 0, 6, 0)


class LostAckSQLiteSink(SQLiteSink):
    """A real SQLite sink whose first commits' acknowledgements are lost."""

    def __init__(self, path: str, lose: int) -> None:
        super().__init__(path)
        self.lose = lose

    def write(self, batch: Batch) -> None:
        super().write(batch)
        if self.lose > 0:
            self.lose -= 1
            raise SinkDown("committed, acknowledgement lost")


def test_lost_acknowledgement_into_sqlite_keeps_one_row_per_record(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """Against a real SQLite file a batch committed twice leaves one row per request."""
    database = tmp_path / "lost-ack.db"
    aegis = make_aegis(sink=LostAckSQLiteSink(str(database), lose=2), **QUIET)
    offered = paths(12)
    offer_all(aegis, offered)
    assert aegis.force_flush(WAIT) is False
    assert aegis.force_flush(WAIT) is False
    assert sqlite_paths(database) == sorted(offered)
    assert aegis.force_flush(WAIT) is True
    assert sqlite_paths(database) == sorted(offered)
    [entry] = aegis.stats().sinks
    assert (entry.errors, entry.written, entry.backlog) == (2, 12, 0)


# -- 4. a hanging sink -----------------------------------------------------------


def test_hanging_sink_is_abandoned_without_piling_up_threads(rig: Callable[..., Aegis]) -> None:
    """A write stuck on an Event is abandoned at sink_timeout, later attempts fail fast, then recover."""
    name = "hang-abandon"
    sink = FaultySink(name)
    gate = sink.hold()
    aegis = rig(sink, sink_timeout=0.2)
    offered = paths(5)
    offer_all(aegis, offered)

    started = time.monotonic()
    assert aegis.force_flush(WAIT) is False
    assert time.monotonic() - started < 20 * 0.2
    assert sink.entered.is_set()
    entry = sink_stats(aegis, name)
    assert (entry.errors, entry.timeouts, entry.consecutive_failures) == (1, 1, 1)
    assert (entry.backlog, entry.written) == (5, 0)
    assert entry.last_error.startswith("SinkTimeout: ")

    # Still hanging: refused at once (no second timeout), no second call, no second thread.
    assert aegis.force_flush(WAIT) is False
    entry = sink_stats(aegis, name)
    assert (entry.errors, entry.timeouts, entry.consecutive_failures) == (2, 1, 2)
    assert entry.last_error.startswith("SinkBusy: ")
    assert len(sink.attempts) == 1
    assert sink_threads(name) == 1

    gate.set()
    wait_in_flight(aegis)
    # The abandoned write went through after all.
    assert sink.paths == offered
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == offered
    assert sorted(sink.deliveries.values()) == [2] * 5
    assert sink.max_active == 1
    assert sink.writer_threads == {f"aegis-sink-{name}"}
    entry = sink_stats(aegis, name)
    assert (entry.errors, entry.timeouts, entry.consecutive_failures) == (2, 1, 0)
    assert (entry.backlog, entry.written) == (0, 5)
    assert sink_threads(name) == 1


# -- 5. backoff ------------------------------------------------------------------


def test_backoff_doubles_per_failure_up_to_the_cap(rig: Callable[..., Aegis]) -> None:
    """Consecutive failures schedule retries initial*2**k later, capped, within +-10%."""
    sink = FaultySink("backoff")
    sink.down = True
    aegis = rig(sink, retry_backoff_initial=10.0, retry_backoff_max=100.0)
    runner = aegis.flusher.runners[0]
    offer_all(aegis, paths(1))
    expected_delays = [10.0, 20.0, 40.0, 80.0, 100.0, 100.0, 100.0]
    for failures, expected in enumerate(expected_delays, 1):
        before = time.monotonic()
        assert aegis.force_flush(WAIT) is False
        after = time.monotonic()
        assert runner.consecutive_failures == failures
        assert before + 0.9 * expected <= runner.retry_at <= after + 1.1 * expected
        assert runner.retry_at <= after + 100.0
    assert len(sink.attempts) == len(expected_delays)

    sink.heal()
    assert aegis.force_flush(WAIT) is True
    assert (runner.consecutive_failures, runner.retry_at) == (0, 0.0)


def test_backoff_jitter_spans_ten_percent_and_never_passes_the_cap(
    rig: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the jitter at its extremes: +10% up to the cap, never above retry_backoff_max."""
    factor = [1.1]
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return factor[0]

    monkeypatch.setattr(sink_runner_module, "random", SimpleNamespace(uniform=uniform))
    sink = FaultySink("jitter")
    sink.down = True
    aegis = rig(sink, retry_backoff_initial=10.0, retry_backoff_max=100.0)
    runner = aegis.flusher.runners[0]
    offer_all(aegis, paths(1))
    schedule = [(1.1, 11.0), (1.1, 22.0), (1.1, 44.0), (1.1, 88.0), (1.1, 100.0), (0.9, 90.0)]
    for jitter, expected in schedule:
        factor[0] = jitter
        before = time.monotonic()
        assert aegis.force_flush(WAIT) is False
        after = time.monotonic()
        assert before + expected <= runner.retry_at <= after + expected
    assert asked == [(0.9, 1.1)] * 6


def test_background_loop_leaves_a_failed_sink_alone_until_retry_at(
    rig: Callable[..., Aegis],
) -> None:
    """Cycles for new records skip a sink in backoff; force_flush tries it anyway."""
    broken, witness = FaultySink("in-backoff"), FaultySink("witness")
    broken.down = True
    # batch_size=1: every offer wakes the flusher for a background (unforced) cycle.
    aegis = rig(broken, witness, batch_size=1)
    for count in range(1, 4):
        aegis.recorder.offer(http_item(f"/{count}"))
        assert witness.wait_stored(count)
    # The cycles for /2 finished before /3 was drained: none of them called the broken sink.
    assert len(broken.attempts) == 1
    runner = aegis.flusher.runners[0]
    assert runner.errors == 1
    assert runner.retry_at > time.monotonic() + 30

    assert aegis.force_flush(WAIT) is False
    assert len(broken.attempts) == 2
    assert witness.paths == ["/1", "/2", "/3"]
    broken.heal()
    assert aegis.force_flush(WAIT) is True
    assert broken.paths == ["/1", "/2", "/3"]


def test_background_loop_retries_at_retry_at_not_before(rig: Callable[..., Aegis]) -> None:
    """Without force_flush the loop retries a failed sink once retry_at has come, not earlier."""
    sink = FaultySink("retry-at")
    sink.fail_next = 1
    aegis = rig(sink, retry_backoff_initial=0.2, retry_backoff_max=0.2)
    runner = aegis.flusher.runners[0]
    # (when each write began, the retry_at it was made under)
    seen: list[tuple[float, float]] = []
    sink.on_write = lambda batch: seen.append((time.monotonic(), runner.retry_at))
    offer_all(aegis, paths(3))
    assert aegis.force_flush(WAIT) is False
    assert sink.wait_stored(3)
    assert len(seen) == 2
    (first_attempt, _), (second_attempt, retry_at) = seen
    assert retry_at >= first_attempt + 0.9 * 0.2
    assert second_attempt >= retry_at
    assert sink.paths == paths(3)


# -- 6. shutdown -----------------------------------------------------------------


def test_shutdown_flushes_and_a_second_shutdown_does_nothing(rig: Callable[..., Aegis]) -> None:
    """shutdown() writes everything, closes the sink once; a second call changes nothing."""
    sink = FaultySink("shutdown")
    aegis = rig(sink)
    offered = paths(30)
    offer_all(aegis, offered)
    assert aegis.shutdown() is True
    assert sink.paths == offered
    assert sink.close_calls == 1
    stats = aegis.stats()
    assert (stats.buffered, stats.flusher_alive, stats.sinks[0].written) == (0, False, 30)

    attempts = len(sink.attempts)
    assert aegis.shutdown() is True
    assert (len(sink.attempts), sink.close_calls) == (attempts, 1)


def test_records_offered_after_shutdown_are_counted_not_raised(rig: Callable[..., Aegis]) -> None:
    """After shutdown offers never raise and each one is counted as shutdown."""
    sink = FaultySink("after-shutdown")
    aegis = rig(sink)
    offer_all(aegis, paths(2))
    assert aegis.shutdown() is True
    offer_all(aegis, paths(4, "/late"))
    assert len(aegis.recorder.inbox) == 0
    assert aegis.stats().dropped == drops(shutdown=4)
    assert sink.paths == paths(2)


def test_shutdown_with_a_failing_sink_gives_up_at_its_timeout(rig: Callable[..., Aegis]) -> None:
    """shutdown_timeout=0.3 and a sink that always fails: False, leftovers counted."""
    sink = FaultySink("shutdown-failing")
    sink.down = True
    aegis = rig(sink, shutdown_timeout=0.3, retry_backoff_initial=0.05, retry_backoff_max=0.1)
    offer_all(aegis, paths(7))
    started = time.monotonic()
    assert aegis.shutdown() is False
    assert time.monotonic() - started < 20 * 0.3
    stats = aegis.stats()
    assert (stats.dropped, stats.sinks[0].dropped) == (drops(), sink_drops(shutdown_timeout=7))
    [entry] = stats.sinks
    assert entry.errors == len(sink.attempts) >= 1
    assert entry.consecutive_failures == entry.errors
    assert sink.close_calls == 1
    assert sink.paths == []


def test_leftovers_counted_at_shutdown_are_not_counted_twice(rig: Callable[..., Aegis]) -> None:
    """Records counted as shutdown_timeout are neither still buffered nor written later."""
    sink = FaultySink("leftovers")
    sink.down = True
    aegis = rig(sink)
    offer_all(aegis, paths(7))
    assert aegis.shutdown(timeout=0.2) is False
    stats = aegis.stats()
    assert (stats.dropped, stats.sinks[0].dropped) == (drops(), sink_drops(shutdown_timeout=7))
    # PipelineStats: each record is buffered, written, sampled out or dropped: once.
    assert accounted(stats) == stats.offered == 7

    sink.heal()
    aegis.start()
    assert aegis.force_flush(WAIT) is True
    stats = aegis.stats()
    assert sink.requests == []
    assert accounted(stats) == stats.offered == 7


def test_shutdown_with_a_hanging_sink_returns_in_bounded_time(rig: Callable[..., Aegis]) -> None:
    """A write that never returns cannot hold shutdown beyond its timeout plus the grace."""
    sink = FaultySink("shutdown-hang")
    sink.hold()
    aegis = rig(sink, sink_timeout=0.2, retry_backoff_initial=0.05, retry_backoff_max=0.1)
    offer_all(aegis, paths(5))
    started = time.monotonic()
    assert aegis.shutdown(timeout=0.3) is False
    assert time.monotonic() - started < 20 * (0.3 + 0.2)
    stats = aegis.stats()
    assert (stats.dropped, stats.sinks[0].dropped) == (drops(), sink_drops(shutdown_timeout=5))
    assert stats.sinks[0].timeouts == 1
    assert len(sink.attempts) == 1
    assert sink_threads("shutdown-hang") == 1


def test_restart_after_an_abandoned_write_never_runs_two_writes_at_once(
    rig: Callable[..., Aegis],
) -> None:
    """start() after a shutdown that abandoned a hung write keeps one call at a time."""
    name = "restart-hang"
    sink = FaultySink(name)
    gate = sink.hold()
    aegis = rig(sink, sink_timeout=0.2)
    offer_all(aegis, paths(2, "/first"))
    assert aegis.shutdown(timeout=0.3) is False
    aegis.start()
    offer_all(aegis, paths(2, "/second"))
    assert aegis.force_flush(WAIT) is False
    # The first write still hangs: the sink must not be called again meanwhile.
    assert len(sink.attempts) == 1
    assert sink.max_active == 1
    gate.set()
    wait_in_flight(aegis)
    assert aegis.force_flush(WAIT) is True
    assert sink.max_active == 1
    assert sink.paths == paths(2, "/first") + paths(2, "/second")


def test_shutdown_with_a_hanging_close_returns_in_bounded_time(
    rig: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    """A close() that never returns is abandoned; the written records still make it True."""
    sink = FaultySink("close-hang")
    release = threading.Event()

    def close() -> None:
        sink.close_calls += 1
        release.wait(WAIT)

    sink.close = close  # type: ignore[method-assign]
    aegis = rig(sink, sink_timeout=0.2)
    offer_all(aegis, paths(3))
    started = time.monotonic()
    try:
        assert aegis.shutdown(timeout=0.3) is True
        assert time.monotonic() - started < 20 * (0.3 + 0.2 + 1.0)
    finally:
        release.set()
    assert sink.paths == paths(3)
    assert sink.close_calls == 1
    assert any("did not close cleanly" in message for message in caplog.messages)


def test_second_shutdown_during_the_first_returns_false_at_once(
    rig: Callable[..., Aegis],
) -> None:
    """While a shutdown is writing, another shutdown and force_flush return False without waiting."""
    sink = FaultySink("shutdown-twice")
    gate = sink.hold()
    aegis = rig(sink, sink_timeout=30.0)
    offer_all(aegis, paths(4))
    first: list[bool] = []
    stopper = threading.Thread(target=lambda: first.append(aegis.shutdown(timeout=30.0)))
    stopper.start()
    try:
        assert sink.entered.wait(WAIT)
        assert aegis.shutdown() is False
        assert aegis.force_flush() is False
    finally:
        gate.set()
        stopper.join(WAIT)
    assert first == [True]
    assert aegis.shutdown() is True
    assert sink.paths == paths(4)
    assert sink.close_calls == 1


def test_start_after_shutdown_records_again(rig: Callable[..., Aegis]) -> None:
    """The lifespan-restart case: start() after shutdown() records and flushes again."""
    sink = FaultySink("restart")
    aegis = rig(sink)
    offer_all(aegis, paths(3, "/first"))
    assert aegis.shutdown() is True
    offer_all(aegis, paths(2, "/closed"))
    aegis.start()
    assert aegis.stats().flusher_alive is True
    offer_all(aegis, paths(3, "/second"))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == paths(3, "/first") + paths(3, "/second")
    assert aegis.shutdown() is True
    assert sink.close_calls == 2
    assert aegis.stats().dropped == drops(shutdown=2)


def test_start_after_shutdown_records_again_into_sqlite(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """A real SQLite sink closed by shutdown reopens its file after start()."""
    database = tmp_path / "restart.db"
    aegis = make_aegis(sink=f"sqlite:///{database}", **QUIET)
    offer_all(aegis, paths(3, "/first"))
    assert aegis.shutdown() is True
    offer_all(aegis, paths(2, "/closed"))
    aegis.start()
    offer_all(aegis, paths(3, "/second"))
    assert aegis.shutdown() is True
    assert sqlite_paths(database) == sorted(paths(3, "/first") + paths(3, "/second"))
    assert aegis.stats().dropped == drops(shutdown=2)


# -- 7. several sinks --------------------------------------------------------------


def test_a_failing_sink_does_not_starve_another(rig: Callable[..., Aegis]) -> None:
    """One sink down: the other gets every record; each keeps its own backlog and counters."""
    broken, healthy = FaultySink("broken"), FaultySink("healthy")
    broken.down = True
    aegis = rig(broken, healthy, batch_size=10)
    first = paths(25, "/first")
    aegis.recorder.inbox.extend(http_item(path) for path in first)
    assert aegis.force_flush(WAIT) is False
    assert healthy.paths == first
    assert healthy.batch_sizes == [10, 10, 5]
    assert broken.paths == []
    b, h = sink_stats(aegis, "broken"), sink_stats(aegis, "healthy")
    assert (b.errors, b.consecutive_failures, b.backlog, b.written) == (1, 1, 25, 0)
    assert (h.errors, h.consecutive_failures, h.backlog, h.written) == (0, 0, 0, 25)

    second = paths(5, "/second")
    offer_all(aegis, second)
    assert aegis.force_flush(WAIT) is False
    assert healthy.paths == first + second
    b, h = sink_stats(aegis, "broken"), sink_stats(aegis, "healthy")
    assert (b.errors, b.backlog, b.written) == (2, 30, 0)
    assert (h.errors, h.backlog, h.written) == (0, 0, 30)

    broken.heal()
    assert aegis.force_flush(WAIT) is True
    assert broken.paths == first + second
    assert set(broken.deliveries.values()) == set(healthy.deliveries.values()) == {1}
    assert aegis.stats().dropped == drops()


def test_each_sink_has_its_own_backlog_bound(rig: Callable[..., Aegis]) -> None:
    """Only the failing sink's backlog overflows; the healthy one loses nothing."""
    broken, healthy = FaultySink("bounded-broken"), FaultySink("bounded-healthy")
    broken.down = True
    aegis = rig(broken, healthy, max_buffer=10, batch_size=100)
    first, second = paths(10, "/first"), paths(4, "/second")
    offer_all(aegis, first)
    assert aegis.force_flush(WAIT) is False
    offer_all(aegis, second)
    assert aegis.force_flush(WAIT) is False
    assert aegis.stats().sinks[0].dropped == sink_drops(backlog_full=4)
    assert healthy.paths == first + second
    b = sink_stats(aegis, "bounded-broken")
    assert (b.backlog, b.written) == (10, 0)
    broken.heal()
    assert aegis.force_flush(WAIT) is True
    assert broken.paths == first
    assert sink_stats(aegis, "bounded-healthy").written == 14


def test_a_hanging_sink_does_not_starve_another(rig: Callable[..., Aegis]) -> None:
    """While one sink hangs the other keeps receiving; the hung one catches up afterwards."""
    hung, healthy = FaultySink("hung-neighbour"), FaultySink("hung-healthy")
    gate = hung.hold()
    aegis = rig(hung, healthy, sink_timeout=0.2)
    first, second = paths(5, "/first"), paths(5, "/second")
    offer_all(aegis, first)
    started = time.monotonic()
    assert aegis.force_flush(WAIT) is False
    assert time.monotonic() - started < 20 * 0.2
    assert healthy.paths == first
    offer_all(aegis, second)
    assert aegis.force_flush(WAIT) is False
    assert healthy.paths == first + second
    entry = sink_stats(aegis, "hung-neighbour")
    assert (entry.errors, entry.timeouts, entry.backlog) == (2, 1, 10)

    gate.set()
    wait_in_flight(aegis)
    assert aegis.force_flush(WAIT) is True
    assert hung.paths == first + second
    assert [hung.deliveries[r.request_id] for r in hung.requests] == [2] * 5 + [1] * 5


# -- 8. drop warnings ----------------------------------------------------------------


def test_drop_warnings_are_rate_limited_and_carry_counts_since_the_last(
    rig: Callable[..., Aegis],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One line per interval at most; the next line sums every drop since, by reason."""
    monkeypatch.setattr(flush_cycle_module, "DROP_REPORT_INTERVAL", 3600.0)
    caplog.set_level(logging.WARNING, logger="aegis_mw.flusher")
    sink = FaultySink("drop-lines")
    sink.down = True
    aegis = rig(sink, max_buffer=5, batch_size=100)
    with frozen(aegis):
        offer_all(aegis, paths(8, "/a"))  # 3 refused by the inbox
    assert aegis.force_flush(WAIT) is False
    first = "aegis dropped 3 records since the last report (buffer_full=3)"
    assert drop_lines(caplog) == [first]

    with frozen(aegis):
        offer_all(aegis, paths(7, "/b"))  # 2 refused; the 5 accepted overflow the backlog
    assert aegis.force_flush(WAIT) is False
    stats = aegis.stats()
    assert (stats.dropped, stats.sinks[0].dropped) == (
        drops(buffer_full=5),
        sink_drops(backlog_full=5),
    )
    assert drop_lines(caplog) == [first]

    assert aegis.shutdown(timeout=0.2) is False
    assert drop_lines(caplog) == [
        first,
        "aegis dropped 12 records since the last report "
        "(backlog_full@drop-lines=5, buffer_full=2, shutdown_timeout@drop-lines=5)",
    ]


def test_drop_warnings_report_only_new_drops(
    rig: Callable[..., Aegis],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no rate limit: a line per cycle that saw new drops, with only those."""
    monkeypatch.setattr(flush_cycle_module, "DROP_REPORT_INTERVAL", 0.0)
    caplog.set_level(logging.WARNING, logger="aegis_mw.flusher")
    aegis = rig(FaultySink("drop-new"), max_buffer=5, batch_size=100)
    with frozen(aegis):
        offer_all(aegis, paths(8, "/a"))
    assert aegis.force_flush(WAIT) is True
    assert aegis.force_flush(WAIT) is True
    with frozen(aegis):
        offer_all(aegis, paths(6, "/b"))
    assert aegis.force_flush(WAIT) is True
    assert drop_lines(caplog) == [
        "aegis dropped 3 records since the last report (buffer_full=3)",
        "aegis dropped 1 records since the last report (buffer_full=1)",
    ]


def test_drop_warnings_resume_after_a_restart(
    rig: Callable[..., Aegis],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After shutdown() and start(), new drops are reported again."""
    monkeypatch.setattr(flush_cycle_module, "DROP_REPORT_INTERVAL", 0.0)
    caplog.set_level(logging.WARNING, logger="aegis_mw.flusher")
    aegis = rig(FaultySink("drop-restart"), max_buffer=5, batch_size=100)
    with frozen(aegis):
        offer_all(aegis, paths(8, "/a"))
    assert aegis.shutdown() is True
    aegis.start()
    with frozen(aegis):
        offer_all(aegis, paths(9, "/b"))
    assert aegis.force_flush(WAIT) is True
    assert drop_lines(caplog) == [
        "aegis dropped 3 records since the last report (buffer_full=3)",
        "aegis dropped 4 records since the last report (buffer_full=4)",
    ]


# -- 10. the flusher survives --------------------------------------------------------


class ThirdPartyError(Exception):
    pass


class NotAnException(BaseException):
    pass


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(lambda: RuntimeError("boom"), "RuntimeError: boom", id="RuntimeError"),
        pytest.param(lambda: KeyError(), "KeyError", id="KeyError-no-message"),
        pytest.param(
            lambda: OSError(28, "No space left on device"),
            "OSError: [Errno 28] No space left on device",
            id="OSError",
        ),
        pytest.param(
            lambda: TimeoutError("socket timed out"),
            "TimeoutError: socket timed out",
            id="TimeoutError",
        ),
        pytest.param(lambda: ThirdPartyError("odd"), "ThirdPartyError: odd", id="custom"),
        pytest.param(lambda: NotAnException("worse"), "NotAnException: worse", id="BaseException"),
    ],
)
def test_flusher_survives_any_error_from_a_write(
    rig: Callable[..., Aegis], error: Callable[[], BaseException], expected: str
) -> None:
    """Whatever a write raises is counted as a sink error (not a timeout); records still flow."""
    sink = FaultySink("raising")
    sink.error = error
    sink.fail_next = 1
    aegis = rig(sink)
    offer_all(aegis, paths(3))
    assert aegis.force_flush(WAIT) is False
    stats = aegis.stats()
    [entry] = stats.sinks
    assert (entry.errors, entry.timeouts, entry.last_error) == (1, 0, expected)
    assert (stats.flusher_alive, stats.flusher_errors) == (True, 0)
    offer_all(aegis, paths(2, "/later"))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == paths(3) + paths(2, "/later")
    assert aegis.stats().flusher_errors == 0


def test_flusher_survives_a_sink_whose_close_raises(
    rig: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    """close() raising is logged; shutdown still succeeds and a restarted pipeline records."""
    sink = FaultySink("close-raises")
    sink.close_error = OSError("disk gone")
    aegis = rig(sink)
    offer_all(aegis, paths(3))
    assert aegis.shutdown() is True
    assert sink.close_calls == 1
    assert "aegis sink close-raises did not close cleanly: disk gone" in caplog.messages
    aegis.start()
    offer_all(aegis, paths(3, "/later"))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == paths(3) + paths(3, "/later")
    stats = aegis.stats()
    assert (stats.flusher_alive, stats.flusher_errors) == (True, 0)


def _status_none() -> list[Any]:
    item = http_item("/bad")
    item[3] = None
    return item


MALFORMED = [
    pytest.param("not an inbox item", id="string"),
    pytest.param(["GET"], id="short-list"),
    pytest.param(tuple(http_item("/tuple")), id="tuple-not-list"),
    pytest.param(_status_none(), id="status-None"),
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_flusher_survives_a_malformed_inbox_item(rig: Callable[..., Aegis], bad: Any) -> None:
    """An item the flusher cannot process is skipped and counted as dropped ("invalid");
    the flusher stays healthy and later records flow."""
    sink = FaultySink("malformed")
    aegis = rig(sink)
    aegis.recorder.offer(bad)
    assert aegis.force_flush(WAIT) is True
    stats = aegis.stats()
    assert (stats.flusher_alive, stats.flusher_errors, stats.dropped["invalid"]) == (True, 0, 1)
    offer_all(aegis, paths(3))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == paths(3)
    assert aegis.stats().dropped["invalid"] == 1


def test_a_malformed_item_does_not_lose_its_neighbours(rig: Callable[..., Aegis]) -> None:
    """Good records drained together with a malformed one are all stored; only the bad
    one is dropped (and counted), and the realtime figures count just the good ones."""
    sink = FaultySink("neighbours")
    aegis = rig(sink)
    aegis.recorder.offer(http_item("/before"))
    aegis.recorder.offer(_status_none())
    aegis.recorder.offer(http_item("/after"))
    assert aegis.force_flush(WAIT) is True
    stats = aegis.stats()
    assert sorted(sink.paths) == ["/after", "/before"]
    assert (stats.flusher_errors, stats.dropped["invalid"], stats.buffered) == (0, 1, 0)
    assert aegis.realtime().total_requests == 2


# -- 11. force_flush -----------------------------------------------------------------


def test_force_flush_returns_only_after_the_write(rig: Callable[..., Aegis]) -> None:
    """While the write of earlier records is blocked, force_flush is blocked too."""
    sink = FaultySink("blocking")
    gate = sink.hold()
    aegis = rig(sink, sink_timeout=30.0)
    offer_all(aegis, paths(4))
    result: list[bool] = []
    done = threading.Event()

    def flush() -> None:
        result.append(aegis.force_flush(30.0))
        done.set()

    flusher = threading.Thread(target=flush)
    flusher.start()
    try:
        assert sink.entered.wait(WAIT)
        assert not done.is_set()
    finally:
        gate.set()
        flusher.join(WAIT)
    assert result == [True]
    assert sink.paths == paths(4)


def test_force_flush_covers_records_offered_before_it_while_the_loop_runs(
    rig: Callable[..., Aegis],
) -> None:
    """With background cycles racing, each force_flush leaves every earlier record stored."""
    sink = FaultySink("racing-loop")
    aegis = rig(sink, flush_interval=0.001, batch_size=3)
    offered: list[str] = []
    for round_ in range(20):
        batch = paths(7, f"/round{round_}")
        offer_all(aegis, batch)
        offered += batch
        assert aegis.force_flush(WAIT) is True
        assert sink.paths == offered
    assert set(sink.deliveries.values()) == {1}


def test_force_flush_succeeds_although_traffic_arrives_during_it(
    rig: Callable[..., Aegis],
) -> None:
    """A record arriving while force_flush writes does not turn a full success into False."""
    sink = FaultySink("traffic")
    aegis = rig(sink)

    def arrive(batch: Batch) -> None:
        sink.on_write = None
        aegis.recorder.offer(http_item("/late"))

    sink.on_write = arrive
    offer_all(aegis, paths(3))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths[:3] == paths(3)
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == [*paths(3), "/late"]
