"""Pipelines that share a live transport (as the processes of several hosts
do), over the real Redis and the real PostgreSQL: each one's live reads show
the whole app, exactly as one pipeline that saw all of it would; gauges leave
with a closing frame; damaged frames are left out; a broken connection is
made again by itself; configurations that cannot work are refused at start."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.core.errors import ConfigError
from aegis_mw.health.builtin import live_transport_health
from aegis_mw.transports import transport_factory
from tests.exposition.test_live_merge import fed, figures, traffic

#: How long a change may take to reach the other pipelines (a frame a second).
DEADLINE = 20.0


@pytest.fixture(params=["redis", "postgresql"])
def transport_url(request: pytest.FixtureRequest) -> str:
    fixture = "redis_url" if request.param == "redis" else "postgres_url"
    return str(request.getfixturevalue(fixture))


def eventually(check: Callable[[], Any], seconds: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something true, or fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {check}")
        time.sleep(0.05)


def on_transport(make_aegis: Callable[..., Aegis], url: str, group: str, **options: Any) -> Aegis:
    return make_aegis(metrics_registry="none", live_transport=url, live_group=group, **options)


def test_each_process_reads_the_whole_apps_traffic(
    transport_url: str, live_group: str, make_aegis: Callable[..., Aegis]
) -> None:
    first = traffic(11, ("/a/{n}", "/b/{n}"), 700)
    second = traffic(12, ("/b/{n}", "/c/{n}"), 500)
    one = fed(on_transport(make_aegis, transport_url, live_group), first)
    other = fed(on_transport(make_aegis, transport_url, live_group), second)
    apart = fed(on_transport(make_aegis, transport_url, live_group + "-x"), first)
    alone = fed(make_aegis(metrics_registry="none"), first, second)
    expected = figures(alone)
    assert expected["total_requests"] == 1200
    eventually(lambda: figures(one) == expected and figures(other) == expected)
    # Another live group on the same server is another app.
    assert figures(apart) == figures(fed(make_aegis(metrics_registry="none"), first))
    outcome = live_transport_health(one).check()
    assert outcome.status == "pass", outcome
    assert outcome.details["senders_live"] == 1
    assert outcome.details["transport"] == transport_url.split(":")[0]


def test_gauges_leave_with_the_closing_frame_and_counts_stay(
    transport_url: str, live_group: str, make_aegis: Callable[..., Aegis]
) -> None:
    worker = on_transport(make_aegis, transport_url, live_group)
    reader = on_transport(make_aegis, transport_url, live_group)
    worker.aggregates.in_flight = 3
    worker.aggregates.websockets_active = 2
    fed(worker, traffic(13, ("/a/{n}",), 50))

    def seen() -> tuple[int, int, int]:
        snapshot = reader.realtime()
        return snapshot.in_flight, snapshot.websocket_connections_active, snapshot.total_requests

    eventually(lambda: seen() == (3, 2, 50))
    link, sender = reader.metrics.link, worker.metrics.link
    assert link is not None and sender is not None
    assert worker.shutdown(timeout=10)
    # The closing frame came (not the silence of DEAD_AFTER): the sender is held closed.
    eventually(lambda: link.board._held[sender.sender].closed)
    assert seen() == (0, 0, 50)
    assert live_transport_health(reader).check().details["senders_live"] == 0


def test_the_apps_own_metrics_of_every_process_in_the_live_views(
    transport_url: str, live_group: str, make_aegis: Callable[..., Aegis]
) -> None:
    """Every process's custom metrics reach the others' live views (the stream's
    section, the JSON API): counters added up, a gauge while its process lives."""
    from aegis_mw.realtime.sections import build

    worker = on_transport(make_aegis, transport_url, live_group)
    reader = on_transport(make_aegis, transport_url, live_group)
    for pipeline, orders, jobs in ((worker, 5, 2), (reader, 1, 1)):
        pipeline.counter("orders_total", "Orders.", ("region",)).labels("eu").inc(orders)
        pipeline.gauge("jobs", "Jobs.").set(jobs)
    worker.histogram("job_seconds", "Jobs.").observe(0.5)  # declared by the worker only

    def seen() -> dict[str, Any]:
        return {metric.name: metric.series for metric in reader.metrics.read_custom()}

    def observed(name: str) -> int:
        return sum(seen().get(name, {}).get((), [0])[:-1])

    # A frame may be taken between the histogram's declaration and its
    # observation: waited for too, not assumed to come with the counter's.
    eventually(
        lambda: (
            seen().get("orders") == {("eu",): 6}
            and seen()["jobs"] == {(): 3}
            and observed("job_seconds") == 1
        )
    )
    assert sum(seen()["job_seconds"][()][:-1]) == 1
    section = build(reader, ["customMetrics"])["customMetrics"]
    assert [metric["total"] for metric in section["metrics"]] == [1, 3, 6]
    assert worker.shutdown(timeout=10)
    # Closed: its gauge leaves at once, its counts stay.
    eventually(lambda: seen()["jobs"] == {(): 1})
    assert seen()["orders"] == {("eu",): 6}


def test_a_damaged_frame_is_left_out_and_the_rest_read(
    transport_url: str, live_group: str, make_aegis: Callable[..., Aegis]
) -> None:
    worker = fed(on_transport(make_aegis, transport_url, live_group), traffic(14, ("/a/{n}",), 40))
    reader = on_transport(make_aegis, transport_url, live_group)
    connect, _ = transport_factory(transport_url, live_group)
    vandal = connect()
    try:
        vandal.send("vandal:1:x", b'{"v": 1, "sender": "vandal:1:x", "seq": 1, "offset": NaN}')
        vandal.send("vandal:2:x", b"\xff not json at all")
    finally:
        vandal.close()
    eventually(lambda: reader.realtime().total_requests == 40)
    eventually(lambda: reader.metrics.link is not None and reader.metrics.link.board.refused >= 2)
    assert live_transport_health(reader).check().status == "pass"
    assert worker is not None


def test_a_broken_connection_is_made_again_by_itself(
    transport_url: str, live_group: str, make_aegis: Callable[..., Aegis]
) -> None:
    worker = fed(on_transport(make_aegis, transport_url, live_group), traffic(15, ("/a/{n}",), 30))
    reader = on_transport(make_aegis, transport_url, live_group)
    eventually(lambda: reader.realtime().total_requests == 30)
    link = reader.metrics.link
    assert link is not None
    killed = _kill_live_connections(transport_url)
    assert killed >= 2  # the worker's and the reader's
    fed(worker, traffic(16, ("/b/{n}",), 20))
    eventually(lambda: reader.realtime().total_requests == 50)
    eventually(lambda: link.connected)
    if transport_url.startswith("postgresql"):
        assert link.errors >= 1  # seen, counted, and made good


def _kill_live_connections(url: str) -> int:
    """End every live transport connection on the server (Redis: by the
    client name the transport gives them; PostgreSQL: by application name)."""
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        try:
            ids = [
                entry["id"] for entry in client.client_list() if entry["name"] == "aegis_mw-live"
            ]
            for client_id in ids:
                client.client_kill_filter(_id=client_id)
            return len(ids)
        finally:
            client.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'aegis_mw live' AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_the_sinks_database_can_carry_the_frames(
    postgres_url: str, live_group: str, make_aegis: Callable[..., Aegis]
) -> None:
    one = fed(
        make_aegis(sink=postgres_url, metrics_registry="none", live_transport="sink",
                   live_group=live_group),
        traffic(17, ("/a/{n}",), 25),
    )  # fmt: skip
    other = make_aegis(metrics_registry="none", live_transport=postgres_url, live_group=live_group)
    assert one.metrics.link is not None and one.metrics.link.kind == "postgresql"
    eventually(lambda: other.realtime().total_requests == 25)


@pytest.mark.parametrize(
    ("options", "option", "words"),
    [
        ({"live_transport": "http://example.com"}, "live_transport", "redis://"),
        ({"live_transport": "redis://"}, "live_transport", "redis://"),
        ({"live_transport": "sink"}, "live_transport", "needs a PostgreSQL sink"),
        ({"live_group": "two words"}, "live_group", "letters, digits"),
        ({"live_group": ""}, "live_group", "letters, digits"),
    ],
)
def test_a_live_transport_that_cannot_work_is_refused_at_start(
    options: dict[str, str], option: str, words: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        Aegis(sink="memory://", environ={}, **options)
    assert raised.value.option == option
    assert words in str(raised.value)
    if option == "live_transport":
        assert "example.com" not in str(raised.value)  # a URL may hold a password: not shown


def test_a_password_in_the_transport_url_is_never_shown() -> None:
    with pytest.raises(ConfigError) as raised:
        Aegis(sink="memory://", environ={}, live_transport="ftp://user:hunter2@host")
    assert "hunter2" not in str(raised.value)


def test_hosts_sharing_a_store_without_a_transport_are_told(
    postgres_url: str, make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg

    from aegis_mw.core import leases

    aegis = fed(make_aegis(sink=postgres_url, metrics_registry="none"), traffic(18, ("/a",), 5))
    retention = aegis.flusher.cycle.retention
    assert retention is not None
    mine = leases.host_of(retention.holder)
    assert retention.hosts == [mine]  # alone so far
    assert live_transport_health(aegis).check().status == "pass"

    def elsewhere(seconds_later: float) -> None:
        """A process of another host renews its host's lease."""
        with psycopg.connect(postgres_url, autocommit=True) as other, other.transaction():
            leases.hosts_seen(other, "elsewhere:42:abc", time.time() + seconds_later, 300,
                              mark="%s", lock=True)  # fmt: skip

    def look() -> list[str]:
        assert retention is not None
        retention.next_run = 0.0  # its next prune is due (once a minute)
        fed(aegis, traffic(19, ("/a",), 5))
        return retention.hosts

    elsewhere(0)
    assert look() == [mine]  # seen once: a rolling deploy's overlap, perhaps
    elsewhere(10)
    assert look() == sorted([mine, "elsewhere"])  # renewed since: another host runs
    outcome = live_transport_health(aegis).check()
    assert outcome.status == "warn", outcome
    assert "2 hosts write to the store" in outcome.message
    assert "live_transport is not set" in caplog.text
    assert look() == sorted([mine, "elsewhere"])  # not renewed once: a renewal may be late
    assert look() == [mine]  # not renewed twice: gone (killed, say)
    assert live_transport_health(aegis).check().status == "pass"

    # A clean shutdown gives this host's lease up: the others stop counting it at once.
    assert aegis.shutdown(timeout=10)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT holder, expires_at FROM aegis_alert_lease WHERE name = %s",
            (leases.HOST_PREFIX + mine,),
        ).fetchone()
    assert row == ("", 0.0)
    # With a transport, nobody asks.
    carried = fed(
        make_aegis(sink=postgres_url, metrics_registry="none", live_transport="sink"),
        traffic(20, ("/a",), 5),
    )
    assert carried.flusher.cycle.retention is not None
    assert carried.flusher.cycle.retention.hosts == []


def test_a_stop_that_times_out_leaves_no_second_thread_on_its_connections(
    live_group: str, make_aegis: Callable[..., Aegis]
) -> None:
    """A Redis "server" that accepts and never answers: the link's connect
    hangs past stop's wait; a start then makes a thread of its own, and the
    old one ends by itself on its own connection."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        aegis = make_aegis(metrics_registry="none", live_transport=url, live_group=live_group)
        link = aegis.metrics.link
        assert link is not None
        first = link._thread
        assert first is not None
        link.stop(timeout=0.1)
        assert first.is_alive()  # still in its connect
        link.start()
        second = link._thread
        assert second is not None and second is not first and second.is_alive()
        first.join(30)
        assert not first.is_alive()  # its connect failed, its stop was set: it ended
        assert second.is_alive()  # the new one goes on, retrying
        eventually(lambda: link.errors >= 2)
        assert [t for t in threading.enumerate() if t in (first, second)] == [second]
    finally:
        silent.close()


def test_a_postgresql_server_that_hangs_fails_a_call_instead_of_holding_it(
    postgres_url: str, live_group: str
) -> None:
    """The server hangs with the transport's connection open (a forwarder to
    it freezes): its statement timeout never fires, so the client's own
    deadline (a send's two waits, statements and commit, and a second's grace)
    fails the call, so the link can reconnect, where before its thread waited
    for as long as the server stayed hung."""
    from contextlib import closing

    import psycopg

    from aegis_mw.transports.postgres_live import (
        GRACE_SECONDS,
        QUERY_GAP,
        TIMEOUT_SECONDS,
        PostgresTransport,
    )
    from tests.endpoints.stores import Forwarder, forwarded_url, timed
    from tests.servers import free_port

    port = free_port()
    url, real = forwarded_url(postgres_url, port)
    with closing(Forwarder(port, real)) as forwarder:
        transport = PostgresTransport(url, live_group)
        try:
            transport.send("one", b"frame")
            assert transport.stored() == [b"frame"]
            forwarder.freeze()
            # A hung call fails the test after DEADLINE instead of hanging it.
            error, took = timed(lambda: transport.send("one", b"next"), DEADLINE)
            assert isinstance(error, psycopg.OperationalError), error
            assert "no answer from the server" in str(error)
            print(f"\na frame's send on a hung server failed in {took:.2f} s")
            limit = QUERY_GAP + 2 * TIMEOUT_SECONDS + GRACE_SECONDS
            assert limit - 0.1 < took < limit + 3.0, took
            assert transport.connection.closed
        finally:
            transport.close()
