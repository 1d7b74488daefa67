"""Reads and the alert store's calls against a PostgreSQL server that hung with
their connection open: the client's own deadlines end them (a server that runs
has its statement timeout; a stopped one answers nothing, ever). The real
server is never stopped: a forwarder to it freezes, its connections left open."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from aegis_mw.sinks.postgres import PostgresSink  # noqa: E402
from aegis_mw.sinks.postgres_deadline import Deadline  # noqa: E402
from tests.endpoints.stores import Forwarder, forwarded_url  # noqa: E402
from tests.servers import free_port  # noqa: E402

#: How long a test waits for what must end sooner; past it, the test fails
#: instead of hanging (a hung read ends when the forwarder closes).
WAIT = 20.0


@pytest.fixture
def forwarded(postgres_url: str) -> Iterator[tuple[str, Forwarder]]:
    """The test's PostgreSQL URL through a forwarder, and the forwarder."""
    port = free_port()
    url, real = forwarded_url(postgres_url, port)
    with closing(Forwarder(port, real)) as forwarder:
        yield url, forwarder


def timed(call: Callable[[], Any]) -> tuple[BaseException | None, float]:
    """What ``call`` raised (None if nothing) and the seconds it took, run in
    a thread so that a call that hangs fails the test after WAIT."""

    def run() -> tuple[BaseException | None, float]:
        started = time.monotonic()
        try:
            call()
        except Exception as error:
            return error, time.monotonic() - started
        return None, time.monotonic() - started

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(run).result(timeout=WAIT)
    finally:
        pool.shutdown(wait=False)  # a hung call: the test fails, and then the forwarder closes


def test_a_deadline_cuts_a_statement_and_says_so(postgres_url: str) -> None:
    """On a live server too: the connection is shut down when the deadline
    passes, and the error names the wait, not a server that closed it."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:

        def sleep_past_the_deadline() -> None:
            with Deadline(connection, 0.3):
                connection.execute("SELECT pg_sleep(10)")

        error, took = timed(sleep_past_the_deadline)
        assert isinstance(error, psycopg.OperationalError), error
        assert "no answer from the server within 0.3 s" in str(error)
        assert 0.25 < took < 5, took
        assert connection.broken


def test_a_deadline_disarmed_in_time_leaves_the_connection_alone(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        deadline = Deadline(connection, 0.2)
        with deadline:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        deadline._timer.join(WAIT)  # cancelled: ends at once, never fires
        assert not deadline._timer.is_alive() and not deadline.missed
        assert connection.execute("SELECT 2").fetchone() == (2,)


def test_a_read_on_a_pooled_connection_of_a_hung_server_fails_within_read_timeout(
    forwarded: tuple[str, Forwarder], sinks: Callable[[str], PostgresSink]
) -> None:
    """The pool's idle connection is checked before it is lent: with the
    server hung, the check gets ``read_timeout``, not forever."""
    url, forwarder = forwarded
    sink = sinks(url)
    sink.set_read_timeout(0.5)
    assert sink.read_rollups(60, 0, 0, by_route=False) == []  # the pool keeps it
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
    """The alert threads and the incidents borrow from a pool of their own:
    its check is bounded by that pool's wait, a call on it by the statement
    timeout (ours, 30 s, where nobody chose one) plus that wait."""
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
