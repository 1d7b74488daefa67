"""Retention pruned by one process of the app at a time: the holder of the
``retention`` lease in the shared SQLite file or PostgreSQL database."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.core import retention
from aegis_mw.sinks import SQLiteSink
from aegis_mw.testing import FakeClock
from tests.harness import inbox_item
from tests.spawned import run_together

from .dataset import NOW, batches, make_records

DAY = 86_400


class Store:
    """Sinks over one shared store (each its own connection, as each process
    of an app has), closed after the test; and a count of its expired rows."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind, self.url = kind, url
        self.made: list[Any] = []

    def make(self, *, closed_here: bool = True) -> Any:
        """A sink, closed after the test unless a pipeline owns (and closes) it."""
        if self.kind == "sqlite":
            sink: Any = SQLiteSink(self.url)
        else:
            from aegis_mw.sinks.postgres import PostgresSink  # needs psycopg

            sink = PostgresSink(self.url)
        if closed_here:
            self.made.append(sink)
        return sink

    def expired(self) -> int:
        query = "SELECT count(*) FROM aegis_requests WHERE timestamp < "
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.url)) as connection:
                return int(connection.execute(query + "?", (NOW - DAY,)).fetchone()[0])
        import psycopg

        with psycopg.connect(self.url) as connection:
            row = connection.execute(query + "%s", (NOW - DAY,)).fetchone()
            assert row is not None
            return int(row[0])

    def write_old(self, count: int, tag: str) -> None:
        """``count`` requests two days old (and their rollups)."""
        old = [r._replace(timestamp=r.timestamp - 2 * DAY) for r in make_records(count, seed=5)]
        sink = self.make()
        for batch in batches(old, tag=tag):
            sink.write(batch)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        shared = Store("sqlite", str(tmp_path / "shared.db"))
    else:
        shared = Store("postgresql", request.getfixturevalue("postgres_url"))
    yield shared
    for sink in shared.made:
        sink.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    shared = Store("sqlite", str(tmp_path / "shared.db"))
    yield shared
    for sink in shared.made:
        sink.close()


def test_a_lease_has_one_holder_until_it_runs_out_or_is_given_up(store: Store) -> None:
    first, second = store.make(), store.make()
    assert first.claim_lease("retention", "a", NOW, 180)
    assert not second.claim_lease("retention", "b", NOW + 179, 180)
    assert first.claim_lease("retention", "a", NOW + 179, 180)  # renewed to NOW + 359
    assert not second.claim_lease("retention", "b", NOW + 359, 180)
    assert second.claim_lease("retention", "b", NOW + 360, 180)  # ran out: taken over
    assert not first.claim_lease("retention", "a", NOW + 361, 180)
    first.release_lease("retention", "a")  # not its own: nothing changes
    assert not first.claim_lease("retention", "a", NOW + 362, 180)
    second.release_lease("retention", "b")
    assert first.claim_lease("retention", "a", NOW + 363, 180)
    # Leases of other jobs (the alert evaluator's) are rows of their own.
    assert second.claim_lease("evaluator", "b", NOW + 363, 180)


def test_one_pipeline_prunes_and_another_takes_over_when_it_stops(
    make_aegis: Callable[..., Aegis], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write_old(300, "first")
    monkeypatch.setattr(retention, "PRUNE_INTERVAL", 0.0)  # a prune every cycle
    clock = FakeClock(wall=NOW)
    options = {"clock": clock, "flush_interval": 3600, "retention_raw": "1d"}
    pruning = make_aegis(sink=store.make(closed_here=False), **options)
    waiting = make_aegis(sink=store.make(closed_here=False), **options)

    assert pruning.force_flush(timeout=10)
    assert store.expired() == 0
    pruning_retention = pruning.flusher.cycle.retention
    assert pruning_retention is not None
    assert list(pruning_retention.held.values()) == [True]

    store.write_old(200, "second")
    assert waiting.force_flush(timeout=10)
    assert store.expired() == 200  # the lease is the other pipeline's
    waiting_retention = waiting.flusher.cycle.retention
    assert waiting_retention is not None
    assert list(waiting_retention.held.values()) == [False]
    assert waiting_retention.deleted == 0

    # The same on /metrics and in stats(): the deleted rows, and who holds the lease.
    for aegis, lease in ((pruning, 1), (waiting, 0)):
        [sink] = aegis.stats().sinks
        assert (sink.prune_lease, sink.prune_failures) == (lease, 0)
        body = aegis.metrics.endpoint.respond().body.decode()
        assert f'aegis_retention_lease_held{{sink="{sink.name}"}} {lease}' in body
        deleted = f'aegis_retention_deleted_rows_total{{sink="{sink.name}"}} {sink.pruned}'
        assert deleted in body
    [pruned] = pruning.stats().sinks
    assert pruned.pruned >= 300 and pruned.pruned == pruning_retention.deleted

    assert pruning.shutdown(timeout=10)  # gives the lease up
    assert waiting.force_flush(timeout=10)
    assert store.expired() == 0
    assert list(waiting_retention.held.values()) == [True]
    assert waiting_retention.deleted >= 200  # the requests, and their rollups
    assert list(pruning_retention.held.values()) == [False]


def test_a_dead_holders_lease_is_taken_over_once_it_runs_out(
    make_aegis: Callable[..., Aegis], store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process that held the lease and died without giving it up.
    assert store.make().claim_lease(retention.LEASE, "gone:1:0", NOW, 180)
    store.write_old(100, "old")
    monkeypatch.setattr(retention, "PRUNE_INTERVAL", 0.0)
    clock = FakeClock(wall=NOW + 180)
    aegis = make_aegis(sink=store.make(closed_here=False), clock=clock, flush_interval=3600,
                       retention_raw="1d")  # fmt: skip
    assert aegis.force_flush(timeout=10)
    assert store.expired() == 100  # not yet run out (it expires after that second)
    clock.advance(1)
    assert aegis.force_flush(timeout=10)
    assert store.expired() == 0


class FailsWrites(SQLiteSink):
    """Refuses its writes while ``failing`` (a disk gone read-only, say)."""

    failing = False

    def write(self, batch: Any) -> None:
        if self.failing:
            raise OSError("disk I/O error")
        super().write(batch)


def test_a_pipeline_whose_writes_fail_stops_counting_the_lease_as_held(
    make_aegis: Callable[..., Aegis], sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PRUNE_INTERVAL", 0.0)
    sink = FailsWrites(sqlite_store.url)
    aegis = make_aegis(sink=sink, clock=FakeClock(wall=NOW), flush_interval=3600,
                       retention_raw="1d")  # fmt: skip
    assert aegis.force_flush(timeout=10)
    assert aegis.stats().sinks[0].prune_lease == 1
    sink.failing = True
    aegis.recorder.offer(inbox_item("/r/1", route="/r/{n}"))
    assert not aegis.force_flush(timeout=10)
    # It prunes no more, and its lease runs out: another process's to take.
    [stats] = aegis.stats().sinks
    assert stats.consecutive_failures and stats.prune_lease == 0


def test_of_several_processes_sharing_a_file_exactly_one_prunes(sqlite_store: Store) -> None:
    sqlite_store.write_old(500, "old")
    reports, codes = run_together(_prune_once, 3, sqlite_store.url)
    assert codes == [0, 0, 0]
    assert sorted(held for _, held, _ in reports) == [False, False, True], reports
    pruned = [deleted for _, held, deleted in reports if held]
    assert pruned[0] >= 500, reports  # the requests, and their rollups
    assert [deleted for _, held, deleted in reports if not held] == [0, 0], reports
    assert sqlite_store.expired() == 0


def _prune_once(path: str, index: int, barrier: Any, results: Any) -> None:
    """In a spawned process: a pipeline on the shared file, its first cycle (a
    prune) at the same moment as the others'; reports whether it held the
    lease and how many rows it deleted."""
    try:
        aegis = Aegis(sink=SQLiteSink(path), environ={}, clock=FakeClock(wall=NOW),
                      flush_interval=3600, retention_raw="1d")  # fmt: skip
        barrier.wait(timeout=60)
        assert aegis.force_flush(timeout=30)
        kept = aegis.flusher.cycle.retention
        assert kept is not None
        [held] = kept.held.values()
        results.put((index, held, kept.deleted))
        barrier.wait(timeout=60)  # none gives the lease up before all have tried
        aegis.shutdown(timeout=10)
    except BaseException as exc:  # reported to the test, which fails on it
        results.put((index, f"{type(exc).__name__}: {exc}", -1))
