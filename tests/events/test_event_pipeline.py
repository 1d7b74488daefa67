"""The app's events from ``Aegis.event`` to the store: queued, flushed and
stored once per id in memory, in a real SQLite file and in the real
PostgreSQL; counted exactly when refused (the queue full, shutdown begun, no
sink that stores events); flushed at shutdown; shown on /metrics (one
worker's and several workers' merged); kept in the spool while PostgreSQL is
away and stored once it is back."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aegis_mw import Aegis, Batch, RequestRecord
from aegis_mw.core.events import EventError
from aegis_mw.core.record import EventRecord
from aegis_mw.exposition.multiprocess import encode
from aegis_mw.testing import MemorySink
from tests.endpoints.stores import Forwarder
from tests.harness import inbox_item
from tests.servers import free_port

DROPS = {"event_buffer_full": 0, "event_shutdown": 0, "no_event_sink": 0}
#: An hour ago, in whole seconds: well inside the raw retention (older events are pruned).
T0 = float(int(time.time()) - 3600)
MOMENT = datetime.fromtimestamp(T0, tz=timezone.utc)


# -- stores ----------------------------------------------------------------------------


COLUMNS = (
    "event_id", "timestamp", "type", "source", "level", "message", "tags", "payload", "trace_id",
)  # fmt: skip


def _rows(url: str) -> list[tuple[Any, ...]]:
    query = f"SELECT {', '.join(COLUMNS)} FROM aegis_events ORDER BY event_id"
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
            return list(connection.execute(query))
    import psycopg

    with psycopg.connect(url) as connection:
        return list(connection.execute(query))


def stored(aegis: Aegis, url: str) -> dict[str, dict[str, Any]]:
    """Event id -> its fields, as the store itself holds them (read without aegis_mw)."""
    if url == "memory://":
        sink = aegis.sinks[0]
        assert isinstance(sink, MemorySink)
        return {
            event.event_id: {**event._asdict(), "tags": list(event.tags)} for event in sink.events
        }
    found: dict[str, dict[str, Any]] = {}
    for row in _rows(url):
        fields = dict(zip(COLUMNS, row, strict=True))
        fields["tags"] = json.loads(row[6])
        fields["payload"] = None if row[7] is None else json.loads(row[7])
        assert row[0] not in found  # the id is the key: never twice
        found[row[0]] = fields
    return found


def stored_ids(aegis: Aegis, url: str) -> list[str]:
    return sorted(stored(aegis, url))


def stats_written(aegis: Aegis) -> int:
    return sum(sink.written for sink in aegis.stats().sinks)


def scrape(aegis: Aegis) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample /metrics shows now, by name and labels."""
    text = aegis.metrics.endpoint.respond().body.decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def dropped(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], reason: str) -> float:
    return samples[("aegis_records_dropped_total", (("reason", reason),))]


ACCEPTED = ("aegis_events_accepted_total", ())
EVENTS_BUFFER = ("aegis_buffer_records", (("buffer", "events"),))


# -- stored, once each ------------------------------------------------------------------


def test_an_event_is_stored_by_a_flush_with_every_field(
    make_aegis: Callable[..., Aegis], store: str
) -> None:
    aegis = make_aegis(sink=store, flush_interval=3600, metrics_registry="none")
    assert aegis.stores_events
    taken = aegis.event(
        "deployed 1.4.2\nto eu-west", type="alert", source="deployer", level="warning",
        tags=["deploy", "region:eu", "deploy"],
        payload={"version": "1.4.2", "hosts": (1, 2), "raw": "a\x00b\x1b"},  # controls kept
        timestamp=MOMENT, event_id="deploy-1.4.2", trace_id="0af7651916cd43dd8448eb211c80319c",
    )  # fmt: skip
    assert taken is True
    assert aegis.event("plain") is True
    stats = aegis.stats()
    assert (stats.events_accepted, stats.events_buffered, stats.events_dropped) == (2, 2, DROPS)
    assert stats.sinks[0].written == 0  # queued: nothing written before the flush

    assert aegis.force_flush(10)
    events = stored(aegis, store)
    assert events.pop("deploy-1.4.2") == {
        "event_id": "deploy-1.4.2",
        "timestamp": T0,
        "type": "alert",
        "source": "deployer",
        "level": "warning",
        "message": "deployed 1.4.2\nto eu-west",
        "tags": ["deploy", "region:eu"],  # each tag once, in the order given
        "payload": {"version": "1.4.2", "hosts": [1, 2], "raw": "a\x00b\x1b"},
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
    }
    [(random_id, plain)] = events.items()
    assert len(random_id) == 24 and int(random_id, 16) >= 0
    assert (plain["type"], plain["source"], plain["level"], plain["message"]) == (
        "log", "app", "info", "plain",
    )  # fmt: skip
    assert (plain["tags"], plain["payload"], plain["trace_id"]) == ([], None, None)
    stats = aegis.stats()
    assert (stats.events_accepted, stats.events_buffered) == (2, 0)
    [sink] = stats.sinks
    assert (sink.written, sink.backlog, sum(sink.dropped.values())) == (2, 0, 0)


def test_the_same_event_id_twice_is_stored_once(
    make_aegis: Callable[..., Aegis], store: str
) -> None:
    aegis = make_aegis(sink=store, flush_interval=3600, metrics_registry="none")
    assert aegis.event("first send", event_id="job-7", timestamp=T0)
    assert aegis.event("a retry", event_id="job-7", timestamp=T0 + 1)  # in the same batch
    assert aegis.force_flush(10)
    assert aegis.event("a later retry", event_id="job-7", timestamp=T0 + 2)  # another batch
    assert aegis.event("another", event_id="job-8", timestamp=T0)
    assert aegis.force_flush(10)
    events = stored(aegis, store)
    assert sorted(events) == ["job-7", "job-8"]
    assert events["job-7"]["message"] == "first send"  # the first one stored stays
    assert aegis.stats().events_accepted == 4  # each send was taken in


@pytest.mark.parametrize("flushing", [False, True])
def test_events_from_many_threads_at_once_are_all_stored_and_counted(
    make_aegis: Callable[..., Aegis], store: str, flushing: bool
) -> None:
    threads, each = 8, 250
    aegis = make_aegis(sink=store, flush_interval=3600, metrics_registry="none")
    start = threading.Barrier(threads + 1)
    answers: list[list[bool]] = [[] for _ in range(threads)]

    def send(number: int) -> None:
        start.wait()
        for index in range(each):
            answers[number].append(
                aegis.event(f"{number}/{index}", event_id=f"t{number}-{index}", tags=[f"t{number}"])
            )

    workers = [threading.Thread(target=send, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    if flushing:  # the flusher takes from the queue while the threads fill it
        while any(worker.is_alive() for worker in workers):
            aegis.force_flush(10)
    for worker in workers:
        worker.join(30)
        assert not worker.is_alive()
    assert all(all(sent) and len(sent) == each for sent in answers)
    assert aegis.force_flush(10)
    stats = aegis.stats()
    assert (stats.events_accepted, stats.events_buffered) == (threads * each, 0)
    assert stats.events_dropped == DROPS
    expected = sorted(f"t{n}-{i}" for n in range(threads) for i in range(each))
    assert stored_ids(aegis, store) == expected
    assert stats.sinks[0].written == threads * each


def test_events_are_flushed_at_shutdown(make_aegis: Callable[..., Aegis], store: str) -> None:
    aegis = make_aegis(sink=store, flush_interval=3600, metrics_registry="none")
    for number in range(5):
        assert aegis.event(f"event {number}", event_id=f"s{number}")
    assert stats_written(aegis) == 0
    assert aegis.shutdown(10)
    assert stored_ids(aegis, store) == [f"s{n}" for n in range(5)]
    stats = aegis.stats()
    assert (stats.events_accepted, stats.events_buffered, stats.events_dropped) == (5, 0, DROPS)


# -- refused, counted exactly ----------------------------------------------------------------


def test_a_full_queue_refuses_the_excess_and_counts_it_exactly(
    make_aegis: Callable[..., Aegis], store: str
) -> None:
    aegis = make_aegis(sink=store, flush_interval=3600, max_buffer=5, metrics_registry="none")
    aegis.recorder.events.wake_at = 2**62  # the flusher runs when asked
    assert aegis.force_flush(10)  # the flusher's first cycle is behind us
    answers = [aegis.event(f"e{n}", event_id=f"e{n}") for n in range(8)]
    assert answers == [True] * 5 + [False] * 3
    stats = aegis.stats()
    assert stats.events_accepted == 5 and stats.events_buffered == 5
    assert stats.events_dropped == {**DROPS, "event_buffer_full": 3}
    samples = scrape(aegis)
    assert samples[ACCEPTED] == 5
    assert samples[EVENTS_BUFFER] == 5
    assert dropped(samples, "event_buffer_full") == 3
    assert dropped(samples, "buffer_full") == 0  # the request inbox's own reason, untouched

    assert aegis.force_flush(10)
    assert stored_ids(aegis, store) == [f"e{n}" for n in range(5)]
    # Room again once the flusher took them.
    assert [aegis.event(f"e{n}", event_id=f"e{n}") for n in range(5, 8)] == [True] * 3
    assert aegis.force_flush(10)
    assert stored_ids(aegis, store) == [f"e{n}" for n in range(8)]
    stats = aegis.stats()
    assert (stats.events_accepted, stats.events_buffered) == (8, 0)
    assert stats.events_dropped == {**DROPS, "event_buffer_full": 3}
    assert scrape(aegis)[EVENTS_BUFFER] == 0


def test_after_shutdown_an_event_is_refused_and_counted(
    make_aegis: Callable[..., Aegis], store: str
) -> None:
    aegis = make_aegis(sink=store, flush_interval=3600, metrics_registry="none")
    assert aegis.event("before", event_id="before")
    assert aegis.shutdown(10)
    assert aegis.event("after", event_id="after-1") is False
    assert aegis.event("after", event_id="after-2") is False
    stats = aegis.stats()
    assert stats.events_accepted == 1 and stats.events_buffered == 0
    assert stats.events_dropped == {**DROPS, "event_shutdown": 2}
    assert stored_ids(aegis, store) == ["before"]
    samples = scrape(aegis)
    assert dropped(samples, "event_shutdown") == 2
    assert samples[ACCEPTED] == 1


def test_without_a_sink_that_stores_events_an_event_is_refused_and_counted(
    make_aegis: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    batches: list[Batch] = []
    aegis = make_aegis(sink=batches.append, flush_interval=3600, metrics_registry="none")
    assert not aegis.stores_events
    with caplog.at_level("WARNING", logger="aegis_mw.events"):
        assert [aegis.event(f"e{n}") for n in range(3)] == [False] * 3
    assert aegis.force_flush(10)
    stats = aegis.stats()
    assert (stats.events_accepted, stats.events_buffered) == (0, 0)
    assert stats.events_dropped == {**DROPS, "no_event_sink": 3}
    assert all(not batch.events for batch in batches)
    warned = [record for record in caplog.records if "no sink stores events" in record.message]
    assert len(warned) == 1  # logged once, counted each time
    samples = scrape(aegis)
    assert dropped(samples, "no_event_sink") == 3
    assert samples[ACCEPTED] == 0
    assert samples[EVENTS_BUFFER] == 0


def test_events_go_only_to_the_sinks_that_store_them(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    batches: list[Batch] = []
    database = f"sqlite:///{tmp_path / 'aegis.db'}"
    aegis = make_aegis(
        sink=["memory://", database, batches.append], flush_interval=3600,
        metrics_registry="none",
    )  # fmt: skip
    assert aegis.stores_events
    assert aegis.event("to both stores", event_id="both")
    assert aegis.force_flush(10)
    assert stored_ids(aegis, "memory://") == ["both"]
    assert stored_ids(aegis, database) == ["both"]
    assert all(not batch.events for batch in batches)
    written = {sink.name: sink.written for sink in aegis.stats().sinks}
    assert sorted(written.values()) == [0, 1, 1]


class EventSink:
    """A sink of the app's own that stores events (``stores_events = True``):
    it keeps each batch, and signals the first one holding an event."""

    name = "kept"
    stores_events = True

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.got_events = threading.Event()

    def write(self, batch: Batch) -> None:
        self.batches.append(batch)
        if batch.events:
            self.got_events.set()

    def close(self) -> None:
        pass


def test_the_flusher_stores_events_on_its_own(make_aegis: Callable[..., Aegis]) -> None:
    sink = EventSink()
    aegis = make_aegis(sink=sink, flush_interval=0.05, metrics_registry="none")
    assert aegis.stores_events
    assert aegis.event("on its own", event_id="tick")
    assert sink.got_events.wait(10)  # no force_flush: the flusher's own cycle
    [event] = [event for batch in sink.batches for event in batch.events]
    assert (event.event_id, event.message) == ("tick", "on its own")


@pytest.mark.usefixtures("hot_path")
def test_events_and_requests_share_batches_of_batch_size(make_aegis: Callable[..., Aegis]) -> None:
    sink = EventSink()
    aegis = make_aegis(sink=sink, flush_interval=3600, batch_size=3, metrics_registry="none")
    assert aegis.force_flush(10)
    for number in range(5):
        assert aegis.event(f"event {number}", event_id=f"e{number}")
        if number < 4:
            aegis.recorder.offer(inbox_item(f"/r/{number}", route="/r/{n}"))
    assert aegis.force_flush(10)
    assert aegis.event("after", event_id="e5")
    assert aegis.force_flush(10)
    batches = [batch for batch in sink.batches if len(batch)]
    assert all(len(batch) <= 3 for batch in batches), [len(batch) for batch in batches]
    assert all(not batch.sessions for batch in batches)
    events = [event for batch in batches for event in batch.events]
    requests = [record for batch in batches for record in batch.requests]
    assert all(type(event) is EventRecord for event in events)
    assert all(type(record) is RequestRecord for record in requests)
    assert sorted(event.event_id for event in events) == [f"e{n}" for n in range(6)]
    assert sorted(record.path for record in requests) == [f"/r/{n}" for n in range(4)]
    [stats] = aegis.stats().sinks
    assert (stats.written, stats.backlog, sum(stats.dropped.values())) == (10, 0, 0)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"type": "audit"}, "type"),
        ({"level": "loud"}, "level"),
        ({"level": "INFO"}, "level"),
        ({"source": ""}, "source"),
        ({"source": "a\x00b"}, "source"),
        ({"source": "s" * 129}, "source"),
        ({"message": 42}, "message"),
        ({"message": "x" * 8193}, "message"),
        ({"message": "bell\x07"}, "message"),
        ({"tags": "deploy"}, "tags"),
        ({"tags": 7}, "tags"),
        ({"tags": [f"t{n}" for n in range(33)]}, "tags"),
        ({"tags": ["ok", "a,b"]}, "tags[1]"),
        ({"tags": [""]}, "tags[0]"),
        ({"tags": [" padded"]}, "tags[0]"),
        ({"tags": ["ok", 5]}, "tags[1]"),
        ({"payload": [1, 2]}, "payload"),
        ({"payload": "text"}, "payload"),
        ({"payload": {"x": float("nan")}}, "payload"),
        ({"payload": {"x": object()}}, "payload"),
        ({"payload": {"big": "x" * 17_000}}, "payload"),
        ({"timestamp": float("inf")}, "timestamp"),
        ({"timestamp": -1}, "timestamp"),
        ({"timestamp": 1e300}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"timestamp": "2025-01-01"}, "timestamp"),
        ({"event_id": ""}, "id"),
        ({"event_id": "has space"}, "id"),
        ({"event_id": "-leading"}, "id"),
        ({"event_id": "request:0123"}, "id"),
        ({"event_id": "i" * 129}, "id"),
        ({"event_id": 12}, "id"),
        ({"trace_id": "0AF7651916CD43DD8448EB211C80319C"}, "trace_id"),
        ({"trace_id": "0" * 32}, "trace_id"),
        ({"trace_id": "abc"}, "trace_id"),
    ],
)
def test_a_bad_field_raises_naming_it_and_nothing_is_accepted(
    make_aegis: Callable[..., Aegis], fields: dict[str, Any], named: str
) -> None:
    aegis = make_aegis(flush_interval=3600, metrics_registry="none")
    message = fields.pop("message", "a message")
    with pytest.raises(EventError) as raised:
        aegis.event(message, **fields)
    assert isinstance(raised.value, ValueError)
    assert raised.value.field == named
    assert str(raised.value).startswith(f"{named}: ")
    stats = aegis.stats()
    assert (stats.events_accepted, stats.events_buffered, stats.events_dropped) == (0, 0, DROPS)
    assert aegis.force_flush(10)
    sink = aegis.sinks[0]
    assert isinstance(sink, MemorySink) and sink.events == []


# -- /metrics ---------------------------------------------------------------------------


def test_metrics_show_accepted_events_and_each_drop_reason(
    make_aegis: Callable[..., Aegis],
) -> None:
    aegis = make_aegis(flush_interval=3600, max_buffer=3, metrics_registry="none")
    aegis.recorder.events.wake_at = 2**62  # the flusher runs when asked
    assert aegis.force_flush(10)
    before = scrape(aegis)
    assert before[ACCEPTED] == 0 and before[EVENTS_BUFFER] == 0
    assert {reason: dropped(before, reason) for reason in DROPS} == DROPS
    assert [aegis.event(f"e{n}") for n in range(4)] == [True, True, True, False]
    during = scrape(aegis)
    assert (during[ACCEPTED], during[EVENTS_BUFFER]) == (3, 3)
    assert dropped(during, "event_buffer_full") == 1
    assert aegis.force_flush(10)
    flushed = scrape(aegis)
    assert (flushed[ACCEPTED], flushed[EVENTS_BUFFER]) == (3, 0)
    assert aegis.shutdown(10)
    assert aegis.event("late") is False
    after = scrape(aegis)
    assert (dropped(after, "event_buffer_full"), dropped(after, "event_shutdown")) == (1, 1)
    assert dropped(after, "no_event_sink") == 0 and after[ACCEPTED] == 3


def test_several_workers_event_counts_are_merged(
    tmp_path: Path, make_aegis: Callable[..., Aegis], living_pid: int, dead_pid: int
) -> None:
    for pid, sent in ((living_pid, 4), (dead_pid, 6)):
        worker = make_aegis(flush_interval=3600, max_buffer=3, metrics_registry="none")
        worker.recorder.events.wake_at = 2**62  # the flusher runs when asked
        assert worker.force_flush(10)
        assert sum(worker.event(f"e{n}") for n in range(sent)) == 3
        data = encode(worker.metrics.read_own(), pid=pid, live=True)
        (tmp_path / f"aegis_{pid}_0a0b0c0d.json").write_text(json.dumps(data))
    aegis = make_aegis(
        flush_interval=3600, metrics_registry="none", metrics_multiprocess_dir=str(tmp_path)
    )
    assert aegis.force_flush(10)
    assert aegis.event("ours") and aegis.event("and ours")
    samples = scrape(aegis)
    assert samples[ACCEPTED] == 2 + 3 + 3  # the dead worker's counts still count
    assert dropped(samples, "event_buffer_full") == 1 + 3
    assert samples[EVENTS_BUFFER] == 2 + 3  # a gauge: the living workers only
    # Publishing ours (each cycle does) and archiving the dead: nothing lost or counted twice.
    assert aegis.force_flush(10)
    samples = scrape(aegis)
    assert samples[ACCEPTED] == 8
    assert dropped(samples, "event_buffer_full") == 4
    assert samples[EVENTS_BUFFER] == 3


# -- PostgreSQL away, the spool keeps them -------------------------------------------------


def test_events_wait_in_the_spool_while_postgresql_is_away_and_are_stored_once_back(
    make_aegis: Callable[..., Aegis], postgres_url: str, tmp_path: Path
) -> None:
    """The store is a port where nothing listens, then a forwarder to the real
    server on that port (see tests/endpoints/test_store_outage.py)."""
    real = urlsplit(postgres_url)
    port = free_port()
    url = postgres_url.replace(f"@{real.hostname}:{real.port}/", f"@127.0.0.1:{port}/")
    assert url != postgres_url
    aegis = make_aegis(
        sink=url, spool_dir=str(tmp_path / "spool"), flush_interval=3600,
        retry_backoff_initial=0.05, retry_backoff_max=0.2, metrics_registry="none",
    )  # fmt: skip
    for number in range(20):
        assert aegis.event(f"during the outage {number}", event_id=f"o{number}", timestamp=T0)
    aegis.force_flush(10)
    assert aegis.event("sent again", event_id="o3", timestamp=T0)  # a client's retry
    aegis.force_flush(10)
    [sink] = aegis.stats().sinks
    # Handed to the spool (counted as written: the sink owes them no more).
    assert (sink.spool_records, sink.spooled, sink.backlog) == (21, 21, 0), sink
    assert sum(sink.dropped.values()) == 0, sink

    with closing(Forwarder(port, (real.hostname or "127.0.0.1", real.port or 5432))):
        # The store is tried again once its backoff (at most 0.2 s here) has passed.
        deadline = time.monotonic() + 30
        while aegis.stats().sinks[0].spool_records:
            assert time.monotonic() < deadline, aegis.stats().sinks[0]
            aegis.force_flush(5)
        [sink] = aegis.stats().sinks
        assert (sink.spool_records, sink.replayed, sink.spool_lost) == (0, 21, 0), sink
        events = stored(aegis, postgres_url)
    assert sorted(events) == sorted(f"o{number}" for number in range(20))
    assert events["o3"]["message"] == "during the outage 3"
    assert aegis.stats().events_dropped == DROPS


# -- a burst, big events, deep payloads ------------------------------------------------------


class SignallingSink(MemorySink):
    """A memory sink that says when a write brought events."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote_events = threading.Event()

    def write(self, batch: Batch) -> None:
        super().write(batch)
        if batch.events:
            self.wrote_events.set()


def test_a_burst_of_events_wakes_the_flusher(make_aegis: Callable[..., Aegis]) -> None:
    """As the inbox does: once a batch's worth waits, the flusher writes them
    without waiting out its interval, so a burst is stored, not refused."""
    sink = SignallingSink()
    aegis = make_aegis(sink=sink, flush_interval=3600, batch_size=10, metrics_registry="none")
    assert aegis.force_flush(10)  # the flusher's first cycle is behind us, asleep for an hour
    wake_at = aegis.recorder.events.wake_at
    assert 1 <= wake_at <= 10
    for number in range(wake_at):
        assert aegis.event(f"e{number}", event_id=f"e{number}")
    assert sink.wrote_events.wait(30), "the flusher slept on"
    assert len(sink.events) >= 1
    assert aegis.stats().events_dropped == DROPS


def test_the_queue_holds_at_most_its_bytes(make_aegis: Callable[..., Aegis]) -> None:
    """Big events fill it by their size, long before the count bound."""
    aegis = make_aegis(flush_interval=3600, metrics_registry="none")
    queue = aegis.recorder.events
    queue.wake_at = 2**62  # the flusher runs when asked
    queue.max_bytes = 100_000
    big = "x" * 8000
    answers = [aegis.event(big, payload={"blob": "y" * 15_000}) for _ in range(10)]
    assert answers.count(True) == 4 and answers[4:] == [False] * 6  # ~23 KB each
    assert aegis.stats().events_dropped["event_buffer_full"] == 6
    assert aegis.event("small")  # room for a small one still
    assert aegis.force_flush(10)
    assert aegis.event(big, payload={"blob": "y" * 15_000})  # taken again once written


def test_a_payload_nested_past_32_levels_is_refused_where_it_enters(
    make_aegis: Callable[..., Aegis],
) -> None:
    """Every reader takes a stored payload at some depth of its own stack: one
    nested deeper than 32 is refused before it is queued, never read back broken."""
    aegis = make_aegis(flush_interval=3600, metrics_registry="none")
    deep: Any = "end"
    for _ in range(32):
        deep = [deep]
    assert aegis.event("ok", payload={"x": deep[0]})  # 32 levels with the payload itself
    for depth in (33, 990, 5000):
        nested: Any = "end"
        for _ in range(depth):
            nested = {"k": nested}
        with pytest.raises(EventError) as refused:
            aegis.event("deep", payload={"x": nested})
        assert refused.value.field == "payload"
    assert aegis.stats().events_accepted == 1
