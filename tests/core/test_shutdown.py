"""Shutdown: what it writes, what it counts, how long it may take, and starting again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from aegis_mw import Aegis
from tests.core.conftest import QUIET
from tests.core.faulty_sinks import (
    WAIT,
    FaultySink,
    accounted,
    drops,
    offer_all,
    paths,
    sink_drops,
    sink_threads,
    sqlite_paths,
    wait_in_flight,
)

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
