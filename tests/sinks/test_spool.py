"""The spool of a remote sink: batches kept on local disk while the store is
unreachable, replayed once it returns, stored exactly once. Against a
PostgreSQL server of the test's own, stopped and started (never the
machine's shared one), and real spool files."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aegis_mw import Aegis
from aegis_mw.core import spool_codec
from aegis_mw.core.errors import ConfigError
from aegis_mw.core.gil_slices import Slices
from aegis_mw.core.record import Batch, RequestRecord
from aegis_mw.core.rollup import RollupDelta
from aegis_mw.core.spooling import Spooled, SpoolFull
from aegis_mw.health.builtin import spool_health
from aegis_mw.sinks.spool_file import FILE_NAME, SpoolFile
from tests.private_postgres import PrivatePostgres
from tests.servers import promtool_checks

psycopg = pytest.importorskip("psycopg")

T0 = 1_764_950_000.0
#: The sinks a test opened, closed after it.
OPENED: list[Any] = []


@pytest.fixture(scope="module")
def server() -> Iterator[PrivatePostgres]:
    postgres = PrivatePostgres()
    postgres.start()
    yield postgres
    postgres.remove()


@pytest.fixture
def store(server: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The server running, with nothing of ours in it, and running again after the test."""
    with psycopg.connect(server.url, autocommit=True) as connection:
        connection.execute("DROP SCHEMA public CASCADE")
        connection.execute("CREATE SCHEMA public")
    yield server
    while OPENED:  # closed here, so that a failed test leaves no connection behind
        OPENED.pop().close()
    if not _up(server):
        server.start()


def _up(server: PrivatePostgres) -> bool:
    try:
        psycopg.connect(server.url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return False
    return True


def request(number: int, prefix: str = "a", **changes: Any) -> RequestRecord:
    record = RequestRecord(
        f"{prefix}{number:031x}", T0 + number / 1000, "GET", "/items/{id}", f"/items/{number}",
        200, 2.5, 1.0, 0, 64, "127.0.0.1", "",
    )  # fmt: skip
    return record._replace(**changes)


def batch_of(numbers: range, batch_id: str, prefix: str = "a", **changes: Any) -> Batch:
    records = [request(number, prefix, **changes) for number in numbers]
    delta = RollupDelta()
    for record in records:
        delta.add(record.timestamp, record.route, record.method, record.status,
                  record.duration_ms, False, 0, record.response_bytes)  # fmt: skip
    delta.delta_id = f"delta-{batch_id}"
    return Batch(records, rollups=delta, batch_id=batch_id)


def stored(url: str) -> tuple[list[str], int]:
    """The stored request paths (with repeats) and the requests the rollups count."""
    with psycopg.connect(url) as connection:
        paths = [row[0] for row in connection.execute("SELECT path FROM aegis_requests")]
        counted = connection.execute(
            "SELECT coalesce(sum(count), 0) FROM aegis_rollup_totals WHERE resolution = 5"
        ).fetchone()[0]
    return paths, int(counted)


def spool_file(tmp_path: Path, sink: str = "pg", **options: Any) -> SpoolFile:
    options.setdefault("limit_bytes", 1 << 30)
    options.setdefault("lease_seconds", 60.0)
    return SpoolFile(str(tmp_path / FILE_NAME), sink, **options)


# -- the file -------------------------------------------------------------------


def test_the_file_keeps_batches_in_order_once_each_owner_only(tmp_path: Path) -> None:
    spool = spool_file(tmp_path)
    assert spool.append("b1", 3, 10.0, b"one")
    assert spool.append("b2", 2, 5.0, b"two")
    assert not spool.append("b1", 3, 10.0, b"one")  # a retried write: kept once
    view = spool.view()
    # The oldest: the first batch's earliest record (batches come in order).
    assert (view.batches, view.records, view.bytes, view.oldest) == (2, 5, 6, 10.0)
    assert stat.S_IMODE(os.stat(tmp_path / FILE_NAME).st_mode) == 0o600
    first = spool.first()
    assert first is not None and first[1:] == (3, b"one")
    spool.remove(first[0])
    spool.release()  # a clean shutdown
    spool.close()
    again = spool_file(tmp_path)  # a restart: the rest is still there
    assert again.first() is not None and again.first()[1:] == (2, b"two")  # type: ignore[index]
    assert spool_file(tmp_path, "other").view().batches == 0


def test_the_bound_refuses_a_batch_that_does_not_fit_whole(tmp_path: Path) -> None:
    spool = spool_file(tmp_path, limit_bytes=10)
    spool.append("b1", 1, 1.0, b"x" * 6)
    with pytest.raises(SpoolFull, match="spool_max_bytes"):
        spool.append("b2", 1, 1.0, b"x" * 5)
    # Across its sinks: the bound is the file's.
    with pytest.raises(SpoolFull):
        spool_file(tmp_path, "other", limit_bytes=10).append("b3", 1, 1.0, b"x" * 5)
    spool.append("b4", 1, 1.0, b"x" * 4)
    assert spool.view().bytes == 10


def test_one_process_replays_a_sink_at_a_time_until_its_lease_runs_out(tmp_path: Path) -> None:
    first = spool_file(tmp_path, lease_seconds=0.5)
    second = spool_file(tmp_path, lease_seconds=0.5)
    first.append("b1", 1, 1.0, b"one")
    assert first.first() is not None
    assert second.first() is None  # the first holds the lease
    first.release()  # a clean shutdown
    assert second.first() is not None
    deadline = time.monotonic() + 5
    while first.first() is None:  # the second stopped renewing: taken over
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _spool_and_count(path: str, prefix: str, ready: Any) -> None:
    spool = SpoolFile(path, "pg", limit_bytes=1 << 30, lease_seconds=60.0)
    ready.wait()
    for number in range(50):
        spool.append(f"{prefix}{number}", 1, 1.0, b"p")


def test_processes_spool_into_one_file_together(tmp_path: Path) -> None:
    path = str(tmp_path / FILE_NAME)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    children = [
        context.Process(target=_spool_and_count, args=(path, prefix, ready)) for prefix in "abc"
    ]
    for child in children:
        child.start()
    ready.set()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert spool_file(tmp_path).view().batches == 150


# -- through the spool, against the store ------------------------------------------


def spooled(server: PrivatePostgres, tmp_path: Path, **options: Any) -> tuple[Spooled, Any]:
    from aegis_mw.sinks.postgres import PostgresSink

    sink = PostgresSink(server.url)
    OPENED.append(sink)
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.01)
    return Spooled(sink.write, spool_file(tmp_path), sink_timeout=8.0, **options), sink


def _wait_retry(spool: Spooled) -> None:
    while time.monotonic() < spool.retry_at:
        time.sleep(0.005)


def test_an_outage_is_spooled_and_replayed_in_order_exactly_once(
    store: PrivatePostgres, tmp_path: Path
) -> None:
    through, sink = spooled(store, tmp_path)
    through(batch_of(range(10), "b0"))
    store.stop()
    for number in range(1, 5):
        through(batch_of(range(number * 10, number * 10 + 10), f"b{number}"))
    through(batch_of(range(40, 50), "b4"))  # resent after a timeout: kept and counted once
    assert through.spooled == 40 and through.view.records == 40 and through.failures
    assert through.last_error  # the store's own words
    store.start()
    _wait_retry(through)
    through(batch_of(range(50, 60), "b5"))  # replays the four first; this one waits its turn
    assert (through.replayed, through.view.batches, through.failures) == (40, 1, 0)
    through(Batch())  # as the flusher calls it while batches wait
    assert (through.replayed, through.view.batches) == (50, 0)
    # A replay that is sent again (two processes, a lost answer) stores nothing twice.
    for number in range(1, 3):
        sink.write(batch_of(range(number * 10, number * 10 + 10), f"b{number}"))
    paths, counted = stored(store.url)
    assert sorted(paths) == sorted(f"/items/{number}" for number in range(60))
    assert counted == 60
    with psycopg.connect(store.url) as connection:
        ids = [row[0] for row in connection.execute(
            "SELECT batch_id FROM aegis_batches ORDER BY applied_at, batch_id")]  # fmt: skip
    assert ids == [f"b{number}" for number in range(6)]  # the order they came in


def test_the_spool_refusing_a_batch_hands_back_the_stores_error(
    store: PrivatePostgres, tmp_path: Path
) -> None:
    from aegis_mw.sinks.postgres import PostgresSink

    sink = PostgresSink(store.url)
    OPENED.append(sink)
    tiny = Spooled(
        sink.write, spool_file(tmp_path, limit_bytes=64), sink_timeout=8.0,
        backoff_initial=0.01, backoff_max=0.01,
    )  # fmt: skip
    store.stop()
    with pytest.raises(psycopg.OperationalError):
        tiny(batch_of(range(500), "big", path="/" + os.urandom(200).hex()))
    assert tiny.spooled == 0 and tiny.view.batches == 0


def test_records_the_store_refuses_on_replay_are_let_go_and_the_rest_stored(
    store: PrivatePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    through, _sink = spooled(store, tmp_path)
    store.stop()
    batch = batch_of(range(40), "mixed")
    records = list(batch.requests)
    records[7] = records[7]._replace(path="/nul\x00byte")  # PostgreSQL refuses NUL in text
    records[30] = records[30]._replace(error="also\x00refused")
    through(Batch(records, rollups=batch.rollups, batch_id="mixed"))
    assert through.view.records == 40
    store.start()
    _wait_retry(through)
    with caplog.at_level("ERROR", logger="aegis_mw.flusher"):
        through(Batch())
    assert (through.rejected, through.replayed, through.view.batches) == (2, 38, 0)
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1  # one line a batch
    paths, counted = stored(store.url)
    assert sorted(paths) == sorted(f"/items/{n}" for n in range(40) if n not in (7, 30))
    assert counted == 40  # the rollups were refused nothing
    # Searched again after a crash in the middle: the parts' ids are the same.
    through._store(Batch(records, rollups=batch.rollups, batch_id="mixed"), 0, time.monotonic() + 60,
                   Slices())  # fmt: skip
    assert stored(store.url) == (paths, counted)


def test_a_refused_rollup_cell_costs_only_its_own_requests(
    store: PrivatePostgres, tmp_path: Path
) -> None:
    through, _sink = spooled(store, tmp_path)
    store.stop()
    batch = batch_of(range(40), "cells")
    records = list(batch.requests)
    records[3] = records[3]._replace(route="/nul\x00route")  # its own cell, refused
    delta = RollupDelta()
    for record in records:
        delta.add(record.timestamp, record.route, record.method, record.status,
                  record.duration_ms, False, 0, record.response_bytes)  # fmt: skip
    delta.delta_id = "delta-cells"
    through(Batch(records, rollups=delta, batch_id="cells"))
    store.start()
    _wait_retry(through)
    through(Batch())
    assert (through.rejected, through.rollups_rejected, through.view.batches) == (1, 1, 0)
    paths, counted = stored(store.url)
    assert len(paths) == 39 and counted == 39


def test_a_store_that_refuses_every_record_keeps_the_spool_and_is_backed_off_from(
    store: PrivatePostgres, tmp_path: Path
) -> None:
    through, sink = spooled(store, tmp_path, backoff_initial=60, backoff_max=60)
    sink.write(batch_of(range(1), "first"))  # the tables exist
    store.stop()
    for number in range(3):
        through(batch_of(range(number * 100, number * 100 + 100), f"b{number}"))
    store.start()
    with psycopg.connect(store.url, autocommit=True) as connection:  # a column the app lacks
        connection.execute("ALTER TABLE aegis_requests ADD COLUMN tenant text")
        connection.execute("ALTER TABLE aegis_requests ADD CONSTRAINT tenant_set "
                           "CHECK (tenant IS NOT NULL) NOT VALID")  # fmt: skip
    through.retry_at = 0.0
    started = time.monotonic()
    through(Batch())
    assert time.monotonic() - started < 8.0 * 0.25 + 1.0  # a quarter of sink_timeout, and a write
    assert (through.rejected, through.replayed, through.view.records) == (0, 0, 300)
    assert through.failures and "refused every record" in through.last_error
    assert through.retry_at > time.monotonic() + 30  # backed off, as from an outage
    with psycopg.connect(store.url, autocommit=True) as connection:  # fixed
        connection.execute("ALTER TABLE aegis_requests DROP COLUMN tenant")
    through.retry_at = 0.0
    through(Batch())
    assert (through.rejected, through.replayed, through.view.records) == (0, 300, 0)
    assert len(stored(store.url)[0]) == 301


def test_a_batch_of_bad_records_alone_is_proved_bad_by_the_next_one(
    store: PrivatePostgres, tmp_path: Path
) -> None:
    through, _sink = spooled(store, tmp_path)
    store.stop()
    bad = [request(number, path="/\x00") for number in range(12)]  # more than HOLD_LIMIT
    through(Batch(bad, batch_id="bad"))
    through(batch_of(range(100, 110), "good"))
    store.start()
    _wait_retry(through)
    through(Batch())
    assert (through.rejected, through.replayed, through.view.batches) == (12, 10, 0)
    assert sorted(stored(store.url)[0]) == sorted(f"/items/{n}" for n in range(100, 110))


def test_an_unreadable_spooled_batch_is_counted_and_the_next_ones_replayed(
    store: PrivatePostgres, tmp_path: Path
) -> None:
    through, _sink = spooled(store, tmp_path)
    store.stop()
    through(batch_of(range(10), "b0"))
    through(batch_of(range(10, 20), "b1"))
    with sqlite3.connect(tmp_path / FILE_NAME) as connection:
        connection.execute("UPDATE aegis_spool SET payload = x'00ff' WHERE batch_id = 'b0'")
    store.start()
    _wait_retry(through)
    through(Batch())
    assert (through.unreadable, through.replayed, through.view.batches) == (10, 10, 0)
    assert sorted(stored(store.url)[0]) == sorted(f"/items/{n}" for n in range(10, 20))


async def _serve(aegis: Aegis, numbers: range, *reads: str) -> list[Any]:
    """``GET /items/{n}`` for each number through the middleware, then ``reads``."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from aegis_mw import AegisMiddleware

    app = Starlette(routes=[Route("/items/{n}", lambda _: PlainTextResponse("ok"))])
    app.add_middleware(AegisMiddleware, aegis=aegis)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for number in numbers:
            assert (await client.get(f"/items/{number}")).status_code == 200
        return [await client.get(path) for path in reads]


def test_a_restart_during_the_outage_replays_without_traffic(
    store: PrivatePostgres, tmp_path: Path
) -> None:
    options: dict[str, Any] = {
        "sink": store.url, "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05,
        "retry_backoff_initial": 0.05, "retry_backoff_max": 0.2,
    }  # fmt: skip
    first = Aegis(**options)
    anyio.run(_serve, first, range(20))
    assert first.force_flush(10)
    store.stop()
    anyio.run(_serve, first, range(20, 70))
    assert first.force_flush(10)
    sink = first.stats().sinks[0]
    assert (sink.spool_records, sink.spooled, sink.consecutive_failures) == (50, 50, 0)
    assert sink.spool_oldest_age_seconds > 0 and sink.spool_error
    outcome = spool_health(first).check()
    assert outcome.status == "warn" and "50 records spooled" in outcome.message
    assert outcome.details[sink.name]["records"] == 50
    metrics, ready = anyio.run(_serve, first, range(0), "/metrics", "/health/ready")
    assert f'aegis_spool_records{{sink="{sink.name}"}} 50' in metrics.text
    assert f'aegis_spool_limit_bytes{{sink="{sink.name}"}} {256 * 2**20}' in metrics.text
    promtool_checks(metrics.text)
    spool = ready.json()["checks"]["spool"][0]
    assert spool["status"] == "warn" and spool["details"][sink.name]["records"] == 50
    assert first.shutdown(10)
    store.start()
    second = Aegis(**options)  # no request: the spool is replayed all the same
    deadline = time.monotonic() + 30
    while second.stats().sinks[0].spool_records:
        assert time.monotonic() < deadline, second.stats().sinks[0]
        second.force_flush(5)
    sink = second.stats().sinks[0]
    assert (sink.replayed, sink.spool_lost) == (50, 0)
    assert spool_health(second).check().status == "pass"
    assert second.shutdown(10)
    paths, counted = stored(store.url)
    assert sorted(paths) == sorted(f"/items/{number}" for number in range(70))
    assert counted == 70


def test_a_write_connection_whose_server_process_stopped_is_given_up_in_time(
    store: PrivatePostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server process of the write connection stops (SIGSTOP: the kernel
    still acknowledges, so no TCP timeout fires; the server's other processes
    answer). The write is cut at the statement timeout in effect (the URL's,
    0.5 s) plus ``write_grace`` (0.5 s), its batch spooled, and the next
    connection replays it: every record stored once, none lost. Without the
    client's deadline the write would wait until the process is continued,
    and the sink stay busy meanwhile."""
    import signal

    from aegis_mw.sinks.postgres import PostgresSink

    sink = PostgresSink(f"{store.url}?options=-cstatement_timeout%3D500")
    sink.write_grace = 0.5
    aegis = Aegis(
        sink=sink, spool_dir=str(tmp_path / "spool"), flush_interval=0.05, sink_timeout=0.5,
        retry_backoff_initial=0.05, retry_backoff_max=0.2,
    )  # fmt: skip
    stopped = 0
    try:
        anyio.run(_serve, aegis, range(20))
        assert aegis.force_flush(10)
        assert sink._connection is not None  # the sink's thread's, read from here
        stopped = sink._connection.info.backend_pid
        os.kill(stopped, signal.SIGSTOP)
        anyio.run(_serve, aegis, range(20, 40))
        deadline = time.monotonic() + 30
        while len(stored(store.url)[0]) < 40 or aegis.stats().sinks[0].spool_records:
            assert time.monotonic() < deadline, aegis.stats().sinks[0]
            aegis.force_flush(1)
        stats = aegis.stats().sinks[0]
        assert stats.timeouts and (stats.spooled, stats.replayed) == (20, 20), stats
        assert not any(stats.dropped.values()) and stats.spool_lost == 0, stats
        assert "no answer from the server within 1 s" in caplog.text
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)  # its client closed the connection: it ends
        assert aegis.shutdown(10)
    paths, counted = stored(store.url)
    assert sorted(paths) == sorted(f"/items/{number}" for number in range(40))
    assert counted == 40


def test_a_spool_dir_needs_a_remote_sink_and_a_place_for_its_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spool_dir.*remote"):
        Aegis(sink=f"sqlite:///{tmp_path}/a.db", spool_dir=str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="spool_dir"):
        Aegis(sink="postgresql://nobody@127.0.0.1:1/none", spool_dir=str(blocker / "below"))
    with pytest.raises(ConfigError, match="spool_max_bytes"):
        Aegis(sink="memory://", spool_max_bytes=100)


def test_batches_of_a_sink_the_app_no_longer_has_are_named_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_file(tmp_path, "postgresql:old-host/metrics").append("b1", 7, 1.0, b"x")
    with caplog.at_level("WARNING", logger="aegis_mw"):
        aegis = Aegis(sink="postgresql://nobody@127.0.0.1:1/none", spool_dir=str(tmp_path))
    try:
        [warning] = [r.getMessage() for r in caplog.records if "no longer has" in r.getMessage()]
        assert "7 records of sink postgresql:old-host/metrics" in warning
        assert aegis.stats().sinks[0].spool_records == 0  # not this sink's
    finally:
        aegis.shutdown(0.5)


def test_a_spool_dir_is_made_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "made" / "spool"
    aegis = Aegis(sink="postgresql://nobody@127.0.0.1:1/none", spool_dir=str(target))
    try:
        assert stat.S_IMODE(target.stat().st_mode) == 0o700
        assert (target / FILE_NAME).exists()
    finally:
        aegis.shutdown(0.5)


def test_the_codec_keeps_what_the_store_needs_for_idempotence() -> None:
    batch = batch_of(range(3), "id-kept")
    back = spool_codec.decode(spool_codec.encode(batch))
    assert back.batch_id == "id-kept" and back.rollups is not None
    assert back.rollups.delta_id == "delta-id-kept"
