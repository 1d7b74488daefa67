"""The pipeline's lifecycle under pressure: shutdown mid-cycle, restart while
stopping, flushes racing a shutdown, several failing sinks, discarded pipelines."""

from __future__ import annotations

import gc
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from aegis_mw import Aegis
from aegis_mw.core.record import Batch
from aegis_mw.sinks.sqlite import SQLiteSink
from tests.core.faulty_sinks import (
    WAIT,
    FaultySink,
    accounted,
    http_item,
    offer_all,
    paths,
    sink_drops,
    sink_threads,
)


class ClosingGate(FaultySink):
    """A sink whose close() waits for the test: a shutdown that is still closing."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closing = threading.Event()
        self.may_close = threading.Event()

    def close(self) -> None:
        self.closing.set()
        self.may_close.wait(WAIT)
        super().close()


def test_shutdown_during_a_long_cycle_keeps_to_its_deadline(rig: Callable[..., Aegis]) -> None:
    """A cycle with a lot left to write is cut short by shutdown: the final flush runs
    at once, stops at the deadline, and counts what it could not write."""
    sink = FaultySink("slow")
    # A slow database: each write of 10 records takes a while.
    sink.on_write = lambda batch: time.sleep(0.02)
    aegis = rig(sink, batch_size=10, sink_timeout=1.0)
    offer_all(aegis, paths(1000))  # at batch_size the flusher wakes and starts writing
    assert sink.wait_stored(10)
    started = time.monotonic()
    assert aegis.shutdown(timeout=0.3) is False
    assert time.monotonic() - started < 0.3 + 1.0 + 1.0 + 1.0  # deadline + sink_timeout + grace
    stats = aegis.stats()
    entry = stats.sinks[0]
    # The write in progress at the deadline was abandoned; it may still store
    # its batch. Wait for it: such a batch is counted lost, never hidden.
    with sink._cond:
        assert sink._cond.wait_for(lambda: sink.active == 0, WAIT)
    assert entry.written <= len(sink.requests) <= entry.written + 10
    assert entry.written < 1000
    assert entry.dropped["shutdown_timeout"] == 1000 - entry.written
    assert accounted(stats) == stats.offered == 1000
    assert not aegis.flusher.alive


def test_start_while_a_shutdown_is_still_closing(rig: Callable[..., Aegis]) -> None:
    """A restart asked for during the last steps of a shutdown waits for them, and the
    sink's thread of the new run survives the old run's ending."""
    sink = ClosingGate("closing")
    aegis = rig(sink)
    offer_all(aegis, paths(3, "/before"))
    stopper = threading.Thread(target=aegis.shutdown)
    stopper.start()
    assert sink.closing.wait(WAIT)
    aegis.start()  # the lifespan of the next test client, say
    sink.may_close.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    offer_all(aegis, paths(3, "/after"))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == paths(3, "/before") + paths(3, "/after")
    assert sink_threads("closing") == 1
    assert aegis.flusher.alive


def test_force_flush_during_a_shutdown_returns(rig: Callable[..., Aegis]) -> None:
    """force_flush() while a shutdown is closing the sinks answers at once, never hangs."""
    sink = ClosingGate("flush-vs-shutdown")
    aegis = rig(sink)
    offer_all(aegis, paths(2))
    stopper = threading.Thread(target=aegis.shutdown)
    stopper.start()
    assert sink.closing.wait(WAIT)
    answers: list[bool] = []
    flusher = threading.Thread(target=lambda: answers.append(aegis.force_flush()))
    flusher.start()
    flusher.join(WAIT)
    assert not flusher.is_alive()
    assert answers == [False]  # not running: nothing more will be written now
    sink.may_close.set()
    stopper.join(WAIT)
    assert sink.paths == paths(2)


def test_each_failing_sink_counts_its_own_losses(rig: Callable[..., Aegis]) -> None:
    """Two sinks down at shutdown: each owes and loses the same 10 records, counted
    once per sink; the inbox-level drops stay at zero."""
    first, second = FaultySink("down-1"), FaultySink("down-2")
    first.down = second.down = True
    aegis = rig(first, second, retry_backoff_initial=0.05, retry_backoff_max=0.1)
    offer_all(aegis, paths(10))
    assert aegis.shutdown(timeout=0.2) is False
    stats = aegis.stats()
    assert sum(stats.dropped.values()) == 0
    assert [entry.dropped for entry in stats.sinks] == [sink_drops(shutdown_timeout=10)] * 2
    assert accounted(stats, 0) == accounted(stats, 1) == stats.offered == 10


class HangingSQLiteSink(SQLiteSink):
    """A real SQLite sink whose first write hangs until the test lets it go."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.hung = threading.Event()
        self._hang_once = True

    def write(self, batch: Batch) -> None:
        if self._hang_once:
            self._hang_once = False
            self.hung.set()
            self.gate.wait(WAIT)
        super().write(batch)


def test_sqlite_after_a_restart_that_abandoned_a_write(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The new run's sink thread opens its own connection; the abandoned write's
    thread keeps its own. Nothing is written twice."""
    database = tmp_path / "restart.db"
    sink = HangingSQLiteSink(str(database))
    aegis = make_aegis(sink=sink, flush_interval=3600, sink_timeout=0.2, retry_backoff_initial=0.05)
    offer_all(aegis, paths(2, "/first"))
    assert aegis.force_flush(WAIT) is False  # the write hangs and is abandoned
    assert sink.hung.is_set()
    aegis.shutdown(timeout=0.2)
    aegis.start()
    sink.gate.set()  # the abandoned write now completes on its old thread
    offer_all(aegis, paths(2, "/second"))
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and not aegis.force_flush(WAIT):
        pass  # SinkBusy until the old write has returned; each attempt is a real flush
    rows = sqlite3.connect(database).execute("SELECT path FROM aegis_requests ORDER BY path")
    assert [row[0] for row in rows] == paths(2, "/first") + paths(2, "/second")


def test_a_discarded_pipeline_ends_its_threads_and_says_what_it_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Built and dropped without shutdown (an app per test): its threads end on their
    own, and records it never wrote are reported, not silently lost."""
    caplog.set_level(logging.WARNING, logger="aegis_mw")
    aegis = Aegis(sink=FaultySink("discarded"), flush_interval=3600, environ={})
    for index in range(3):
        aegis.recorder.offer(http_item(f"/lost/{index}"))
    threads = [
        t for t in threading.enumerate() if t.name in ("aegis-flusher", "aegis-sink-discarded")
    ]
    assert len(threads) == 2
    alive = weakref.ref(aegis)
    del aegis
    # CPython frees a cycle whose members have finalizers over two passes.
    for _ in range(5):
        if alive() is None:
            break
        gc.collect()
    assert alive() is None
    for thread in threads:
        thread.join(WAIT)
    assert [t.is_alive() for t in threads] == [False, False]
    assert any("discarded without shutdown(); 3 records" in r.getMessage() for r in caplog.records)


def test_a_pipeline_used_as_a_context_manager_flushes_on_exit() -> None:
    """``with Aegis(...) as aegis:`` shuts down at the end of the block, writing what was buffered."""
    sink = FaultySink("with-block")
    with Aegis(sink=sink, flush_interval=3600, environ={}) as aegis:
        offer_all(aegis, paths(3))
        assert sink.paths == []
    assert sink.paths == paths(3)
    assert (aegis.recorder.closed, aegis.flusher.alive, sink.close_calls) == (True, False, 1)
