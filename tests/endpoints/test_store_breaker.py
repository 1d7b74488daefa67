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
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
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


def incidents_read(middleware: Any) -> tuple[int, dict[str, str], dict[str, Any], float]:
    return read(middleware, "/api/metrics/incidents", **EDITING)


def test_incident_reads_and_writes_pass_through_the_same_breaker(
    make_aegis: Callable[..., Aegis], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The incidents live in the history's store: while it is known down,
    their reads and writes are answered 503 at once too, and once it is back
    one read tries it and they work again."""
    path = tmp_path / "aegis.db"
    SQLiteSink(str(path)).close()
    locker = locked(path)
    clock = FakeClock()
    aegis = make_aegis(clock=clock, sink=f"sqlite:///{path}", read_retry_after=5,
                       flush_interval=3600, metrics_registry="none",
                       access={"api": {"editor_tokens": [EDITOR]}})  # fmt: skip
    middleware = AegisWSGIMiddleware(wsgi_app, aegis=aegis)
    assert_refused(incidents_read(middleware))  # after the store's busy timeout
    refused = incidents_read(middleware)
    assert_refused(refused)
    assert refused[3] < 1.0  # at once: not after the store's busy timeout
    body = json.dumps({"title": "Checkout down", "severity": "critical"}).encode()
    write = environ_for("/api/metrics/incidents", method="POST", body=body, **EDITING)
    started = time.monotonic()
    response, answer = serve(middleware, write)
    assert response.status.startswith("503"), answer
    assert time.monotonic() - started < 1.0
    assert json.loads(answer)["error"]["code"] == "storage_unavailable"
    locker.close()
    clock.advance(5.0)
    status, _, listed, _ = incidents_read(middleware)  # the probe: the store is back
    assert status == 200 and listed["data"]["incidents"] == []
    write = environ_for("/api/metrics/incidents", method="POST", body=body, **EDITING)
    response, answer = serve(middleware, write)
    assert response.status.startswith("201"), answer
    assert [i["title"] for i in incidents_read(middleware)[2]["data"]["incidents"]] == [
        "Checkout down"
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "aegis_mw.history"]
    assert len(messages) == 2 and "can be read again" in messages[1], messages
