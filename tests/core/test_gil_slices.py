"""The flusher's Python work runs in short slices that let other threads in
(see ``aegis_mw/core/gil_slices.py``)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from aegis_mw import Aegis
from aegis_mw.core.gil_slices import Slices
from tests.core.faulty_sinks import WAIT, FaultySink, http_item, paths


def test_a_slice_pauses_only_once_its_budget_is_spent() -> None:
    """check() sleeps after ``budget`` seconds of work, and only then."""
    never = Slices(budget=3600.0)
    for _ in range(1000):
        never.check()
    assert never.pauses == 0

    always = Slices(budget=0.0)
    for _ in range(5):
        always.check()
    assert always.pauses == 5

    # On a clock the test moves (a busy machine cannot stretch a slice).
    now = [100.0]
    timed = Slices(budget=0.01)
    timed._clock = lambda: now[0]
    timed.begin()
    now[0] += 0.009
    timed.check()
    assert timed.pauses == 0
    now[0] += 0.002
    timed.check()
    assert timed.pauses == 1
    now[0] += 0.009  # a new slice began at the pause
    timed.check()
    assert timed.pauses == 1


def test_sliced_ingest_stores_what_one_pass_would(rig: Callable[..., Aegis]) -> None:
    """Pausing after every step changes nothing of what is stored: every
    record once, in order, and the rollups counted once."""
    sink = FaultySink("sliced")
    aegis = rig(sink)
    aegis.flusher.cycle.slices.budget = 0.0
    offered = paths(1000)
    for path in offered:
        aegis.recorder.offer(http_item(path))
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == offered
    assert aegis.flusher.cycle.slices.pauses >= 1000 // 32
    stats = aegis.stats()
    assert stats.sinks[0].written == 1000
    assert aegis.realtime().total_requests == 1000


@pytest.fixture
def long_switch_interval() -> Iterator[None]:
    """Threads switch only where one blocks or sleeps: what a pause provides."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def test_other_threads_run_while_a_large_inbox_is_ingested(
    make_aegis: Callable[..., Aegis], long_switch_interval: None
) -> None:
    """With the interpreter's forced switches out of the way (a 30 s switch
    interval), a thread that sleeps 1 ms at a time gets the GIL back only when
    the flusher lets it go. It does, many times, during one ingest: the
    flusher pauses between slices. Without the slices it would get no turn
    until the ingest was over."""
    aegis = make_aegis(flush_interval=3600.0, batch_size=1_000_000, max_buffer=100_000)
    for path in paths(40_000):
        aegis.recorder.offer(http_item(path))
    turns: list[float] = []
    ingesting = threading.Event()
    done = threading.Event()

    def ticker() -> None:
        ingesting.wait(WAIT)
        while not done.is_set():
            time.sleep(0.001)
            turns.append(time.perf_counter())

    thread = threading.Thread(target=ticker)
    thread.start()
    cycle = aegis.flusher.cycle
    try:
        ingesting.set()
        began = time.perf_counter()
        cycle.ingest()  # in this thread: the flusher sleeps (an hour's interval)
        ended = time.perf_counter()
    finally:
        done.set()
        thread.join(WAIT)
    during = [moment for moment in turns if began <= moment <= ended]
    assert len(during) >= 10, (len(during), cycle.slices.pauses, ended - began)
    assert cycle.slices.pauses >= 10
    assert aegis.aggregates.drained == 40_000
