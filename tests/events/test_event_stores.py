"""Events in the stores: the memory, SQLite and PostgreSQL sinks fed the
same batches answer every read alike (stored events alone, and merged with
the request log's errors), store each event once, prune them with the rest,
take them in files and schemas of the version before; and the spool keeps
them, in a payload and through the search of a refused batch."""

from __future__ import annotations

import json
import random
import sqlite3
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aegis_mw.core import spool_codec
from aegis_mw.core.events import EventQuery, build_event, read_merged, request_event
from aegis_mw.core.history import RequestQuery
from aegis_mw.core.record import Batch, EventRecord, RequestRecord, Stored
from aegis_mw.core.rollup import RollupDelta
from aegis_mw.core.sink import RecordRejected
from aegis_mw.core.spool_codec import SpoolCorrupt
from aegis_mw.core.spool_salvage import Salvage, _halves
from aegis_mw.history.breaker import EventsUnavailable, GuardedSource, StoreBreaker
from aegis_mw.sinks import MemorySink, SQLiteSink, sqlite_schema
from tests.sinks.test_sqlite import make_request, make_session

psycopg = pytest.importorskip("psycopg")

from aegis_mw.sinks import postgres_schema  # noqa: E402
from aegis_mw.sinks.postgres import PostgresSink  # noqa: E402
from tests.sinks.test_postgres import schema_at  # noqa: E402

T0 = 1_700_000_000.0
#: Tags a store must match exactly: case, spaces, SQL's wildcards and quotes,
#: JSON's escapes, any plane; and "request", the request log's errors' tag.
TAGS = (
    "region:eu", "region:us", "Region:EU", "deploy", "canary", "a b", "100%", "_", "x'y",
    'q"z', "back\\slash", "ünïcode", "😀", "request", "[1]", "null",
)  # fmt: skip
SOURCES = ("app", "billing", "Billing", "deploy", "worker:eu", "a'b")
TRACES = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7a3ce929d0e0e4736")
STATUSES = (200, 201, 404, 499, 500, 502, 503, 599)
#: Query values that match nothing stored.
ABSENT = {"source": "nobody", "tag": "no-such-tag", "trace": "f" * 32}


def event(number: int, rng: random.Random) -> EventRecord:
    """A checked event: ids of every kind of character an id may hold (their
    byte order is the stores' tie-break), times often shared with others."""
    marks = ("ev-", "Ev.", "ev/", "deploy@", "job:", "z", "A", "9")
    return build_event(
        rng.choice(["", "plain", "two\nlines", "tab\there", "quote ' \" \\", "é😀"]),
        event_id=f"{marks[number % len(marks)]}{number:04d}",
        timestamp=T0 + rng.randrange(0, 400) / 4,
        type=rng.choice(["log", "metric", "trace", "alert"]),
        source=rng.choice(SOURCES),
        level=rng.choice(["debug", "info", "warning", "error", "critical"]),
        tags=rng.sample(TAGS, rng.randrange(0, 4)),
        payload=rng.choice([None, {}, {"n": number, "x": [1.5, None, "é"], "ok": True}]),
        trace_id=rng.choice([None, None, *TRACES]),
        now=time.time,
    )


def request(number: int, rng: random.Random) -> RequestRecord:
    status = rng.choice(STATUSES)
    return make_request(
        number,
        prefix="c0ffee" + "0" * 10,
        timestamp=T0 + rng.randrange(0, 400) / 4,  # on the events' times, often
        status=status,
        method=rng.choice(["GET", "POST"]),
        error=rng.choice(["", "RuntimeError: boom"]) if status >= 500 else "",
        trace_id=rng.choice([None, None, *TRACES]),
    )


def feed(seed: int = 7) -> tuple[list[Batch], list[EventRecord], list[RequestRecord]]:
    """Four batches of events, requests and sessions, and what they hold."""
    rng = random.Random(seed)
    events = [event(number, rng) for number in range(240)]
    requests = [request(number, rng) for number in range(160)]
    assert sum(record.status >= 500 for record in requests) > 40
    batches = [
        Batch(
            requests=requests[part * 40 : part * 40 + 40],
            sessions=[make_session(part)],
            events=events[part * 60 : part * 60 + 60],
            batch_id=f"feed-{part}",
        )
        for part in range(4)
    ]
    return batches, events, requests


@dataclass
class Sinks:
    memory: MemorySink
    sqlite: SQLiteSink
    postgres: PostgresSink

    def all(self) -> list[tuple[str, Any]]:
        return [("memory", self.memory), ("sqlite", self.sqlite), ("postgres", self.postgres)]


@pytest.fixture
def sinks(postgres_url: str, tmp_path: Path) -> Iterator[Sinks]:
    """The three stores of events, each new, closed after the test."""
    sqlite = SQLiteSink(str(tmp_path / "aegis.db"))
    postgres = PostgresSink(postgres_url)
    try:
        yield Sinks(MemorySink(), sqlite, postgres)
    finally:
        postgres.close()
        sqlite.close()


def sql(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


def sqlite_rows(path: Path | str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(statement, params).fetchall()
    finally:
        connection.close()


# -- what a read should give, worked out here ----------------------------------------


def passes(item: EventRecord, query: EventQuery) -> bool:
    return (
        (not query.types or item.type in query.types)
        and (query.source is None or item.source == query.source)
        and (not query.levels or item.level in query.levels)
        and set(query.tags) <= set(item.tags)
        and (query.trace_id is None or item.trace_id == query.trace_id)
        and (query.since is None or item.timestamp >= query.since)
        and (query.until is None or item.timestamp < query.until)
    )


def expected(items: list[EventRecord], query: EventQuery) -> list[EventRecord]:
    kept = sorted(
        (item for item in items if passes(item, query)),
        key=lambda item: (item.timestamp, item.event_id.encode()),
        reverse=True,
    )
    return kept[query.offset : query.offset + query.limit]


def as_events(requests: list[RequestRecord]) -> list[EventRecord]:
    """The request log's errors, as reads merge them in."""
    return [request_event(record) for record in requests if record.status >= 500]


def queries(seed: int = 11) -> list[EventQuery]:
    """Each filter alone, with others, at its edges, paged; and random mixes."""
    every = 10_000
    middle = T0 + 50.0
    chosen = [
        EventQuery(limit=every),
        EventQuery(),
        EventQuery(limit=1),
        EventQuery(limit=7, offset=3),
        EventQuery(limit=25, offset=100),
        EventQuery(limit=10, offset=10_000),  # past the end
        EventQuery(limit=0),
        EventQuery(types=("log",), limit=every),
        EventQuery(types=("metric", "alert"), limit=every),
        EventQuery(types=("trace",), levels=("error",), limit=every),
        EventQuery(levels=("error",), limit=every),
        EventQuery(levels=("debug", "critical"), limit=every),
        EventQuery(levels=("error", "critical"), types=("log",), limit=30, offset=5),
        EventQuery(source="app", limit=every),
        EventQuery(source="billing", limit=every),
        EventQuery(source="Billing", limit=every),  # case counts
        EventQuery(source="a'b", limit=every),
        EventQuery(source=ABSENT["source"], limit=every),
        EventQuery(tags=("request",), limit=every),
        EventQuery(tags=("region:eu",), limit=every),
        EventQuery(tags=("Region:EU",), limit=every),  # case counts
        EventQuery(tags=("100%",), limit=every),  # no wildcard
        EventQuery(tags=("_",), limit=every),
        EventQuery(tags=("x'y",), limit=every),
        EventQuery(tags=('q"z',), limit=every),
        EventQuery(tags=("back\\slash",), limit=every),
        EventQuery(tags=("😀",), limit=every),
        EventQuery(tags=("ünïcode", "a b"), limit=every),
        EventQuery(tags=("[1]",), limit=every),
        EventQuery(tags=("null",), limit=every),
        EventQuery(tags=("region:eu", "deploy"), limit=every),
        EventQuery(tags=("request", "canary"), limit=every),
        EventQuery(tags=("region:eu", "region:eu"), limit=every),
        EventQuery(tags=("region",), limit=every),  # a part of a tag is not the tag
        EventQuery(tags=(ABSENT["tag"],), limit=every),
        EventQuery(trace_id=TRACES[0], limit=every),
        EventQuery(trace_id=TRACES[1], types=("log",), limit=every),
        EventQuery(trace_id=ABSENT["trace"], limit=every),
        EventQuery(since=middle, limit=every),
        EventQuery(until=middle, limit=every),  # exclusive
        EventQuery(since=middle, until=middle + 0.25, limit=every),
        EventQuery(since=middle, until=middle, limit=every),
        EventQuery(since=T0 + 99.75, limit=every),  # the newest quarter second
        EventQuery(until=T0, limit=every),  # before everything
        EventQuery(since=T0 + 1000, limit=every),  # after everything
        EventQuery(since=T0 + 20, until=T0 + 80, levels=("error",), limit=12, offset=4),
        EventQuery(source="app", levels=("error",), types=("log",), tags=("request",), limit=40),
        EventQuery(source="app", levels=("warning",), limit=every),  # no request error
        EventQuery(types=("metric",), tags=("request",), limit=every),
    ]
    rng = random.Random(seed)
    for _ in range(120):
        since = rng.choice([None, T0 + rng.randrange(0, 400) / 4])
        chosen.append(
            EventQuery(
                types=tuple(
                    rng.sample(["log", "metric", "trace", "alert"], rng.choice([0, 0, 1, 2]))
                ),
                source=rng.choice([None, None, None, *SOURCES]),
                levels=tuple(
                    rng.sample(
                        ["debug", "info", "warning", "error", "critical"], rng.choice([0, 0, 2])
                    )
                ),
                tags=tuple(rng.sample(TAGS, rng.choice([0, 0, 0, 1, 1, 2]))),
                trace_id=rng.choice([None, None, None, *TRACES]),
                since=since,
                until=rng.choice([None, (since or T0) + rng.randrange(1, 200) / 4]),
                limit=rng.choice([1, 5, 20, 100, every]),
                offset=rng.choice([0, 0, 1, 9, 40]),
            )
        )
    return chosen


def write_all(sinks: Sinks, batches: list[Batch]) -> None:
    for batch in batches:
        for _name, sink in sinks.all():
            sink.write(batch)


# -- reads alike ------------------------------------------------------------------------


def test_every_store_answers_every_query_alike(sinks: Sinks) -> None:
    batches, events, _requests = feed()
    write_all(sinks, batches)
    answered = 0
    for query in queries():
        want = expected(events, query)
        for name, sink in sinks.all():
            assert sink.read_events(query) == want, (name, query)
        answered += bool(want)
    assert answered > 80  # most queries find something: the comparison means something


def test_merged_with_the_request_logs_errors_every_store_answers_alike(sinks: Sinks) -> None:
    batches, events, requests = feed()
    write_all(sinks, batches)
    everything = [*events, *as_events(requests)]
    mixed = 0
    for query in queries():
        want = expected(everything, query)
        for name, sink in sinks.all():
            got = read_merged(query, sink.read_events, sink.read_requests)
            assert got == want, (name, query)
        ids = {item.event_id.startswith("request:") for item in want}
        mixed += ids == {True, False}
    assert mixed > 10  # many pages hold both kinds, interleaved


def test_the_request_logs_errors_read_as_app_errors_tagged_request(sinks: Sinks) -> None:
    batches, _events, requests = feed()
    write_all(sinks, batches)
    failed = {record.request_id: record for record in requests if record.status >= 500}
    query = EventQuery(source="app", levels=("error",), types=("log",), tags=("request",),
                       limit=10_000)  # fmt: skip
    for name, sink in sinks.all():
        merged = read_merged(query, sink.read_events, sink.read_requests)
        from_log = [item for item in merged if item.event_id.startswith("request:")]
        assert len(from_log) == len(failed), name
        for item in from_log:
            record = failed[item.event_id.removeprefix("request:")]
            assert item == EventRecord(
                event_id=f"request:{record.request_id}",
                timestamp=record.timestamp,
                type="log",
                source="app",
                level="error",
                message=record.error or f"{record.method} /items/{{item_id}} answered "
                f"{record.status}",
                tags=("request",),
                payload={
                    "request_id": record.request_id, "method": record.method,
                    "route": record.route, "path": record.path, "status": record.status,
                    "duration_ms": record.duration_ms,
                },
                trace_id=record.trace_id,
            ), name  # fmt: skip
        traced = [r for r in failed.values() if r.trace_id == TRACES[0]]
        assert traced, "the feed has failed requests in a trace"
        of_trace = read_merged(
            EventQuery(trace_id=TRACES[0], limit=10_000), sink.read_events, sink.read_requests
        )
        assert {item.event_id for item in of_trace if item.event_id.startswith("request:")} == {
            f"request:{r.request_id}" for r in traced
        }, name
        # Requests under 500 (499, a client gone, too) are no errors.
        below = {f"request:{r.request_id}" for r in requests if r.status < 500}
        assert any(r.status == 499 for r in requests)
        assert below.isdisjoint(item.event_id for item in merged), name


@pytest.mark.parametrize(
    "query",
    [
        EventQuery(types=("metric",), limit=10_000),
        EventQuery(source="billing", limit=10_000),
        EventQuery(levels=("info", "critical"), limit=10_000),
        EventQuery(tags=("deploy",), limit=10_000),
        EventQuery(tags=("request", "deploy"), limit=10_000),
        EventQuery(trace_id="ab" * 16, limit=10_000),  # a trace none of them is in
    ],
)
def test_a_filter_that_excludes_the_request_logs_errors_leaves_them_out(
    sinks: Sinks, query: EventQuery
) -> None:
    batches, events, _requests = feed()
    write_all(sinks, batches)
    for name, sink in sinks.all():
        merged = read_merged(query, sink.read_events, sink.read_requests)
        assert merged == expected(events, query), name
        assert not any(item.event_id.startswith("request:") for item in merged), name


def test_without_a_request_log_only_stored_events_are_read(sinks: Sinks) -> None:
    batches, events, _requests = feed()
    write_all(sinks, batches)
    query = EventQuery(tags=("request",), limit=10_000)
    for name, sink in sinks.all():
        assert read_merged(query, sink.read_events, None) == expected(events, query), name


def test_the_guarded_source_reads_the_merged_timeline(sinks: Sinks) -> None:
    batches, events, requests = feed()
    write_all(sinks, batches)
    everything = [*events, *as_events(requests)]
    for query in queries()[:40]:
        for name, sink in sinks.all():
            guarded = GuardedSource(sink, StoreBreaker(name, retry_after=5.0))
            assert guarded.read_events(query) == expected(everything, query), (name, query)


class RequestLogOnly:
    """A history store of an older kind: rollups and requests, no events."""

    def __init__(self) -> None:
        self.memory = MemorySink()

    def read_rollups(self, resolution: int, start: int, end: int, *, by_route: bool) -> list[Any]:
        return self.memory.read_rollups(resolution, start, end, by_route=by_route)

    def read_requests(self, query: RequestQuery) -> list[RequestRecord]:
        return self.memory.read_requests(query)

    def prune(self, raw_before: float, rollups_before: Any, limit: int) -> int:
        return self.memory.prune(raw_before, rollups_before, limit)


def test_a_guarded_store_without_events_says_so() -> None:
    guarded = GuardedSource(RequestLogOnly(), StoreBreaker("old", retry_after=5.0))
    with pytest.raises(EventsUnavailable):
        guarded.read_events(EventQuery())
    assert guarded.breaker.state == "closed"  # no outage: the store has no events


def test_pages_of_the_merged_timeline_tile_it(sinks: Sinks) -> None:
    """Page after page (offset by the page size) gives the whole timeline once,
    in order, whichever source each page's items come from."""
    batches, events, requests = feed()
    write_all(sinks, batches)
    whole = expected([*events, *as_events(requests)], EventQuery(limit=10_000))
    for name, sink in sinks.all():
        for size in (1, 7, 50):
            pages: list[EventRecord] = []
            offset = 0
            while page := read_merged(
                EventQuery(limit=size, offset=offset), sink.read_events, sink.read_requests
            ):
                pages.extend(page)
                offset += size
            assert pages == whole, (name, size)


# -- once each ---------------------------------------------------------------------------


def test_an_event_sent_again_in_another_batch_is_stored_once(
    sinks: Sinks, postgres_url: str
) -> None:
    rng = random.Random(3)
    first = [event(number, rng) for number in range(10)]
    # A client's retry: the same ids, sent again (changed, even) in new batches.
    again = [item._replace(message="changed", level="critical") for item in first[3:7]]
    for _name, sink in sinks.all():
        sink.write(Batch(events=first, batch_id="one"))
        sink.write(Batch(events=again, batch_id="two"))
        sink.write(Batch(events=[*again, first[0], first[0]], batch_id="three"))
        sink.write(Batch(events=again))  # no batch id
    want = expected(first, EventQuery(limit=100))
    for name, sink in sinks.all():
        assert sink.read_events(EventQuery(limit=100)) == want, name  # the first kept
    assert sqlite_rows(sinks.sqlite.path, "SELECT count(*) FROM aegis_events") == [(10,)]
    assert sql(postgres_url, "SELECT count(*) FROM aegis_events") == [(10,)]
    assert len(sinks.memory.events) == 10


def test_a_batch_written_twice_is_stored_once(sinks: Sinks, postgres_url: str) -> None:
    batches, events, requests = feed()
    for _name, sink in sinks.all():
        for batch in batches:
            sink.write(batch)
            sink.write(batch)  # a retry after a write whose outcome was unknown
        sink.write(batches[1])
    everything = EventQuery(limit=10_000)
    for name, sink in sinks.all():
        assert sink.read_events(everything) == expected(events, everything), name
        stored_requests = sink.read_requests(RequestQuery(limit=10_000))
        assert len(stored_requests) == len(requests), name
    assert sqlite_rows(sinks.sqlite.path, "SELECT count(*) FROM aegis_events") == [(240,)]
    assert sqlite_rows(sinks.sqlite.path, "SELECT count(*) FROM aegis_batches") == [(4,)]
    assert sql(postgres_url, "SELECT count(*) FROM aegis_events") == [(240,)]
    assert sql(postgres_url, "SELECT count(*) FROM aegis_batches") == [(4,)]


def test_a_batch_of_events_alone_is_kept_once_by_its_id(sinks: Sinks, postgres_url: str) -> None:
    """Its batch id is stored, so a retry after its events were pruned adds
    nothing back."""
    rng = random.Random(5)
    items = [event(number, rng) for number in range(6)]
    for _name, sink in sinks.all():
        sink.write(Batch(events=items, batch_id="events-only"))
        sink.write(Batch(events=items, batch_id="events-only"))
    assert sqlite_rows(sinks.sqlite.path, "SELECT batch_id FROM aegis_batches") == [
        ("events-only",)
    ]
    assert sql(postgres_url, "SELECT batch_id FROM aegis_batches") == [("events-only",)]
    for name, sink in (("sqlite", sinks.sqlite), ("postgres", sinks.postgres)):
        sink.prune(T0 + 1_000.0, {}, 1000)
        assert sink.read_events(EventQuery()) == [], name
        sink.write(Batch(events=items, batch_id="events-only"))
        assert sink.read_events(EventQuery()) == [], name


# -- retention ---------------------------------------------------------------------------


def test_prune_deletes_the_events_before_the_horizon_and_keeps_the_rest(sinks: Sinks) -> None:
    batches, events, requests = feed()
    horizon = T0 + 60.0
    at_horizon = build_event("on the line", event_id="at-horizon", timestamp=horizon,
                             now=time.time)  # fmt: skip
    batches.append(Batch(events=[at_horizon], batch_id="edge"))
    events.append(at_horizon)
    write_all(sinks, batches)
    expired = sum(item.timestamp < horizon for item in events)
    assert 50 < expired < len(events) - 50
    everything = EventQuery(limit=10_000)

    for name, sink in sinks.all():
        assert sink.prune(horizon, {}, 10**6) >= expired, name
    kept = [item for item in events if item.timestamp >= horizon]
    for name, sink in sinks.all():
        assert sink.read_events(everything) == expected(kept, everything), name
        assert at_horizon in sink.read_events(everything), name  # the horizon is kept
        merged = read_merged(everything, sink.read_events, sink.read_requests)
        survivors = [record for record in requests if record.timestamp >= horizon]
        assert merged == expected([*kept, *as_events(survivors)], everything), name


def test_prune_deletes_at_most_its_limit_of_events_a_call(sinks: Sinks) -> None:
    rng = random.Random(9)
    items = [event(number, rng) for number in range(30)]
    for _name, sink in sinks.all():
        sink.write(Batch(events=items, batch_id="b"))
    horizon = T0 + 1_000.0  # all of them expired
    for name, sink in sinks.all():
        left = 30
        while left:
            sink.prune(horizon, {}, 4)
            now_left = len(sink.read_events(EventQuery(limit=100)))
            assert now_left == max(0, left - 4), name
            left = now_left
        assert sink.prune(horizon, {}, 4) == 0, name


# -- the schema of the version before ----------------------------------------------------------


def test_an_sqlite_file_of_the_version_before_events_takes_them(tmp_path: Path) -> None:
    """A file an aegis_mw without events left (its request log in time
    blocks) opens with the sink: the request rows read as before, the
    events table is made, events are stored and read, and the requests'
    errors merge with them."""
    path = tmp_path / "aegis.db"
    rng = random.Random(13)
    # Written before the trace ids existed: none.
    old = sorted(
        (request(number, rng)._replace(trace_id=None) for number in range(40)),
        key=lambda r: r.timestamp,
    )
    connection = sqlite3.connect(path)
    before = sqlite_schema.MIGRATIONS[: version_of_events(sqlite_schema.MIGRATIONS)]
    for statements in before[:-1]:
        for statement in statements:
            if "aegis_histogram_v3" not in statement:  # no rollup rows to convert
                connection.execute(statement)
    # Written as that version wrote them: then made blocks by its last migration.
    connection.executemany(
        # The twelve columns of that version (trace ids came later).
        f"INSERT INTO aegis_requests VALUES ({', '.join('?' * 12)})",
        [r[:12] for r in old],
    )
    for statement in before[-1]:
        connection.execute(statement)
    connection.execute(f"PRAGMA user_version = {len(before):d}")
    connection.commit()
    connection.close()
    assert sqlite_rows(path, "SELECT name FROM sqlite_master WHERE name = 'aegis_events'") == []

    sink = SQLiteSink(str(path))
    try:
        takes_events_after_migration(sink, old, rng)
        assert sqlite_rows(path, "PRAGMA user_version") == [(sqlite_schema.SCHEMA_VERSION,)]
    finally:
        sink.close()


def version_of_events(migrations: Sequence[Sequence[object]]) -> int:
    """The schema version just before the one that adds the events' table."""
    return next(
        version
        for version, steps in enumerate(migrations)
        if any("CREATE TABLE aegis_events" in str(step) for step in steps)
    )


def takes_events_after_migration(sink: Any, old: list[RequestRecord], rng: random.Random) -> None:
    """The old rows read as before; events are stored, and merged with them."""
    all_requests = RequestQuery(limit=1000)
    newest_first = sorted(old, key=lambda r: (r.timestamp, r.request_id), reverse=True)
    assert sink.read_requests(all_requests) == newest_first
    assert sink.read_events(EventQuery()) == []
    items = [event(number, rng) for number in range(20)]
    sink.write(Batch(requests=[make_request(999)], events=items, batch_id="after"))
    everything = EventQuery(limit=1000)
    assert sink.read_events(everything) == expected(items, everything)
    assert len(sink.read_requests(all_requests)) == 41
    merged = read_merged(everything, sink.read_events, sink.read_requests)
    assert merged == expected([*items, *as_events(old)], everything)


def test_a_postgresql_schema_of_the_version_before_events_takes_them(postgres_url: str) -> None:
    rng = random.Random(17)
    old = [request(number, rng)._replace(trace_id=None) for number in range(40)]
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema_at(connection, version_of_events(postgres_schema.MIGRATIONS))
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO aegis_requests VALUES ({', '.join(['%s'] * 12)})",
                [r[:12] for r in old],
            )
    assert sql(postgres_url, "SELECT to_regclass('aegis_events')") == [(None,)]

    sink = PostgresSink(postgres_url)
    try:
        takes_events_after_migration(sink, old, rng)
        assert sql(postgres_url, "SELECT max(version) FROM aegis_schema_version") == [
            (postgres_schema.SCHEMA_VERSION,)
        ]
    finally:
        sink.close()


# -- the spool ---------------------------------------------------------------------------


def test_the_codec_keeps_requests_sessions_events_and_rollups() -> None:
    batches, _events, _requests = feed()
    delta = RollupDelta()
    for record in batches[0].requests:
        delta.add(record.timestamp, record.route, record.method, record.status,
                  record.duration_ms, record.status >= 500, 0, record.response_bytes)  # fmt: skip
    delta.delta_id = "delta-codec"
    rng = random.Random(19)
    many = [event(number, rng) for number in range(2 * spool_codec.CHUNK + 3)]  # several parts
    batch = Batch(
        requests=batches[0].requests,
        sessions=[make_session(n) for n in range(3)],
        rollups=delta,
        batch_id="codec",
        events=many,
    )
    back = spool_codec.decode(spool_codec.encode(batch))
    assert back.requests == batch.requests and back.sessions == batch.sessions
    assert back.events == many
    assert all(type(item.tags) is tuple for item in back.events)
    assert back.batch_id == "codec" and back.rollups is not None
    assert (back.rollups.delta_id, back.rollups.cells) == ("delta-codec", delta.cells)
    assert back.records() == batch.records()
    # Not an event: its time is the caller's to give, a back-dated one would
    # make the spool look behind.
    oldest_request = min(record.timestamp for record in batch.requests)
    earliest = Batch(events=[many[0]._replace(timestamp=T0 - 10**6)], requests=batch.requests)
    assert spool_codec.oldest(earliest, default=0.0) == oldest_request
    assert spool_codec.oldest(Batch(events=many), default=123.0) == 123.0


def _part(value: Any) -> bytes:
    """A part framed as the spool frames it (written here, as an older version would)."""
    packed = zlib.compress(json.dumps(value).encode("ascii"), 1)
    return len(packed).to_bytes(4, "big") + packed


def _header(**changes: Any) -> dict[str, Any]:
    return {
        "format": 1, "batch_id": "old", "request_fields": list(RequestRecord._fields),
        "session_fields": list(make_session(0)._fields), "requests": 2, "sessions": 1,
        "rollups": None, **changes,
    }  # fmt: skip


def test_a_payload_without_events_reads_back_with_none() -> None:
    requests = [make_request(1), make_request(2)]
    session = make_session(1)
    # As written before events were: its header knows no "events".
    payload = _part(_header()) + _part([list(r) for r in requests]) + _part([list(session)])
    back = spool_codec.decode(payload)
    assert (back.requests, back.sessions, back.events) == (requests, [session], [])
    assert back.batch_id == "old"
    # And a batch without events is still written that way.
    written = spool_codec.encode(Batch(requests=requests, sessions=[session], batch_id="old"))
    header = json.loads(zlib.decompress(written[4 : 4 + int.from_bytes(written[:4], "big")]))
    assert "events" not in header and "event_fields" not in header
    assert spool_codec.decode(written).events == []


def test_spooled_events_are_read_by_their_field_names() -> None:
    """Events spooled by a version whose events had other fields: by name,
    one it lacks as None; malformed ones are a corrupt payload."""
    item = build_event("x", tags=["a", "b"], payload={"k": 1}, event_id="e1", now=time.time)
    fields = [name for name in EventRecord._fields if name != "trace_id"][::-1]
    row = [getattr(item, name) for name in fields]
    header = _header(requests=0, sessions=0, events=1, event_fields=fields)
    back = spool_codec.decode(_part(header) + _part([row]))
    assert back.events == [item._replace(trace_id=None)]
    written = list(EventRecord._fields)
    header = _header(requests=0, sessions=0, events=1, event_fields=written)
    for bad in ({"tags": "a,b"}, {"tags": [1]}, {"payload": [1]}, {"payload": "x"}):
        row = [bad.get(name, value) for name, value in zip(written, item, strict=True)]
        with pytest.raises(SpoolCorrupt):
            spool_codec.decode(_part(header) + _part([row]))
    fewer = _header(requests=0, sessions=0, events=2, event_fields=written)
    with pytest.raises(SpoolCorrupt):  # fewer events than counted
        spool_codec.decode(_part(fewer) + _part([list(item)]))


def _mixed(events: int = 9) -> Batch:
    rng = random.Random(23)
    return Batch(
        requests=[make_request(n) for n in range(5)],
        sessions=[make_session(n) for n in range(3)],
        events=[event(number, rng) for number in range(events)],
        batch_id="mixed",
    )


def test_halving_a_refused_part_keeps_every_record_in_order() -> None:
    def leaves(part: Batch) -> list[Stored]:
        halves = _halves(part)
        if not halves:
            return part.records()
        assert sum(len(half) for half in halves) == len(part)
        assert [r for half in halves for r in half.records()] == part.records()
        return [record for half in halves for record in leaves(half)]

    for events in (0, 1, 2, 9, 17):
        batch = _mixed(events)
        assert leaves(Batch.of(batch.records(), "x")) == batch.records()
    # Events alone, and each half's batch a batch of its own kind of records.
    alone = Batch(events=_mixed().events, batch_id="e")
    first, second = _halves(alone)
    assert (first.requests, first.sessions, second.requests) == ([], [], [])
    assert first.events + second.events == alone.events


def test_the_search_of_a_refused_batch_stores_all_but_the_refused_events(tmp_path: Path) -> None:
    """A spooled batch a store refuses on replay: every record it takes is
    stored (events among them), the refused ones alone are held."""
    sink = SQLiteSink(str(tmp_path / "aegis.db"))
    batch = _mixed(20)
    refused = {batch.events[4].event_id, batch.events[15].event_id}
    parts: list[Batch] = []

    def write(part: Batch) -> None:
        parts.append(part)
        if any(item.event_id in refused for item in part.events):
            raise RecordRejected("a value this store cannot hold")
        sink.write(part)

    try:
        salvage = Salvage(write, deadline=time.monotonic() + 60)
        salvage.run(batch, proof=lambda: pytest.fail("no proof is needed: records went in"))
        assert sorted(item.event_id for item in salvage.held) == sorted(refused)
        assert salvage.stored == len(batch) - 2
        kept = [item for item in batch.events if item.event_id not in refused]
        everything = EventQuery(limit=1000)
        assert sink.read_events(everything) == expected(kept, everything)
        assert len(sink.read_requests(RequestQuery(limit=1000))) == 5
        assert len(sqlite_rows(sink.path, "SELECT * FROM aegis_websocket_sessions")) == 3
        # Searched again (a crash in the middle): the same part ids, nothing twice.
        ids = [part.batch_id for part in parts]
        parts.clear()
        Salvage(write, deadline=time.monotonic() + 60).run(batch, proof=lambda: True)
        assert [part.batch_id for part in parts] == ids
        assert sink.read_events(everything) == expected(kept, everything)
        assert len(sink.read_requests(RequestQuery(limit=1000))) == 5
    finally:
        sink.close()


def test_the_search_holds_every_event_of_a_store_that_refuses_events() -> None:
    """A store that refuses every event but takes the rest: each event ends
    held, one by one, and the requests and sessions are stored."""
    sink = MemorySink()
    batch = _mixed(7)

    def write(part: Batch) -> None:
        if part.events:
            raise RecordRejected("no events here")
        sink.write(part)

    salvage = Salvage(write, deadline=time.monotonic() + 60)
    salvage.run(batch, proof=lambda: True)
    assert salvage.held == batch.events
    assert (sink.requests, sink.sessions) == (batch.requests, batch.sessions)
