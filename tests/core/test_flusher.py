"""Fault injection into the flusher: sinks that overflow, fail, lose acks, hang, back off."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import aegis_mw.core.sink as sink_module
from aegis_mw import Aegis
from aegis_mw.alerts import outbox
from aegis_mw.core.history import RequestQuery
from aegis_mw.core.record import Batch
from aegis_mw.core.rollup import LEVELS
from aegis_mw.sinks.sqlite import SQLiteSink
from tests.core.conftest import QUIET
from tests.core.faulty_sinks import (
    GATE_LIMIT,
    WAIT,
    FaultySink,
    SinkDown,
    accounted,
    drops,
    http_item,
    offer_all,
    offer_unwoken,
    paths,
    sink_drops,
    sink_stats,
    sink_threads,
    sqlite_paths,
    wait_in_flight,
)
from tests.harness import inbox_item

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


def test_a_retry_is_the_same_batch_though_more_records_arrived(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The SQLite sink keys a write by its batch id: after a lost
    acknowledgement the retry sends exactly the records of the first attempt
    under the same id (skipped whole), and the records that arrived meanwhile
    go in a batch of their own. With a retry that took the newcomers along
    under the old id, they would be skipped with it and lost."""
    database = tmp_path / "lost-ack-grown.db"
    sink = LostAckSQLiteSink(str(database), lose=1)
    sent: list[tuple[str, int]] = []
    write = sink.write

    def noted(batch: Batch) -> None:
        sent.append((batch.batch_id, len(batch)))
        write(batch)

    sink.write = noted  # type: ignore[method-assign]
    aegis = make_aegis(sink=sink, **QUIET)
    first, later = paths(3, "/first"), paths(4, "/later")
    offer_all(aegis, first)
    assert aegis.force_flush(WAIT) is False
    offer_all(aegis, later)
    assert aegis.force_flush(WAIT) is True

    assert sqlite_paths(database) == sorted(first + later)
    (first_id, first_size), (retry_id, retry_size), (next_id, next_size) = sent
    assert (retry_id, retry_size) == (first_id, first_size) == (first_id, 3)
    assert next_id != first_id and next_size == 4
    [entry] = aegis.stats().sinks
    assert (entry.errors, entry.written, entry.backlog) == (1, 7, 0)


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


def test_retries_leave_the_apps_random_numbers_alone(rig: Callable[..., Aegis]) -> None:
    """A failing sink's retry (and an alert delivery's) draws its jitter from a
    generator of its own: an app that seeds ``random`` gets the same numbers
    with the pipeline retrying in the background."""
    sink = FaultySink("seeded")
    sink.down = True
    aegis = rig(sink, retry_backoff_initial=10.0, retry_backoff_max=100.0)
    offer_all(aegis, paths(1))
    state = random.getstate()
    try:
        random.seed(15)
        assert aegis.force_flush(WAIT) is False
        assert aegis.flusher.runners[0].consecutive_failures == 1
        assert outbox.backoff(3, None) > 0
        drawn = random.random()
        random.seed(15)
        assert random.random() == drawn
    finally:
        random.setstate(state)


def test_backoff_jitter_spans_ten_percent_and_never_passes_the_cap(
    rig: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the jitter at its extremes: +10% up to the cap, never above retry_backoff_max."""
    factor = [1.1]
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return factor[0]

    monkeypatch.setattr(sink_module, "JITTER", SimpleNamespace(uniform=uniform))
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


# -- 7. ingesting while the sinks write ----------------------------------------------


def test_the_rest_of_a_cycle_is_ingested_while_its_first_write_is_in_flight(
    rig: Callable[..., Aegis],
) -> None:
    """A cycle ingests one batch's worth, starts the write, and ingests the
    rest meanwhile (the database's work holds no GIL); the records are written
    in order, in batches of batch_size, each once."""
    sink = FaultySink("overlap")
    gate = sink.hold()
    aegis = rig(sink, batch_size=10)
    runner = aegis.flusher.runners[0]
    all_in, first_write_held = threading.Event(), []
    offer = runner.offer

    def counting_offer(records: list[Any]) -> None:
        offer(records)
        if runner.queued() == 35 and not all_in.is_set():
            in_flight = runner._in_flight
            first_write_held.append(in_flight is not None and not in_flight.done())
            all_in.set()

    runner.offer = counting_offer  # type: ignore[method-assign]
    offered = paths(35)
    offer_unwoken(aegis, offered)
    results: list[bool] = []
    flushing = threading.Thread(target=lambda: results.append(aegis.force_flush(WAIT)))
    flushing.start()
    assert all_in.wait(WAIT)
    assert first_write_held == [True]
    gate.set()
    flushing.join(WAIT)
    assert results == [True]
    assert sink.paths == offered
    assert sink.batch_sizes == [10, 10, 10, 5]
    assert set(sink.deliveries.values()) == {1}


def test_rollups_of_records_ingested_during_writes_are_written_by_the_same_flush(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(sink="memory://", **{**QUIET, "batch_size": 10})
    for number in range(35):
        aegis.recorder.offer(inbox_item(f"/items/{number}", start=1000.0 + number / 100))
    assert aegis.force_flush(WAIT) is True
    sink = aegis.sinks[0]
    totals = sink.read_rollups(LEVELS[0], 0, 2**40, by_route=False)
    assert sum(row.requests for row in totals) == 35
    assert len(sink.read_requests(RequestQuery(limit=100))) == 35


def test_ingesting_during_a_write_pauses_between_slices_as_any_ingest(
    rig: Callable[..., Aegis],
) -> None:
    """The parts ingested while a write is in flight are one stretch of work:
    a slice runs on across them, so it pauses as often as one long ingest
    (a part is shorter than a slice; restarting the slice at each part would
    never pause). The slice's clock counts its own readings here, so the
    number of pauses depends on the work, not on the machine's speed."""
    sink = FaultySink("overlap-pauses")
    gate = sink.hold()
    # The held write outlasts the ingest of 3,000 items however loaded the machine.
    aegis = rig(sink, batch_size=10, max_buffer=10_000, sink_timeout=GATE_LIMIT)
    slices = aegis.flusher.cycle.slices
    ticks = itertools.count()
    slices._clock = lambda: float(next(ticks))
    # About five slices' worth of steps (a step reads the clock once).
    steps = 3000 // aegis.flusher.cycle.ingest_step
    slices.budget, slices.pause, slices.hurried = float(steps // 5), 0.0, 0.0
    runner = aegis.flusher.runners[0]
    all_in = threading.Event()
    offer = runner.offer

    def counting_offer(records: list[Any]) -> None:
        offer(records)
        if runner.queued() == 3000:
            all_in.set()

    runner.offer = counting_offer  # type: ignore[method-assign]
    offer_unwoken(aegis, paths(3000))
    results: list[bool] = []
    flushing = threading.Thread(target=lambda: results.append(aegis.force_flush(WAIT)))
    flushing.start()
    assert all_in.wait(WAIT)
    assert slices.pauses >= 3
    gate.set()
    flushing.join(WAIT)
    assert results == [True]
    assert len(sink.paths) == 3000
