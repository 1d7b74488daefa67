"""Sinks a test breaks on purpose, and inbox items built without the middleware.

``FaultySink`` stands in for the storage behind the pipeline (a database that
goes down, loses an acknowledgement, hangs, or fails to close); the recorder,
flusher and sink runners under test stay real.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.core.record import Batch, RequestRecord, WebSocketSession
from aegis_mw.core.recorder import DROP_REASONS
from aegis_mw.core.stats import PipelineStats, SinkStats
from tests.harness import inbox_item

#: Longest a held write waits for its gate: a forgotten gate never keeps a thread forever.
GATE_LIMIT = 60.0
#: Upper bound for every wait on another thread in these tests.
WAIT = 10.0


class SinkDown(ConnectionError):
    """What a FaultySink raises while it is down."""


class FaultySink:
    """An idempotent in-memory sink whose failures the test switches on and off.

    - ``down``: every write raises ``error()`` before storing anything.
    - ``fail_next``: that many upcoming writes raise (then it is healthy).
    - ``lose_acks``: that many upcoming writes store the batch, then raise
      (the commit happened, the acknowledgement was lost).
    - ``hold()``: writes block on the returned Event until it is set.
    - ``on_write``: called with each batch when a write begins.
    - ``close_error``: ``close()`` raises it.

    Every write attempt is timed (``attempts``) and every committed record
    counted per id (``deliveries``); ``max_active`` is the most writes that
    ever ran at the same time.
    """

    def __init__(self, name: str = "faulty") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._stored: dict[str, RequestRecord | WebSocketSession] = {}
        self.deliveries: Counter[str] = Counter()
        self.attempts: list[float] = []
        self.batch_sizes: list[int] = []
        self.writer_threads: set[str] = set()
        self.active = 0
        self.max_active = 0
        self.down = False
        self.error: Callable[[], BaseException] = lambda: SinkDown("sink down")
        self.fail_next = 0
        self.lose_acks = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.on_write: Callable[[Batch], None] | None = None
        self.close_error: BaseException | None = None
        self.close_calls = 0

    # -- switches ------------------------------------------------------------
    def hold(self) -> threading.Event:
        """Make writes block until the returned Event is set."""
        self.gate = threading.Event()
        self.entered.clear()
        return self.gate

    def heal(self) -> None:
        """Up again: open the gate, clear every fault."""
        if self.gate is not None:
            self.gate.set()
        self.down = False
        self.fail_next = 0
        self.lose_acks = 0
        self.on_write = None
        self.close_error = None

    # -- the sink protocol ---------------------------------------------------
    def write(self, batch: Batch) -> None:
        with self._cond:
            self.attempts.append(time.monotonic())
            self.writer_threads.add(threading.current_thread().name)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            self._write(batch)
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify_all()

    def _write(self, batch: Batch) -> None:
        if self.on_write is not None:
            self.on_write(batch)
        gate = self.gate
        if gate is not None:
            self.entered.set()
            if not gate.wait(GATE_LIMIT):
                raise RuntimeError("the test never opened the gate")
        if self.down:
            raise self.error()
        with self._cond:
            if self.fail_next > 0:
                self.fail_next -= 1
                raise self.error()
            for record in batch.requests:
                self._stored.setdefault(record.request_id, record)
                self.deliveries[record.request_id] += 1
            for session in batch.sessions:
                self._stored.setdefault(session.session_id, session)
                self.deliveries[session.session_id] += 1
            self.batch_sizes.append(len(batch))
            lose = self.lose_acks > 0
            if lose:
                self.lose_acks -= 1
            self._cond.notify_all()
        if lose:
            raise SinkDown("stored, but the acknowledgement was lost")

    def close(self) -> None:
        self.close_calls += 1
        if self.close_error is not None:
            raise self.close_error

    # -- what it holds -------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._cond:
            return [r for r in self._stored.values() if type(r) is RequestRecord]

    @property
    def sessions(self) -> list[WebSocketSession]:
        with self._cond:
            return [r for r in self._stored.values() if type(r) is WebSocketSession]

    @property
    def paths(self) -> list[str]:
        """Paths of the stored requests, in the order they were first stored."""
        return [record.path for record in self.requests]

    def wait_stored(self, count: int, timeout: float = WAIT) -> bool:
        """Wait until at least ``count`` records are stored."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._stored) >= count, timeout)


def http_item(
    path: str,
    *,
    status: int = 200,
    method: str = "GET",
    route: str = "/items/{item_id}",
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
    error: str = "",
) -> list[Any]:
    """A well-formed HTTP inbox item, as the middleware queues it, finished just now."""
    return inbox_item(
        path, method=method, route=route, status=status, start=time.monotonic(),
        response_bytes=10, client=client, error=error,
    )  # fmt: skip


def paths(count: int, prefix: str = "/items") -> list[str]:
    """``count`` distinct request paths."""
    return [f"{prefix}/{index}" for index in range(count)]


@contextmanager
def frozen(aegis: Aegis) -> Iterator[None]:
    """Keep the flusher out of the inbox: draining takes the aggregates' fold lock.

    For tests that must overflow the inbox before the flusher (which wakes at
    the bound) can drain it. Do not read stats or realtime figures inside.
    """
    with aegis.aggregates._lock:
        yield


def offer_all(aegis: Aegis, request_paths: list[str]) -> None:
    """Offer one request per path through ``Recorder.offer``."""
    for path in request_paths:
        aegis.recorder.offer(http_item(path))


def offer_unwoken(aegis: Aegis, request_paths: list[str]) -> None:
    """``offer_all`` without waking the flusher early, so the next cycle (a
    ``force_flush``) finds every item in the inbox. Otherwise a producer past
    ``batch_size`` wakes it, and a cycle that starts halfway through the
    offers takes only the half it saw."""
    recorder = aegis.recorder
    wake_at = recorder.wake_at
    recorder.wake_at = len(request_paths) + recorder.max_buffer
    try:
        offer_all(aegis, request_paths)
    finally:
        recorder.wake_at = wake_at


def sink_stats(aegis: Aegis, name: str) -> SinkStats:
    """The ``stats()`` entry of the sink called ``name``."""
    [found] = [entry for entry in aegis.stats().sinks if entry.name == name]
    return found


def wait_in_flight(aegis: Aegis, timeout: float = WAIT) -> None:
    """Wait until no sink call of this pipeline is still running (an abandoned one returned)."""
    for runner in aegis.flusher.runners:
        future = runner._in_flight
        if future is not None:
            concurrent.futures.wait([future], timeout=timeout)


def sink_threads(name: str) -> int:
    """How many live threads serve the sink called ``name``."""
    return [thread.name for thread in threading.enumerate()].count(f"aegis-sink-{name}")


def drops(**counts: int) -> dict[str, int]:
    """Inbox-level drop counts (PipelineStats.dropped)."""
    return {reason: counts.get(reason, 0) for reason in DROP_REASONS}


def sink_drops(**counts: int) -> dict[str, int]:
    """One sink's drop counts (SinkStats.dropped)."""
    return {
        reason: counts.get(reason, 0) for reason in ("backlog_full", "shutdown_timeout", "rejected")
    }


def accounted(stats: PipelineStats, sink: int = 0) -> int:
    """Every offered item once, by PipelineStats' per-sink conservation law."""
    entry = stats.sinks[sink]
    return (
        stats.buffered + sum(stats.dropped.values())
        + (0 if entry.counts_every_request else stats.sampled_out)
        + entry.written + entry.backlog + sum(entry.dropped.values())
    )  # fmt: skip


def drop_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The drop warnings the flusher logged, in order."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "aegis_mw.flusher" and record.getMessage().startswith("aegis dropped")
    ]


def sqlite_paths(path: Path) -> list[str]:
    """The request paths stored in a SQLite file, sorted."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT path FROM aegis_requests ORDER BY path").fetchall()
    finally:
        connection.close()
    return [row[0] for row in rows]
