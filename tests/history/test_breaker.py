"""The history store's breaker, step by step on a fake clock: closed, open (every
read refused at once, with the seconds to retry after), half-open (one probe,
the others still refused), closed again; the outage logged once each way."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from aegis_mw.core.history import RequestQuery
from aegis_mw.core.record import RequestRecord
from aegis_mw.core.rollup import RollupRow
from aegis_mw.history.breaker import GuardedSource, StoreBreaker, StoreUnavailable, unavailable
from aegis_mw.testing import FakeClock, MemorySink


class Store(MemorySink):
    """A memory store whose request-log reads fail with ``error`` while it is set."""

    name = "store"

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None
        self.reads = 0

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return super().read_requests(query)


def guarded(retry_after: float = 5.0) -> tuple[Store, GuardedSource, FakeClock]:
    clock = FakeClock()
    store = Store()
    breaker = StoreBreaker("store", retry_after=retry_after, clock=clock.monotonic)
    return store, GuardedSource(store, breaker), clock


def refused(source: GuardedSource) -> int:
    with pytest.raises(StoreUnavailable) as raised:
        source.read_requests(RequestQuery())
    return raised.value.retry_after


def test_an_outage_is_refused_at_once_then_probed_then_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, source, clock = guarded(retry_after=5.0)
    caplog.set_level(logging.DEBUG, logger="aegis_mw.history")
    assert source.read_requests(RequestQuery()) == []
    store.error = ConnectionRefusedError("refused")
    assert refused(source) == 5  # the failing read itself
    assert store.reads == 2
    clock.advance(1.2)
    assert refused(source) == 4  # at once: the store is not touched
    assert store.reads == 2
    clock.advance(3.8)
    assert refused(source) == 5  # the probe, failing: open again
    assert store.reads == 3
    assert refused(source) == 5
    store.error = None
    clock.advance(5.0)
    assert source.read_requests(RequestQuery()) == []  # the probe, answered
    assert source.breaker.state == "closed"
    assert source.read_requests(RequestQuery()) == []
    assert store.reads == 5
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "aegis_mw: the history store store cannot be read (ConnectionRefusedError: refused); "
        "reads answer 503 at once for 5 s, then one tries again",
        "aegis_mw: the history store store can be read again after 10.0 s "
        "(2 reads were answered 503 meanwhile)",
    ]
    assert all(r.exc_info is None for r in caplog.records)


def test_only_one_read_probes_a_half_open_store() -> None:
    _, source, clock = guarded(retry_after=2.0)
    breaker = source.breaker
    breaker.failed(OSError("down"))
    clock.advance(2.0)
    assert breaker.admit() is True  # this caller probes
    assert breaker.state == "probing"
    assert refused(source) == 1  # the others are refused while it runs
    breaker.abandon(True)  # cancelled without an answer: the next read probes
    assert breaker.admit() is True
    breaker.succeeded()
    assert breaker.admit() is False


def test_a_fault_of_the_read_is_not_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    store, source, _ = guarded()
    store.error = sqlite3.ProgrammingError("a bug in the read")
    for _ in range(3):
        with pytest.raises(sqlite3.ProgrammingError):
            source.read_requests(RequestQuery())
    assert store.reads == 3
    assert source.breaker.state == "closed"
    assert caplog.records == []


def test_a_cancelled_read_leaves_the_breaker_as_it_was() -> None:
    store, source, clock = guarded(retry_after=1.0)
    source.breaker.failed(OSError("down"))
    clock.advance(1.0)
    store.error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        source.read_requests(RequestQuery())
    store.error = None
    assert source.read_requests(RequestQuery()) == []  # probed again at once
    assert source.breaker.state == "closed"


def test_which_errors_mean_the_store_is_unavailable(tmp_path: object) -> None:
    from aegis_mw.sinks.sqlite import SQLiteSink

    sink = SQLiteSink(f"{tmp_path}/aegis.db")
    try:
        assert unavailable(sink, sqlite3.OperationalError("database is locked"))
        assert unavailable(sink, sqlite3.DatabaseError("file is not a database"))
        assert unavailable(sink, PermissionError("denied"))
        assert not unavailable(sink, sqlite3.ProgrammingError("bad SQL"))
        assert not unavailable(sink, ValueError("bad value"))
    finally:
        sink.close()
    # A source of the user's without a say: an OSError is unavailability.
    assert unavailable(MemorySink(), TimeoutError("timed out"))
    assert not unavailable(MemorySink(), RuntimeError("bug"))


def test_a_probe_that_hangs_holds_the_breaker_only_until_its_limit() -> None:
    """The probe got a connection, then the store stopped answering on it: after
    ``probe_limit`` the next read probes instead, and its answer closes the breaker."""
    clock = FakeClock()
    store = Store()
    breaker = StoreBreaker("store", retry_after=5.0, probe_limit=7.0, clock=clock.monotonic)
    source = GuardedSource(store, breaker)
    store.error = ConnectionRefusedError("refused")
    refused(source)
    clock.advance(5.0)
    assert breaker.admit() is True  # the probe, which never answers
    clock.advance(6.9)
    assert refused(source) == 1  # within its limit: the others still wait for it
    clock.advance(0.1)
    store.error = None
    assert source.read_requests(RequestQuery()) == []  # the next probe
    assert breaker.state == "closed"


class Rollups(Store):
    """A store whose rollup reads (the probe's read of nothing) are counted and
    fail with ``error`` while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.probes = 0

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]:
        self.probes += 1
        if self.error is not None:
            raise self.error
        return super().read_rollups(resolution, start, end, by_route=by_route)


def test_a_use_that_is_no_read_is_refused_while_down_and_probes_with_a_read_when_due() -> None:
    """``probe`` (the incidents', the alert store's uses, once the breaker is
    not closed): refused at once while the store is known down, without
    reading it; when a probe is due, a read of nothing probes, and its answer
    closes the breaker or opens it again; while another probe is out, refused."""
    clock = FakeClock()
    store = Rollups()
    source = GuardedSource(store, StoreBreaker("store", retry_after=4.0, clock=clock.monotonic))
    breaker = source.breaker
    breaker.failed(OSError("down"))
    clock.advance(1.0)
    with pytest.raises(StoreUnavailable) as raised:
        source.probe()
    assert raised.value.retry_after == 3 and store.probes == 0
    clock.advance(3.0)
    store.error = OSError("still down")
    with pytest.raises(StoreUnavailable) as raised:
        source.probe()  # due: the read probes, the store is still down
    assert store.probes == 1 and breaker.state == "open"
    assert raised.value.retry_after == 4
    with pytest.raises(StoreUnavailable):
        source.probe()  # at once again, not reading
    assert store.probes == 1

    clock.advance(4.0)
    assert breaker.admit() is True  # a history read probes now: the uses wait for it
    with pytest.raises(StoreUnavailable):
        source.probe()
    assert store.probes == 1
    breaker.abandon(True)  # that read was cancelled: the next one probes
    store.error = None
    source.probe()
    assert store.probes == 2 and breaker.state == "closed"  # the store is back


def test_a_forked_child_does_not_wait_for_its_parents_probe() -> None:
    """A child forked while a read probes: that read is the parent's, so the
    child's next read probes at once instead of waiting out ``probe_limit``."""
    clock = FakeClock()
    breaker = StoreBreaker("store", retry_after=5.0, probe_limit=60.0, clock=clock.monotonic)
    breaker.failed(OSError("down"))
    clock.advance(5.0)
    assert breaker.admit() is True
    with pytest.raises(StoreUnavailable):
        breaker.admit()
    breaker.reset_after_fork()  # as the child runs it (no other thread here)
    assert breaker.state == "open"
    assert breaker.admit() is True
