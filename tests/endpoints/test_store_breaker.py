"""The history store's breaker through the middlewares: a WSGI app whose
PostgreSQL store hangs (reads run in the server's worker threads there, so the
short timeout and the breaker are all that keeps them short), and SQLite files
that are locked or not a database. Each time: the first read fails within its
timeout, the next ones are answered 503 at once with Retry-After without
touching the store, and once the store is back and the retry interval has
passed, one read tries it and reads work again."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.history.breaker import StoreBreaker
from aegis_mw.sinks.sqlite import SQLiteSink
from aegis_mw.testing import FakeClock
from aegis_mw.wsgi import AegisWSGIMiddleware
from tests.endpoints.stores import HungStore
from tests.wsgi.test_middleware import environ_for, serve

OVERVIEW = {"QUERY_STRING": "range=5m"}


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


def read(
    middleware: Any, path: str = "/api/metrics/overview", **extra: str
) -> tuple[int, dict[str, str], dict[str, Any], float]:
    """One API read (the overview by default): status, headers, body and
    the seconds it took."""
    started = time.monotonic()
    fields = extra or (OVERVIEW if path == "/api/metrics/overview" else {})
    response, body = serve(middleware, environ_for(path, **fields))
    took = time.monotonic() - started
    headers = {name.lower(): value for name, value in response.headers}
    return int(response.status[:3]), headers, json.loads(body), took


def assert_refused(answer: tuple[int, dict[str, str], dict[str, Any], float]) -> None:
    status, headers, body, _ = answer
    assert status == 503, body
    assert body["error"]["code"] == "storage_unavailable", body
    assert int(headers["retry-after"]) >= 1, headers


def test_a_wsgi_app_reads_a_hung_store_briefly_then_not_at_all(
    make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    with closing(HungStore()) as store:
        aegis = make_aegis(
            clock=clock,
            sink=store.url,
            read_timeout=2.0,
            read_retry_after=10,
            flush_interval=3600,
            metrics_registry="none",
        )
        middleware = AegisWSGIMiddleware(wsgi_app, aegis=aegis)
        caplog.clear()  # what start-up said aside
        first = read(middleware)
        assert_refused(first)
        assert 2.0 <= first[3] < 6.0  # read_timeout, not psycopg_pool's 30 s or our old 10 s
        for _ in range(5):
            again = read(middleware)
            assert_refused(again)
            assert again[3] < 1.0  # at once: not read_timeout again
        clock.advance(10.0)  # half-open: the next read tries the store again
        probe = read(middleware)
        assert_refused(probe)
        assert probe[3] >= 2.0
    assert [r.exc_info for r in caplog.records if r.name.startswith("aegis_mw")] == [None]


def locked(path: Path) -> sqlite3.Connection:
    """A connection holding ``path`` exclusively: nobody else can read it."""
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("PRAGMA locking_mode = EXCLUSIVE")
    locker.execute("BEGIN EXCLUSIVE")
    return locker


def test_a_locked_sqlite_file_is_refused_at_once_until_it_is_free(
    make_aegis: Callable[..., Aegis], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "aegis.db"
    SQLiteSink(str(path)).close()  # the file and its schema, then nobody holds it
    locker = locked(path)
    clock = FakeClock()
    aegis = make_aegis(clock=clock, sink=f"sqlite:///{path}", read_retry_after=5,
                       flush_interval=3600, metrics_registry="none")  # fmt: skip
    middleware = AegisWSGIMiddleware(wsgi_app, aegis=aegis)
    assert_refused(read(middleware))  # after the sink's own open gave up on the lock
    locker.close()
    still = read(middleware)
    assert_refused(still)  # free now, but known down: not tried before the interval
    assert still[3] < 1.0  # at once, not after read_timeout (2 s)
    clock.advance(5.0)
    status, _, body, _ = read(middleware)
    assert status == 200 and body["data"]["total"] == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "aegis_mw.history"]
    assert len(messages) == 2, messages
    assert "cannot be read (OperationalError: database is locked)" in messages[0]
    assert "can be read again" in messages[1]


def test_a_file_that_is_not_a_database_is_refused_at_once(
    make_aegis: Callable[..., Aegis], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "aegis.db"
    path.write_bytes(b"not a database, " * 512)
    clock = FakeClock()
    aegis = make_aegis(clock=clock, sink=f"sqlite:///{path}", read_retry_after=5,
                       flush_interval=3600, metrics_registry="none")  # fmt: skip
    middleware = AegisWSGIMiddleware(wsgi_app, aegis=aegis)
    for _ in range(3):
        assert_refused(read(middleware))
    path.unlink()  # the sink creates a fresh file on its next open
    clock.advance(5.0)
    assert read(middleware)[0] == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "aegis_mw.history"]
    assert len(messages) == 2, messages
    assert "cannot be read (DatabaseError: file is not a database)" in messages[0]
    assert all(r.exc_info is None for r in caplog.records)


EDITOR = "editor-token-of-the-incidents-test"
EDITING = {"CONTENT_TYPE": "application/json", "HTTP_AUTHORIZATION": f"Bearer {EDITOR}"}
#: A rule the alert writes and dry runs are given.
RULE = {"name": "checkout_errors", "input": "error_ratio", "operator": ">",
        "threshold": 0.05, "window": "5m", "severity": "critical"}  # fmt: skip


def locked_store(
    make_aegis: Callable[..., Aegis], path: Path
) -> tuple[sqlite3.Connection, FakeClock, Aegis, AegisWSGIMiddleware]:
    """A WSGI app with alerts on, its SQLite store at ``path`` held locked by
    the connection returned, on a fake clock; editors hold ``EDITOR``."""
    SQLiteSink(str(path)).close()
    locker = locked(path)
    clock = FakeClock()
    aegis = make_aegis(clock=clock, sink=f"sqlite:///{path}", read_retry_after=5,
                       flush_interval=3600, metrics_registry="none", alerts_enabled=True,
                       access={"api": {"editor_tokens": [EDITOR]}})  # fmt: skip
    return locker, clock, aegis, AegisWSGIMiddleware(wsgi_app, aegis=aegis)


def history_breaker(aegis: Aegis) -> StoreBreaker:
    history = aegis.reads.history
    assert history is not None
    return history.breaker


def post(
    middleware: Any, path: str, data: dict[str, Any], method: str = "POST"
) -> tuple[int, dict[str, Any], float]:
    """One API write: status, body and the seconds it took."""
    started = time.monotonic()
    environ = environ_for(path, method=method, body=json.dumps(data).encode(), **EDITING)
    response, body = serve(middleware, environ)
    return int(response.status[:3]), json.loads(body), time.monotonic() - started


def test_the_stores_other_uses_answer_at_once_while_the_history_finds_it_down(
    make_aegis: Callable[..., Aegis], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The incidents and the alert store live in the history's store: while
    its breaker knows the store is down, their reads and writes answer 503
    with Retry-After at once (bad input still a 400); when a probe is due
    the first of them probes the store with a read, so they need no history
    read to find the store back or down; a write that fails on the store's
    write lock is no outage of the reads."""
    path = tmp_path / "aegis.db"
    locker, clock, aegis, middleware = locked_store(make_aegis, path)
    breaker = history_breaker(aegis)
    incident = {"title": "Checkout down", "severity": "critical"}
    assert_refused(read(middleware, **OVERVIEW, **EDITING))  # the history finds it down
    for path_read in ("/api/metrics/incidents", "/api/metrics/alert-history",
                      "/api/metrics/silences"):  # fmt: skip
        refused = read(middleware, path_read, **EDITING)
        assert_refused(refused)
        assert refused[3] < 1.0  # at once: not after the store's busy timeout
    bad = read(middleware, "/api/metrics/incidents", QUERY_STRING="limit=0", **EDITING)
    assert bad[0] == 400  # the input checked first
    status, body, took = post(middleware, "/api/metrics/incidents", incident)
    assert (status, body["error"]["code"]) == (503, "storage_unavailable") and took < 1.0
    assert post(middleware, "/api/metrics/incidents", {"severity": "critical"})[0] == 400
    silence = {"matchers": ['alertname="checkout"'], "duration": "2h", "comment": "deploy"}
    status, body, took = post(middleware, "/api/metrics/silences", silence)
    assert (status, body["error"]["code"]) == (503, "storage_unavailable") and took < 1.0
    for path_write, data, method in (
        ("/api/metrics/alert-rules", RULE, "PUT"),
        ("/api/metrics/alert-rules/dry-run", {"rule": RULE}, "POST"),
    ):
        status, body, took = post(middleware, path_write, data, method)
        assert (status, body["error"]["code"]) == (503, "storage_unavailable") and took < 1.0
        # Worded for a read (the dry run) as well as a write.
        assert "the alert store cannot be reached now" in body["error"]["message"], body
    assert (
        post(middleware, "/api/metrics/alert-rules", {**RULE, "threshold": "high"}, "PUT")[0] == 400
    )
    assert breaker.state == "open"  # as the history's read left it

    # Due for a probe, no history read coming: the first of these uses
    # probes the store with a read; still locked, the breaker opens again,
    # and the next ones answer at once instead of each waiting for the store.
    # A dry run (which reads the store through its own reader, its errors
    # being the rule's health) is refused the same way, never closing it.
    for first in (
        lambda: post(middleware, "/api/metrics/incidents", incident),
        lambda: post(middleware, "/api/metrics/alert-rules/dry-run", {"rule": RULE}, "POST"),
    ):
        clock.advance(5.0)
        status, body, _ = first()
        assert (status, body["error"]["code"]) == (503, "storage_unavailable")
        assert breaker.state == "open"
        for _ in range(2):
            status, body, took = post(middleware, "/api/metrics/incidents", incident)
            assert (status, body["error"]["code"]) == (503, "storage_unavailable") and took < 1.0
            refused = read(middleware, "/api/metrics/silences", **EDITING)
            assert_refused(refused)
            assert refused[3] < 1.0

    locker.close()
    clock.advance(5.0)  # due again: a read's probe, and the store is back
    assert read(middleware, "/api/metrics/silences", **EDITING)[0] == 200
    assert breaker.state == "closed"
    assert post(middleware, "/api/metrics/incidents", incident)[0] == 201
    listed = read(middleware, "/api/metrics/incidents", **EDITING)
    assert [i["title"] for i in listed[2]["data"]["incidents"]] == ["Checkout down"]
    assert read(middleware, **OVERVIEW, **EDITING)[0] == 200

    # A write that waits for the write lock in vain: 503, the reads unaffected,
    # whether the breaker was closed or due for a probe (the probe's read,
    # which the write lock does not stop, closes it; the write opens nothing).
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        assert post(middleware, "/api/metrics/incidents", incident)[0] == 503
        assert breaker.state == "closed"
        breaker.failed(sqlite3.OperationalError("database is locked"))
        clock.advance(5.0)
        # The probe opens a connection of its own (none idle), whose schema
        # check must not wait for the write lock either.
        sink = aegis.sinks[0]
        assert isinstance(sink, SQLiteSink)
        sink._reader.close()
        assert post(middleware, "/api/metrics/incidents", incident)[0] == 503
        assert breaker.state == "closed"
    finally:
        writer.close()
    assert read(middleware, **OVERVIEW, **EDITING)[0] == 200
    messages = [r.getMessage() for r in caplog.records if r.name == "aegis_mw.history"]
    assert len(messages) == 4 and "can be read again" in messages[1], messages
    assert "can be read again" in messages[3], messages


def test_a_second_dry_run_while_one_probes_the_store_is_told_busy(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    """A dry run takes its one-at-a-time lock before the store is probed: a
    second one while the first probes is a 429 ``busy`` at once (not a 503
    for the probe that is out, nor a second wait for the store)."""
    path = tmp_path / "aegis.db"
    locker, clock, aegis, middleware = locked_store(make_aegis, path)
    breaker = history_breaker(aegis)
    dry_run = "/api/metrics/alert-rules/dry-run"
    try:
        assert_refused(read(middleware, **OVERVIEW, **EDITING))  # the store found down
        clock.advance(5.0)  # due: the next use probes, and waits for the locked file
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, middleware, dry_run, {"rule": RULE}, "POST")
            deadline = time.monotonic() + 10.0
            while breaker.state != "probing" and not first.done():
                assert time.monotonic() < deadline, "the first dry run never probed"
                time.sleep(0.001)
            status, body, took = post(middleware, dry_run, {"rule": RULE}, "POST")
            assert (status, body["error"]["code"]) == (429, "busy") and took < 1.0
            status, body, _ = first.result(timeout=30)
        assert (status, body["error"]["code"]) == (503, "storage_unavailable")
        assert breaker.state == "open"
    finally:
        locker.close()
