"""Reads, writes and the alert store's calls against a PostgreSQL server that
hung with their connection open: the client's own deadlines end them (a server
that runs has its statement timeout; a stopped one answers nothing, ever). The
real server is never stopped: a forwarder to it freezes, its connections left
open."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from aegis_mw import Batch  # noqa: E402
from aegis_mw.sinks.postgres import PostgresSink  # noqa: E402
from aegis_mw.sinks.postgres_deadline import Watchdog  # noqa: E402
from tests.core.test_fork import run_in_child  # noqa: E402
from tests.endpoints.stores import Forwarder, forwarded_url, timed  # noqa: E402
from tests.servers import free_port  # noqa: E402
from tests.sinks.test_sqlite import make_request  # noqa: E402

#: How long a test waits for what must end sooner; past it, the test fails
#: instead of hanging (a hung read ends when the forwarder closes).
WAIT = 20.0


@pytest.fixture
def sinks_thread() -> Iterator[ThreadPoolExecutor]:
    """The thread a test's sink writes on (its write connection belongs to
    the thread that opened it, as it does to the sink's own thread)."""
    thread = ThreadPoolExecutor(1)
    yield thread
    thread.shutdown(wait=False)  # a hung call: the test fails, then its store closes


@pytest.fixture
def forwarded(postgres_url: str) -> Iterator[tuple[str, Forwarder]]:
    """The test's PostgreSQL URL through a forwarder, and the forwarder."""
    port = free_port()
    url, real = forwarded_url(postgres_url, port)
    with closing(Forwarder(port, real)) as forwarder:
        yield url, forwarder


def served(sink: PostgresSink) -> None:
    """Read until the store answers (a new connection may take longer than a
    short ``read_timeout`` on a busy machine); fails after WAIT."""
    failed: list[BaseException] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:  # each try waits up to read_timeout
        error, _ = timed(lambda: sink.read_rollups(60, 0, 0, by_route=False))
        if error is None:
            return
        failed.append(error)
    raise AssertionError(f"no read served in {WAIT} s: {failed}")


def test_a_deadline_cuts_a_statement_and_says_so(postgres_url: str) -> None:
    """On a live server too: the connection is shut down when the deadline
    passes, and the error names the wait, not a server that closed it."""
    watchdog = Watchdog("test-deadlines")
    with psycopg.connect(postgres_url, autocommit=True) as connection:

        def sleep_past_the_deadline() -> None:
            with watchdog.deadline(connection, 0.3):
                connection.execute("SELECT pg_sleep(10)")

        error, took = timed(sleep_past_the_deadline)
        assert isinstance(error, psycopg.OperationalError), error
        assert "no answer from the server within 0.3 s" in str(error)
        assert 0.25 < took < 5, took
        assert connection.closed  # its pool discards it
        assert watchdog.armed == 0


def test_a_deadline_disarmed_in_time_leaves_the_connection_alone(postgres_url: str) -> None:
    watchdog = Watchdog("test-deadlines")
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        with watchdog.deadline(connection, 1.0) as deadline:
            assert watchdog.armed == 1
            assert connection.execute("SELECT 1").fetchone() == (1,)
        assert watchdog.armed == 0 and not deadline.missed  # disarmed: it cannot fire
        assert connection.execute("SELECT 2").fetchone() == (2,)
    thread = watchdog._thread
    assert thread is not None and thread.is_alive()
    watchdog.close()  # its owner closed: the thread ends now, not after a while idle
    thread.join(WAIT)
    assert not thread.is_alive() and watchdog._thread is None


def test_a_deadline_that_passes_as_the_block_ends_closes_the_connection(
    postgres_url: str,
) -> None:
    """Its last round trip done, the block ends just after the socket was shut
    down: the connection is closed all the same (a pool must not lend it),
    and the block, finished (a write committed, say), is not failed for it."""
    watchdog = Watchdog("test-deadlines")
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        with watchdog.deadline(connection, 0.05) as deadline:
            assert connection.execute("SELECT 1").fetchone() == (1,)
            assert deadline.severed.wait(WAIT)
        assert deadline.missed and connection.closed


def test_a_short_deadline_armed_while_the_thread_waits_on_a_long_one_is_kept(
    postgres_url: str,
) -> None:
    """Arming wakes the thread only for a deadline before its next wake: one
    armed while it waits towards a later one (or idles) is still kept on time."""
    watchdog = Watchdog("test-deadlines")
    with (
        psycopg.connect(postgres_url, autocommit=True) as waiting,
        psycopg.connect(postgres_url, autocommit=True) as cut,
        watchdog.deadline(waiting, 60.0),  # the thread now waits 60 s
    ):

        def sleep_past_a_short_deadline() -> None:
            with watchdog.deadline(cut, 0.3):
                cut.execute("SELECT pg_sleep(10)")

        error, took = timed(sleep_past_a_short_deadline)
        assert "no answer from the server within 0.3 s" in str(error)
        assert took < 5, took
        assert waiting.execute("SELECT 1").fetchone() == (1,)  # the long one untouched
    watchdog.close()


def test_a_renewed_deadline_counts_from_its_renewal(postgres_url: str) -> None:
    """A block of statements each within its deadline, the block longer than
    it: renewed before each statement, it runs to its end; not renewed, it
    is cut."""
    watchdog = Watchdog("test-deadlines")
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        with watchdog.deadline(connection, 1.0) as deadline:
            for _ in range(3):
                deadline.renew()
                connection.execute("SELECT pg_sleep(0.4)")
        assert not deadline.missed and not connection.closed

        def without_renewals() -> None:
            with watchdog.deadline(connection, 1.0):
                for _ in range(3):
                    connection.execute("SELECT pg_sleep(0.4)")

        error, _ = timed(without_renewals)
        assert "no answer from the server within 1 s" in str(error)
        assert connection.closed
    watchdog.close()


def test_without_a_thread_to_keep_it_a_block_runs_unguarded(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interpreter at exit (its atexit hooks, where Aegis shuts down and
    the alert thread releases its lease) starts no thread: the block runs as
    it would have without deadlines, rather than failing."""

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    watchdog = Watchdog("test-deadlines")
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        with monkeypatch.context() as patched:
            patched.setattr(threading.Thread, "start", refuse)
            with watchdog.deadline(connection, 0.05) as deadline:
                assert watchdog.armed == 0
                assert connection.execute("SELECT 1").fetchone() == (1,)
        assert not deadline.missed
        assert connection.execute("SELECT 2").fetchone() == (2,)


def test_a_read_on_a_pooled_connection_of_a_hung_server_fails_within_read_timeout(
    forwarded: tuple[str, Forwarder], sinks: Callable[[str], PostgresSink]
) -> None:
    """The pool's idle connection is checked before it is lent: with the
    server hung, the check gets ``read_timeout``, not forever."""
    url, forwarder = forwarded
    sink = sinks(url)
    sink.set_read_timeout(0.5)
    served(sink)  # the pool keeps its connection
    forwarder.freeze()
    error, took = timed(lambda: sink.read_rollups(60, 0, 0, by_route=False))
    assert isinstance(error, psycopg.OperationalError), error
    assert sink.read_unavailable(error)  # the breaker takes it for an outage
    assert took < 0.5 + 2.5, took


def test_a_borrowed_connection_is_cut_at_its_statement_timeout_plus_read_timeout(
    forwarded: tuple[str, Forwarder], sinks: Callable[[str], PostgresSink]
) -> None:
    """Checked and lent, then the server hangs: the statement timeout in effect
    (the URL's own here, 1 s) plus ``read_timeout`` later the call ends."""
    url, forwarder = forwarded
    sink = sinks(f"{url}%20-cstatement_timeout%3D1000")
    sink.set_read_timeout(0.5)

    def call_after_the_server_hung() -> None:
        with sink._reader.borrow() as connection:
            forwarder.freeze()
            connection.execute("SELECT 1")

    error, took = timed(call_after_the_server_hung)
    assert isinstance(error, psycopg.OperationalError), error
    assert "no answer from the server within 1.5 s" in str(error)
    assert 1.4 < took < 1.5 + 2.5, took


def test_the_alert_stores_calls_end_too(
    forwarded: tuple[str, Forwarder], sinks: Callable[[str], PostgresSink]
) -> None:
    """The alert threads and the incidents borrow from a pool of their own: a
    call's check of its idle connection is bounded by that pool's wait (its
    borrow, as the reads', by the statement timeout in effect, ours here,
    plus that wait)."""
    url, forwarder = forwarded
    sink = sinks(url)
    reader = sink._alerts
    reader.timeout = 0.5
    with reader.borrow() as connection:
        assert reader._limits[connection] == 30.0
        assert connection.execute("SHOW statement_timeout").fetchone() == ("30s",)
    forwarder.freeze()
    store = sink.alert_store()
    error, took = timed(store.load)
    assert isinstance(error, psycopg.OperationalError), error
    assert took < 0.5 + 2.5, took


def test_a_slow_link_still_gets_connections(
    postgres_url: str, sinks: Callable[[str], PostgresSink]
) -> None:
    """A new connection's set-up (two round trips, in the pool's worker) is not
    held to a ``read_timeout`` shorter than them: with round trips of 0.2 s
    and ``read_timeout=0.38``, the first reads give up while the pool connects
    (a handshake of several round trips), and then reads work."""
    assert sinks(postgres_url).read_rollups(60, 0, 0, by_route=False) == []  # migrated
    port = free_port()
    url, real = forwarded_url(postgres_url, port)
    with closing(Forwarder(port, real, delay=0.1)):
        sink = sinks(url)
        sink.set_read_timeout(0.38)
        served(sink)


@pytest.mark.forks
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_a_forked_child_keeps_deadlines_of_its_own(postgres_url: str) -> None:
    """Forked while the parent's watchdog lock was held (its thread firing, or
    another thread arming): the child's deadlines neither wait for that lock
    nor count on the parent's thread."""
    watchdog = Watchdog("test-deadlines")
    with (
        psycopg.connect(postgres_url, autocommit=True) as connection,
        watchdog.deadline(connection, 5.0),  # the parent's thread runs
    ):
        pass

    def in_child() -> dict[str, Any]:
        with (
            psycopg.connect(postgres_url, autocommit=True) as own,
            watchdog.deadline(own, 0.3),
        ):
            own.execute("SELECT pg_sleep(10)")  # cut by the child's own thread
        return {"ok": False}

    with watchdog._condition:  # held across the fork
        code, report = run_in_child(in_child)
    assert code == 2 and "no answer from the server within 0.3 s" in report["exception"], report


def stored_requests(postgres_url: str) -> list[str]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        rows = connection.execute("SELECT request_id FROM aegis_requests ORDER BY request_id")
        return [row[0] for row in rows]


def test_a_write_to_a_hung_server_is_cut_and_the_next_one_connects_again(
    forwarded: tuple[str, Forwarder],
    sinks: Callable[[str], PostgresSink],
    sinks_thread: ThreadPoolExecutor,
    postgres_url: str,
) -> None:
    """The write connection's server process hangs (its kernel acknowledging,
    so ``tcp_user_timeout`` never fires): the write ends at the statement
    timeout in effect (the URL's, 1 s) plus ``write_grace`` (1 s), instead of
    holding the sink's thread as long as the server stays hung; the next
    write opens a new connection, which a server answering again (another at
    the same address, say) takes, and the batch cut is stored once."""
    url, forwarder = forwarded
    sink = sinks(f"{url}%20-cstatement_timeout%3D1000")
    sink.write_grace = 1.0

    def write(batch: Batch) -> tuple[BaseException | None, float]:
        return timed(lambda: sink.write(batch), thread=sinks_thread)

    assert write(Batch(requests=[make_request(1)], batch_id="b.1"))[0] is None
    forwarder.freeze()
    cut = Batch(requests=[make_request(2)], batch_id="b.2")
    error, took = write(cut)
    assert isinstance(error, psycopg.OperationalError), error
    assert "no answer from the server within 2 s" in str(error)
    assert 1.9 < took < 2 + 3, took
    forwarder.thaw()
    assert write(cut)[0] is None  # the flusher's retry, under the same id
    assert write(Batch(requests=[make_request(3)], batch_id="b.3"))[0] is None
    assert len(stored_requests(postgres_url)) == 3
    timed(sink.close, thread=sinks_thread)  # its write connection closed by its thread


@pytest.mark.parametrize("call", ["prune", "claim_lease", "hosts_seen", "release_lease"])
def test_the_write_connections_other_calls_end_too(
    call: str,
    forwarded: tuple[str, Forwarder],
    sinks: Callable[[str], PostgresSink],
    sinks_thread: ThreadPoolExecutor,
) -> None:
    """Pruning and the leases (the sink's thread, on its write connection) get
    the same deadline as a write: the statement timeout in effect, ours here
    (30 s, as the write connection shows), plus ``write_grace``."""
    url, forwarder = forwarded
    sink = sinks(url)

    def set_up() -> None:
        sink.write(Batch())  # connected, set up
        assert sink._connection is not None
        assert sink._connection.execute("SHOW statement_timeout").fetchone() == ("30s",)

    assert timed(set_up, thread=sinks_thread)[0] is None
    sink.write_grace = -29.0  # a deadline of 1 s past ours, without waiting 30 s for it
    calls: dict[str, Callable[[], object]] = {
        "prune": lambda: sink.prune(time.time(), {}, 100),
        "claim_lease": lambda: sink.claim_lease("test", "me", time.time(), 10.0),
        "hosts_seen": lambda: sink.hosts_seen("me", time.time(), 10.0),
        "release_lease": lambda: sink.release_lease("test", "me"),
    }
    forwarder.freeze()
    error, took = timed(calls[call], thread=sinks_thread)
    assert isinstance(error, psycopg.OperationalError), error
    assert "no answer from the server within 1 s" in str(error)
    assert took < 1 + 2.5, took
    assert sink._connection is None  # the next call connects again


def test_a_slow_links_write_connection_is_set_up_all_the_same(
    postgres_url: str, sinks: Callable[[str], PostgresSink], sinks_thread: ThreadPoolExecutor
) -> None:
    """A new write connection's set-up (seven round trips) is not held to a
    write deadline shorter than them: with round trips of 0.5 s, a deadline
    of 2.1 s (the URL's statement timeout of 0.1 s, and 2 s of
    ``write_grace``) lets a write of two round trips through, and the set-up
    before it all the same."""
    sinks(postgres_url).write(Batch())  # migrated: the set-up is what is timed
    port = free_port()
    url, real = forwarded_url(postgres_url, port)
    with closing(Forwarder(port, real, delay=0.25)):
        sink = sinks(f"{url}%20-cstatement_timeout%3D100")
        sink.write_grace = 2.0
        error, _ = timed(lambda: sink.write(Batch()), thread=sinks_thread)
        assert error is None, error
        timed(sink.close, thread=sinks_thread)


def test_a_prune_step_the_server_cancels_stops_that_prune_and_the_next_goes_past_it(
    postgres_url: str,
    sinks: Callable[[str], PostgresSink],
    sinks_thread: ThreadPoolExecutor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The write connection's statement timeout (the URL's 0.5 s here) cancels
    a step stuck behind a lock: logged, that prune stops there (one timeout
    spent on the sink's thread, not one per step), and the next starts at
    the step after it, so the tables after a locked one are pruned too."""
    sink = sinks(f"{postgres_url}%20-cstatement_timeout%3D500")
    old = 1_700_000_000.0
    audited: list[list[dict[str, Any]]] = []

    def prune() -> None:
        sink.write(Batch(requests=[make_request(1)]))  # long expired
        sink.audit_log().add(old, "tester", "POST", "events", {"accepted": 1})
        with psycopg.connect(postgres_url) as locker:  # a transaction, open
            locker.execute("LOCK TABLE aegis_events IN ACCESS EXCLUSIVE MODE")
            sink.prune(time.time(), {}, 100)  # requests, then events: cancelled
            audited.append(sink.audit_log().latest(10))
            sink.prune(time.time(), {}, 100)  # from after events: the audit, ...

    error, _ = timed(prune, thread=sinks_thread)
    assert error is None, error
    assert caplog.text.count("pruning aegis_events was cancelled") == 2
    assert stored_requests(postgres_url) == []
    assert len(audited[0]) == 1  # the first prune stopped before the audit's step
    assert sink.audit_log().latest(10) == []
    timed(sink.close, thread=sinks_thread)
