"""The flusher's Python work runs in short slices that let other threads in
(see ``aegis_mw/core/gil_slices.py``)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis, Batch
from aegis_mw.core import gil_slices
from aegis_mw.core.gil_slices import (
    BEHIND,
    HURRIED_PAUSE_SECONDS,
    PAUSE_SECONDS,
    SLICE_SECONDS,
    Slices,
    pause_for,
)
from aegis_mw.sinks import SQLiteSink, sqlite_rows
from tests.conftest import compiled_module
from tests.core.faulty_sinks import WAIT, FaultySink, http_item, paths
from tests.sinks.test_sqlite import make_request


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
    assert aegis.flusher.cycle.slices.pauses >= 1000 // aegis.flusher.cycle.ingest_step
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


def test_pauses_are_long_while_the_work_keeps_up_and_short_once_it_falls_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four slices' worth of pause while the backlog is under a quarter of its
    bound (the pipeline takes at most a fifth of a core), a short one from a
    quarter on (it catches up instead of dropping records)."""
    assert PAUSE_SECONDS >= 4 * SLICE_SECONDS > HURRIED_PAUSE_SECONDS or sys.platform == "win32"
    fill = [0.0]
    slept: list[float] = []
    monkeypatch.setattr(gil_slices.time, "sleep", slept.append)
    slices = Slices(budget=0.0, backlog=lambda: fill[0])
    for fill[0] in (0.0, BEHIND - 0.01, BEHIND, 1.0, 0.1):
        slices.check()
    assert slept == [PAUSE_SECONDS, PAUSE_SECONDS, HURRIED_PAUSE_SECONDS,
                     HURRIED_PAUSE_SECONDS, PAUSE_SECONDS]  # fmt: skip
    assert pause_for(None) == PAUSE_SECONDS
    assert pause_for(lambda: 0.5, 1.0, 2.0) == 2.0


def test_the_flusher_and_the_sqlite_sink_are_paced_by_the_inbox_and_the_backlog(
    make_aegis: Callable[..., Aegis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flusher reads the inbox's fill; the SQLite sink the fuller of the
    inbox and its own backlog, and passes the pause to its compiled inserts.
    Shutdown counts as behind: what is left is written at full speed."""
    # The flusher sleeps through the test (an hour's interval, 30 items far
    # from a batch): the inbox and the sink are the test's alone.
    aegis = make_aegis(sink=f"sqlite:///{tmp_path}/paced.db", max_buffer=100, flush_interval=3600)
    sink = aegis.sinks[0]
    assert isinstance(sink, SQLiteSink)
    fill = aegis.flusher.cycle.slices.backlog
    assert fill is not None and fill() == 0.0 and sink._backlog is not None
    for path in paths(30):
        aegis.recorder.offer(http_item(path))
    assert fill() == sink._backlog() == 0.3
    aegis.flusher.runners[0].backlog.extend([None] * 60)  # type: ignore[list-item]
    assert fill() == 0.3 and sink._backlog() == 0.6
    aegis.flusher.runners[0].backlog.clear()

    passed: list[float] = []
    real = sqlite_rows.insert

    def insert(*args: Any) -> int:
        passed.append(args[7])  # the pause, before the kept statements
        return real(*args)

    monkeypatch.setattr(sqlite_rows, "insert", insert)
    sink.use_compiled(compiled_module())
    for pace in (0.0, 0.5):
        sink.pace_by(lambda pace=pace: pace)  # type: ignore[misc]
        sink.write(Batch(requests=[make_request(len(passed) * 100 + n) for n in range(64)]))
    assert passed == [PAUSE_SECONDS, HURRIED_PAUSE_SECONDS]
    aegis.shutdown()
    assert fill() == 1.0


def test_a_force_flush_is_written_without_long_pauses(rig: Callable[..., Aegis]) -> None:
    """Someone waits for it: the pipeline counts as behind while it runs."""
    seen: list[float] = []

    class Watching(FaultySink):
        def write(self, batch: Batch) -> None:
            seen.append(aegis.recorder.fill())
            super().write(batch)

    aegis = rig(Watching("watching"), max_buffer=1000)
    aegis.recorder.offer(http_item("/a"))
    assert aegis.recorder.fill() == 0.001
    assert aegis.force_flush(WAIT) is True
    assert seen and set(seen) == {1.0}
    assert aegis.recorder.fill() == 0.0


LINUX_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a thread's own priority is Linux's"
)


def priority(native_id: int | None) -> int:
    assert native_id is not None
    return os.getpriority(os.PRIO_PROCESS, native_id)


def pipeline_threads(aegis: Aegis) -> list[threading.Thread]:
    threads = [aegis.flusher._thread] + [runner._thread for runner in aegis.flusher.runners]
    return [thread for thread in threads if thread is not None]


@LINUX_ONLY
def test_the_pipelines_threads_run_below_the_apps(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """The flusher's and the sink's threads run NICENESS levels below the
    process; the app's threads (this one) and the process stay where they were."""
    own = priority(threading.get_native_id())
    process = os.getpriority(os.PRIO_PROCESS, os.getpid())
    aegis = make_aegis(sink=f"sqlite:///{tmp_path}/nice.db")
    # Each thread lowers itself first thing; a flush has run on both since.
    assert aegis.force_flush(timeout=10) is True
    threads = pipeline_threads(aegis)
    assert len(threads) == 2
    expected = min(19, process + gil_slices.NICENESS)
    assert [priority(thread.native_id) for thread in threads] == [expected] * 2
    assert priority(threading.get_native_id()) == own
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == process


@LINUX_ONLY
def test_background_niceness_0_keeps_the_apps_priority(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    process = os.getpriority(os.PRIO_PROCESS, os.getpid())
    aegis = make_aegis(sink=f"sqlite:///{tmp_path}/nice.db", background_niceness=0)
    assert aegis.force_flush(timeout=10) is True
    threads = pipeline_threads(aegis)
    assert [priority(thread.native_id) for thread in threads] == [process] * 2


@LINUX_ONLY
def test_a_thread_started_by_a_lowered_one_is_lowered_once() -> None:
    """A pipeline restarted from its own thread starts its threads from a
    lowered one (a new thread inherits its creator's level): they end at the
    same level, never lower still."""
    process = os.getpriority(os.PRIO_PROCESS, os.getpid())
    levels: list[int] = []

    def lowered(depth: int) -> None:
        gil_slices.lower_thread_priority(5)
        levels.append(priority(threading.get_native_id()))
        if depth:
            child = threading.Thread(target=lowered, args=(depth - 1,))
            child.start()
            child.join()

    thread = threading.Thread(target=lowered, args=(2,))
    thread.start()
    thread.join()
    assert levels == [min(19, process + 5)] * 3


def test_a_refused_priority_change_leaves_the_thread_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: Any) -> None:
        raise PermissionError("not in this sandbox")

    monkeypatch.setattr(os, "setpriority", refuse)
    levels: list[int] = []

    def lowered() -> None:
        gil_slices.lower_thread_priority(5)  # no error
        levels.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert levels == [os.getpriority(os.PRIO_PROCESS, os.getpid())]
