"""The realtime ring, read through a real ``Aegis`` with a fake clock.

Items go in through ``recorder.offer`` (or the middleware) with completion
times chosen by the test, so each one lands in a known second. ``realtime()``
takes "now" from the FakeClock: the current second is ``int(clock.monotonic())``.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aegis_mw import Aegis, AegisMiddleware, RealtimeSnapshot
from aegis_mw.core.aggregates import RING_SIZE
from aegis_mw.core.items import PendingSession
from aegis_mw.testing import FakeClock, recorded, recorded_sessions
from tests.harness import Exchange, call, http_scope, inbox_item, websocket_scope

NOW = 10_000  # the current second in most tests
NO_STATUS = {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0}


def http_item(
    end: float, duration_ms: float = 10.0, status: int = 200, error: str = ""
) -> list[Any]:
    """An inbox item as the middleware builds it, finishing at monotonic ``end``."""
    start = end - duration_ms / 1000.0
    return inbox_item(
        "/r", status=status, start=start, ttfb=start, end=end, response_bytes=2,
        client=("127.0.0.1", 5000), error=error,
    )  # fmt: skip


def session_item(end: float) -> PendingSession:
    return PendingSession(end - 1.0, "/ws", "/ws", end, 1, 1, 1000, True, None, None, "")


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(monotonic=NOW + 0.5)


def flush(aegis: Aegis) -> None:
    assert aegis.force_flush(timeout=10)


def test_empty_snapshot(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    """Nothing recorded: zero rates and counts, no latency."""
    assert make_aegis(clock=clock).realtime() == RealtimeSnapshot(
        requests_per_second_1s=0.0,
        requests_per_second_10s=0.0,
        requests_per_second_60s=0.0,
        window_requests=0,
        window_errors=0,
        error_rate=0.0,
        latency_avg_ms=None,
        latency_p50_ms=None,
        latency_p95_ms=None,
        latency_p99_ms=None,
        total_requests=0,
        total_errors=0,
        status_totals=NO_STATUS,
        in_flight=0,
        websocket_connections_active=0,
        websocket_sessions_total=0,
    )


def test_rates_over_complete_seconds(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    """1/10/60 s rates count complete seconds before now; the window covers the last 60
    seconds including the current one; totals count everything.
    """
    aegis = make_aegis(clock=clock)
    per_second = {
        NOW - 61: 1,  # totals only
        NOW - 60: 2,  # 60 s rate, outside the latency window
        NOW - 59: 4,  # 60 s rate and window
        NOW - 11: 8,  # 60 s rate only (just before the 10 s range)
        NOW - 10: 16,  # 10 s and 60 s rates
        NOW - 1: 32,  # all three rates
        NOW: 64,  # the current, incomplete second: window only
    }
    for second, count in per_second.items():
        for _ in range(count):
            aegis.recorder.offer(http_item(second + 0.25))
    flush(aegis)
    snapshot = aegis.realtime()
    assert snapshot.requests_per_second_1s == 32.0
    assert snapshot.requests_per_second_10s == (16 + 32) / 10
    assert snapshot.requests_per_second_60s == (2 + 4 + 8 + 16 + 32) / 60
    assert snapshot.window_requests == 4 + 8 + 16 + 32 + 64
    assert snapshot.total_requests == 127
    assert snapshot.status_totals == {**NO_STATUS, "2xx": 127}

    # One second later the current second is complete and counts in every rate.
    clock.advance(1.0)
    snapshot = aegis.realtime()
    assert snapshot.requests_per_second_1s == 64.0
    assert snapshot.requests_per_second_10s == (32 + 64) / 10
    assert snapshot.requests_per_second_60s == (4 + 8 + 16 + 32 + 64) / 60
    assert snapshot.window_requests == 8 + 16 + 32 + 64
    assert snapshot.total_requests == 127


def test_window_latency(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    """Average and p50/p95/p99 over the window match the exact figures (percentiles within 2%);
    requests outside the window do not count.
    """
    aegis = make_aegis(clock=clock)
    durations = [float(ms) for ms in range(1, 201)]
    for index, duration in enumerate(durations):
        aegis.recorder.offer(http_item(NOW - (index % 30) + 0.5, duration))
    # Slow requests outside the window: they would dominate every figure if counted.
    aegis.recorder.offer(http_item(NOW - 60 + 0.5, 50_000.0))
    aegis.recorder.offer(http_item(NOW - 200 + 0.5, 90_000.0))
    flush(aegis)
    snapshot = aegis.realtime()
    assert snapshot.window_requests == 200
    assert snapshot.total_requests == 202
    assert snapshot.latency_avg_ms == pytest.approx(sum(durations) / 200, rel=1e-9)
    for reported, q in (
        (snapshot.latency_p50_ms, 0.5),
        (snapshot.latency_p95_ms, 0.95),
        (snapshot.latency_p99_ms, 0.99),
    ):
        assert reported == pytest.approx(exact_quantile(durations, q), rel=0.02)


def test_latency_of_a_skewed_window(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    """98 fast and 2 slow requests: p50 and p95 stay fast, p99 is slow."""
    aegis = make_aegis(clock=clock)
    durations = [5.0] * 98 + [2000.0] * 2
    for duration in durations:
        aegis.recorder.offer(http_item(NOW + 0.1, duration))
    snapshot = aegis.realtime()
    assert snapshot.latency_p50_ms == pytest.approx(5.0, rel=0.02)
    assert snapshot.latency_p95_ms == pytest.approx(5.0, rel=0.02)
    assert snapshot.latency_p99_ms == pytest.approx(2000.0, rel=0.02)
    assert snapshot.latency_avg_ms == pytest.approx((98 * 5 + 2 * 2000) / 100, rel=1e-9)


def test_window_without_requests_has_no_latency(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    """Requests only before the window: totals count them, latency is None, error rate 0."""
    aegis = make_aegis(clock=clock)
    aegis.recorder.offer(http_item(NOW - 90 + 0.5, status=500))
    flush(aegis)
    snapshot = aegis.realtime()
    assert (snapshot.total_requests, snapshot.total_errors) == (1, 1)
    assert (snapshot.window_requests, snapshot.window_errors, snapshot.error_rate) == (0, 0, 0.0)
    assert snapshot.latency_avg_ms is None
    assert snapshot.latency_p50_ms is None
    assert snapshot.latency_p99_ms is None


def test_errors_and_status_classes(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    """5xx and any request with an error string are errors; 4xx alone is not."""
    aegis = make_aegis(clock=clock)
    cases = [
        (101, ""),
        (200, ""),
        (201, ""),
        (200, "ValueError: boom"),
        (301, ""),
        (404, ""),
        (499, ""),
        (500, ""),
        (503, ""),
    ]
    for status, error in cases:
        aegis.recorder.offer(http_item(NOW + 0.5, status=status, error=error))
    snapshot = aegis.realtime()
    assert (snapshot.window_requests, snapshot.window_errors) == (9, 3)
    assert snapshot.error_rate == 3 / 9
    assert (snapshot.total_requests, snapshot.total_errors) == (9, 3)
    assert snapshot.status_totals == {"1xx": 1, "2xx": 3, "3xx": 1, "4xx": 2, "5xx": 2}
    flush(aegis)
    assert aegis.realtime() == snapshot


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_errors_through_the_middleware(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    """Through the middleware: a raising app counts as an error, a 404 does not."""
    aegis = make_aegis(clock=clock)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        status = 404 if scope["path"] == "/missing" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    middleware = AegisMiddleware(app, aegis=aegis)
    await call(middleware, http_scope("/ok"))
    await call(middleware, http_scope("/missing"))
    with pytest.raises(RuntimeError, match="boom"):
        await call(middleware, http_scope("/boom"))
    snapshot = aegis.realtime()
    assert (snapshot.window_requests, snapshot.window_errors) == (3, 1)
    assert snapshot.status_totals == {**NO_STATUS, "2xx": 1, "4xx": 1, "5xx": 1}
    assert snapshot.in_flight == 0
    assert sorted(r.status for r in recorded(aegis)) == [200, 404, 500]


def test_totals_survive_ring_rotation(make_aegis: Callable[..., Aegis]) -> None:
    """Over 300 seconds (more than the 128-slot ring) totals stay exact; the window
    holds the last 60 seconds only.
    """
    assert RING_SIZE == 128
    base = 20_000
    clock = FakeClock(monotonic=base + 299 + 0.5)
    aegis = make_aegis(clock=clock)
    statuses = (200, 404, 500)
    for i in range(300):
        aegis.recorder.offer(http_item(base + i + 0.5, duration_ms=i + 1.0, status=statuses[i % 3]))
        if i % 50 == 49:  # fold in several steps, so rotation happens inside the flusher
            flush(aegis)
    snapshot = aegis.realtime()
    assert (snapshot.total_requests, snapshot.total_errors) == (300, 100)
    assert snapshot.status_totals == {**NO_STATUS, "2xx": 100, "4xx": 100, "5xx": 100}
    assert (snapshot.window_requests, snapshot.window_errors) == (60, 20)
    assert snapshot.error_rate == 20 / 60
    assert snapshot.requests_per_second_1s == 1.0
    assert snapshot.requests_per_second_10s == 1.0
    assert snapshot.requests_per_second_60s == 1.0
    window_durations = [i + 1.0 for i in range(240, 300)]
    assert snapshot.latency_avg_ms == pytest.approx(sum(window_durations) / 60, rel=1e-9)
    assert snapshot.latency_p50_ms == pytest.approx(exact_quantile(window_durations, 0.5), rel=0.02)
    assert len(recorded(aegis)) == 300

    # Much later, with the whole ring stale, the totals are unchanged and the window empty.
    clock.advance(10 * RING_SIZE)
    later = aegis.realtime()
    assert (later.total_requests, later.total_errors) == (300, 100)
    assert later.window_requests == 0
    assert later.requests_per_second_60s == 0.0


def test_rotation_inside_one_fold(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    """Two seconds mapping to the same slot, folded in one batch, both count in totals."""
    aegis = make_aegis(clock=clock)
    aegis.recorder.offer(http_item(NOW - RING_SIZE + 0.5, status=503))
    aegis.recorder.offer(http_item(NOW + 0.5))
    expected_totals = {**NO_STATUS, "2xx": 1, "5xx": 1}
    snapshot = aegis.realtime()
    assert (snapshot.total_requests, snapshot.total_errors) == (2, 1)
    assert snapshot.status_totals == expected_totals
    assert (snapshot.window_requests, snapshot.window_errors) == (1, 0)
    flush(aegis)
    assert aegis.realtime() == snapshot


def test_items_older_than_their_slot_go_into_totals_only(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    """An item for a second older than the one its slot holds (a long stall) counts in
    the totals but does not disturb the newer second's figures.
    """
    aegis = make_aegis(clock=clock)
    aegis.recorder.offer(http_item(NOW + 0.5, duration_ms=10.0))
    flush(aegis)
    before = aegis.realtime()
    # Same slot as NOW, 128 seconds older; slow and failed, so it would show anywhere.
    aegis.recorder.offer(http_item(NOW - RING_SIZE + 0.5, duration_ms=60_000.0, status=500))
    pending = aegis.realtime()
    flush(aegis)
    after = aegis.realtime()
    assert after == pending
    assert (after.total_requests, after.total_errors) == (2, 1)
    assert after.status_totals == {**NO_STATUS, "2xx": 1, "5xx": 1}
    # The current second is untouched.
    assert (after.window_requests, after.window_errors) == (1, 0)
    assert after.latency_avg_ms == before.latency_avg_ms == pytest.approx(10.0)
    assert after.latency_p99_ms == before.latency_p99_ms
    # An old second whose slot is free still goes into the ring (and the window).
    aegis.recorder.offer(http_item(NOW - 5 + 0.5, duration_ms=20.0))
    flush(aegis)
    last = aegis.realtime()
    assert (last.total_requests, last.window_requests) == (3, 2)
    assert last.latency_avg_ms == pytest.approx(15.0)


def test_readers_see_items_not_yet_folded(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    """With the flusher held back, realtime() already counts what waits in the inbox,
    and the snapshot is the same after the flusher folds it.
    """
    aegis = make_aegis(clock=clock, flush_interval=3600, batch_size=1_000_000)
    items: list[Any] = [
        *(http_item(NOW - s + 0.5, duration_ms=s + 1.0, status=200) for s in range(40)),
        *(http_item(NOW - 3 + 0.5, status=500) for _ in range(5)),
        http_item(NOW + 0.5, status=404, error="boom"),
        http_item(NOW - 90 + 0.5),  # outside the window
        session_item(NOW + 0.2),
        session_item(NOW - 10 + 0.2),
    ]
    for item in items:
        aegis.recorder.offer(item)
    assert len(aegis.recorder.inbox) == len(items)
    assert aegis.flusher.cycle.cycles == 0
    held = aegis.realtime()
    assert held.total_requests == 47
    assert held.total_errors == 6
    assert held.websocket_sessions_total == 2
    assert held.window_requests == 46
    assert held.requests_per_second_1s == 1.0
    assert held.requests_per_second_10s == (10 + 5) / 10
    assert held.requests_per_second_60s == (39 + 5) / 60
    assert held.status_totals == {**NO_STATUS, "2xx": 41, "4xx": 1, "5xx": 5}
    flush(aegis)
    assert len(aegis.recorder.inbox) == 0
    assert aegis.flusher.cycle.cycles >= 1
    assert aegis.realtime() == held
    assert aegis.stats().offered == 49


def test_offered_counts_requests_and_sessions(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    """stats().offered is HTTP requests plus WebSocket sessions, before and after
    flushing, sampled-out records included.
    """
    aegis = make_aegis(clock=clock, sample_rate=0.0)
    for second in range(5):
        aegis.recorder.offer(http_item(NOW - second + 0.5))
    for second in range(3):
        aegis.recorder.offer(session_item(NOW - second + 0.5))
    assert aegis.stats().offered == 8
    snapshot = aegis.realtime()
    assert (snapshot.total_requests, snapshot.websocket_sessions_total) == (5, 3)
    flush(aegis)
    stats = aegis.stats()
    assert stats.offered == 8
    assert stats.sampled_out == 5  # every fast 2xx request sampled out at rate 0...
    assert recorded(aegis) == []  # ...so the log holds none of them
    assert len(recorded_sessions(aegis)) == 3
    assert aegis.realtime() == snapshot  # but the realtime figures count all of them


def test_refused_items_count_as_offered_and_dropped(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    """Items refused by a full inbox count as offered and dropped, but not in realtime."""
    aegis = make_aegis(clock=clock, flush_interval=3600, max_buffer=3)
    with aegis.aggregates._lock:  # keep the flusher (woken at the bound) from draining
        for _ in range(5):
            aegis.recorder.offer(http_item(NOW + 0.5))
    stats = aegis.stats()
    assert (stats.offered, stats.dropped["buffer_full"]) == (5, 2)
    assert aegis.realtime().total_requests == 3


@pytest.mark.anyio
@pytest.mark.usefixtures("hot_path")
async def test_in_flight(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    """in_flight counts requests inside the app, and drops back when they finish or fail."""
    aegis = make_aegis(clock=clock)
    release = anyio.Event()
    entered: list[str] = []
    both_in = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        entered.append(scope["path"])
        if len(entered) == 2:
            both_in.set()
        await release.wait()
        if scope["path"] == "/fail":
            raise ValueError("late failure")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = AegisMiddleware(app, aegis=aegis)

    async def failing() -> None:
        with pytest.raises(ValueError, match="late failure"):
            await call(middleware, http_scope("/fail"))

    assert aegis.realtime().in_flight == 0
    async with anyio.create_task_group() as group:
        group.start_soon(call, middleware, http_scope("/ok"))
        group.start_soon(failing)
        with anyio.fail_after(10):
            await both_in.wait()
        during = aegis.realtime()
        assert (during.in_flight, during.total_requests) == (2, 0)
        release.set()
    after = aegis.realtime()
    assert (after.in_flight, after.total_requests, after.total_errors) == (0, 2, 1)


@pytest.mark.anyio
async def test_websocket_figures(make_aegis: Callable[..., Aegis], clock: FakeClock) -> None:
    """Open accepted sessions count as active; finished ones (accepted or refused) count
    in websocket_sessions_total and in offered, never as HTTP requests.
    """
    aegis = make_aegis(clock=clock)
    accepted = anyio.Event()
    release = anyio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        accepted.set()
        await release.wait()
        await send({"type": "websocket.close", "code": 1000})

    middleware = AegisMiddleware(app, aegis=aegis)

    def connect() -> Exchange:
        return Exchange([{"type": "websocket.connect"}])

    async with anyio.create_task_group() as group:
        group.start_soon(call, middleware, websocket_scope("/ws"), connect())
        with anyio.fail_after(10):
            await accepted.wait()
        during = aegis.realtime()
        assert (during.websocket_connections_active, during.websocket_sessions_total) == (1, 0)
        await call(middleware, websocket_scope("/refuse"), connect())
        refused = aegis.realtime()
        assert (refused.websocket_connections_active, refused.websocket_sessions_total) == (1, 1)
        release.set()
    after = aegis.realtime()
    assert (after.websocket_connections_active, after.websocket_sessions_total) == (0, 2)
    assert (after.total_requests, after.in_flight) == (0, 0)
    assert aegis.stats().offered == 2
    assert sorted((s.path, s.accepted) for s in recorded_sessions(aegis)) == [
        ("/refuse", False),
        ("/ws", True),
    ]


def test_concurrent_readers_never_miss_or_repeat_items(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    """While the flusher folds small batches, a reader's total never goes backwards and
    never exceeds what was offered (ring and inbox are copied under the fold lock).
    """
    aegis = make_aegis(clock=clock, batch_size=32)
    offered = 0
    done = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        last = 0
        while not done.is_set() and reads < 200_000:
            total = aegis.realtime().total_requests
            ceiling = offered
            reads += 1
            if total < last or total > ceiling:
                problems.append(f"read {reads}: total {total}, previous {last}, offered {ceiling}")
                return
            last = total

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20_000):
            offered += 1  # counted before the item is visible
            aegis.recorder.offer(http_item(NOW - (i % 200) + 0.5))
    finally:
        try:
            # A reader that takes the fold lock in a loop slows the flusher
            # down (6 to 10 s here): a correctness test, with room to spare.
            assert aegis.force_flush(timeout=60)
        finally:  # the reader stops even when the flush fails
            done.set()
            thread.join(timeout=30)
    assert not thread.is_alive()
    assert problems == []
    assert reads > 0
    assert aegis.realtime().total_requests == 20_000


def in_read(thread: threading.Thread) -> bool:
    """Whether ``thread`` is currently inside RealtimeAggregates._read."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "_read" and "aggregates" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_reader_during_a_stalled_fold_sees_exact_figures(
    make_aegis: Callable[..., Aegis], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that arrives while the flusher is mid-fold (items already taken from the
    inbox, not yet in the ring) still gets exact figures, however long the fold takes:
    the OS may deschedule the flusher thread at that very point.
    """
    aegis = make_aegis(clock=clock, flush_interval=3600, batch_size=1_000_000)
    for _ in range(10):
        aegis.recorder.offer(http_item(NOW + 0.5))
    assert aegis.realtime().total_requests == 10

    stalled = threading.Event()
    resume = threading.Event()
    real_drain = aegis.recorder.drain

    def stalling_drain(limit: int) -> list[Any]:
        items = real_drain(limit)
        stalled.set()  # the flusher is now inside fold_drained, holding the items
        resume.wait(timeout=30)
        return items

    monkeypatch.setattr(aegis.recorder, "drain", stalling_drain)
    flusher_call = threading.Thread(target=aegis.force_flush, args=(30,))
    flusher_call.start()
    snapshots: list[RealtimeSnapshot] = []
    offered: list[int] = []
    try:
        assert stalled.wait(timeout=10)

        def read() -> None:
            snapshots.append(aegis.realtime())
            offered.append(aegis.stats().offered)

        reader = threading.Thread(target=read)
        reader.start()
        # Let the fold go only once the reader is provably inside the read, waiting for
        # the fold to finish (its frame sits in RealtimeAggregates._read).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not in_read(reader):
            time.sleep(0)  # hand the GIL over; bounded by the deadline
        assert in_read(reader)
    finally:
        resume.set()
        flusher_call.join(timeout=30)
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert not flusher_call.is_alive()
    assert [s.total_requests for s in snapshots] == [10]
    assert offered == [10]
    assert aegis.realtime().total_requests == 10


def test_percentiles_stay_within_the_observed_min_and_max(
    make_aegis: Callable[..., Aegis], clock: FakeClock
) -> None:
    """Every request took d, just above its bucket's lower edge: the window's
    and that second's percentiles are d, not the bucket's midpoint (~2% higher).
    Likewise for requests just below a bucket's upper edge, in the next second:
    that second reports them, not a midpoint ~2% lower than all of them."""
    from aegis_mw.core.histogram import GROWTH, bucket_index, bucket_value

    index = bucket_index(10.0)
    low = bucket_value(index) / GROWTH**0.5 * 1.001
    high = bucket_value(index + 1) * GROWTH**0.5 * 0.999
    aegis = make_aegis(clock=clock)
    for _ in range(20):
        aegis.recorder.offer(http_item(NOW - 1 + 0.5, low))
    flush(aegis)
    snapshot = aegis.realtime()
    assert snapshot.latency_p50_ms == snapshot.latency_p99_ms == pytest.approx(low, rel=1e-9)
    for _ in range(20):
        aegis.recorder.offer(http_item(NOW + 0.5, high))
    flush(aegis)
    snapshot = aegis.realtime()
    assert snapshot.latency_p50_ms is not None and snapshot.latency_p99_ms is not None
    assert low <= snapshot.latency_p50_ms <= snapshot.latency_p99_ms <= high
    *_, before, current = aegis.aggregates.seconds(NOW, aegis.recorder.pending)
    assert before.latency_p50_ms == before.latency_p99_ms == pytest.approx(low, rel=1e-9)
    assert current.latency_p50_ms == current.latency_p99_ms == pytest.approx(high, rel=1e-9)
