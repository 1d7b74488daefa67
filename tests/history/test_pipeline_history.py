"""Rollups through the real pipeline: sampling, retries, bounds, shutdown,
retention, and several processes sharing one history."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aegis_mw import Aegis
from aegis_mw.core import retention, sink_runner
from aegis_mw.core.record import Batch
from aegis_mw.core.rollup import RollupDelta
from aegis_mw.history import HistoryQueries, RequestQuery
from aegis_mw.sinks import MemorySink, SQLiteSink
from aegis_mw.testing import FakeClock
from tests.harness import inbox_item
from tests.spawned import run_together

from .dataset import NOW, batches, make_records, write_share


def _offer(aegis: Aegis, count: int, *, status: int = 200, start: float = 1000.0) -> None:
    for number in range(count):
        aegis.recorder.offer(inbox_item(f"/r/{number}", route="/r/{n}", status=status, start=start))


def _total(sink: Any, clock: FakeClock, name: str = "1h") -> int:
    return int(HistoryQueries(sink, clock=clock.wall).overview(name)["total"])


def test_rollups_count_requests_the_sampled_log_leaves_out(
    make_aegis: Callable[..., Aegis],
) -> None:
    sink, clock = MemorySink(), FakeClock()
    aegis = make_aegis(sink=sink, sample_rate=0.0, clock=clock, flush_interval=3600)
    _offer(aegis, 40)
    _offer(aegis, 3, status=503)  # errors are always kept in the log
    assert aegis.force_flush(timeout=10)
    assert len(sink.requests) == 3
    overview = HistoryQueries(sink, clock=clock.wall).overview("5m")
    assert (overview["total"], overview["failed"]) == (43, 3)


class LosesOneAcknowledgement(SQLiteSink):
    """Commits the first write, then raises as if the acknowledgement was lost."""

    lost = 0

    def write(self, batch: Batch) -> None:
        super().write(batch)
        if not self.lost:
            self.lost += 1
            raise ConnectionError("connection reset after commit")


def test_a_retried_write_adds_its_rollups_once(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    sink, clock = LosesOneAcknowledgement(str(tmp_path / "aegis.db")), FakeClock()
    aegis = make_aegis(sink=sink, clock=clock, flush_interval=3600, retry_backoff_initial=0.01)
    _offer(aegis, 25)
    assert aegis.force_flush(timeout=10) is False  # the lost acknowledgement
    _offer(aegis, 5)
    assert aegis.force_flush(timeout=10) is True
    assert sink.lost == 1
    assert _total(sink, clock) == 30
    assert len(sink.read_requests(RequestQuery(limit=1000))) == 30


def test_pending_rollups_are_bounded_and_what_is_refused_is_counted() -> None:
    full, extra = RollupDelta(), RollupDelta()
    for second in range(10):
        full.add(NOW + second * 5, "/a", "GET", 200, 1.0, False, 0, 0)
    for second in range(10, 14):
        extra.add(NOW + second * 5, "/a", "GET", 200, 1.0, False, 0, 0)
        extra.add(NOW + second * 5, "/a", "GET", 200, 2.0, False, 0, 0)
    pending = RollupDelta()
    assert pending.absorb(full, limit=11) == (0, 0)
    # One more cell fits; the other three (two requests each) are refused.
    assert pending.absorb(extra, limit=11) == (6, 0)
    assert (len(pending), pending.requests) == (11, 12)
    # Cells already held still merge when the bound is reached.
    assert pending.absorb(full, limit=11) == (0, 0)
    assert pending.requests == 22


def test_rollups_a_sink_cannot_take_by_shutdown_are_counted(
    make_aegis: Callable[..., Aegis], tmp_path: Path
) -> None:
    class Down(SQLiteSink):
        def write(self, batch: Batch) -> None:
            raise ConnectionError("down")

    aegis = make_aegis(sink=Down(str(tmp_path / "a.db")), flush_interval=3600)
    _offer(aegis, 12)
    assert aegis.shutdown(timeout=0.2) is False
    dropped = aegis.stats().sinks[0].dropped
    assert dropped["shutdown_timeout"] == 12
    assert dropped["rollups_shutdown_timeout"] == 12
    assert dropped["rollups_full"] == 0


def _count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute(sql).fetchone()[0])


def test_retention_prunes_in_small_batches(
    make_aegis: Callable[..., Aegis], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "aegis.db"
    sink = SQLiteSink(str(path))
    # 600 requests two days old, 300 from the last hour.
    old = [r._replace(timestamp=r.timestamp - 2 * 86_400) for r in make_records(600, seed=1)]
    recent = make_records(300, seed=2, span=3000)
    for batch in [*batches(old, tag="old"), *batches(recent, tag="new")]:
        sink.write(batch)
    monkeypatch.setattr(retention, "PRUNE_BATCH", 250)
    clock = FakeClock(wall=NOW)
    aegis = make_aegis(
        sink=sink, clock=clock, flush_interval=3600, retention_raw="1d", retention_rollups="3d"
    )
    old_requests = f"SELECT count(*) FROM aegis_requests WHERE timestamp < {NOW - 86_400}"
    assert _count(path, old_requests) == 600

    assert aegis.force_flush(timeout=10)
    # One small batch per table and cycle; another cycle is due at once. The
    # worker's first cycle may run before the flush request or together with it.
    cycles = aegis.flusher.cycle.cycles
    assert cycles in (1, 2)
    assert _count(path, old_requests) == 600 - 250 * cycles
    assert aegis.force_flush(timeout=10)
    assert aegis.force_flush(timeout=10)
    assert _count(path, old_requests) == 0
    assert _count(path, "SELECT count(*) FROM aegis_requests") == 300
    # Fine rollups two days old are gone; hourly ones are kept for retention_rollups.
    day_ago = NOW - 86_400
    fine = f"SELECT count(*) FROM aegis_rollups WHERE resolution = 5 AND bucket < {day_ago}"
    coarse = f"SELECT count(*) FROM aegis_rollups WHERE resolution = 3600 AND bucket < {day_ago}"
    assert _count(path, fine) == 0
    assert _count(path, coarse) > 0
    queries = HistoryQueries(sink, clock=clock.wall)
    assert queries.overview("7d")["total"] == 900  # hourly rollups still hold the old traffic


def test_processes_sharing_one_sqlite_file_give_one_history(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    records = make_records(1200, seed=3)
    shares = [records[index::3] for index in range(3)]
    reports, codes = run_together(_write_one_share, 3, f"sqlite:///{path}", shares)
    assert sorted(reports) == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert codes == [0, 0, 0]
    together = HistoryQueries(SQLiteSink(str(path)), clock=lambda: NOW)
    alone = MemorySink()
    for batch in batches(records):
        alone.write(batch)
    expected = HistoryQueries(alone, clock=lambda: NOW)
    for name in ("1h", "24h"):
        assert together.overview(name) == expected.overview(name)
        assert together.top_endpoints(name) == expected.top_endpoints(name)


def _write_one_share(url: str, shares: list[Any], index: int, barrier: Any, results: Any) -> None:
    write_share(url, shares[index], index, barrier, results)


def test_rollups_are_written_per_interval_not_per_batch(
    make_aegis: Callable[..., Aegis],
) -> None:
    sink, clock = MemorySink(), FakeClock()
    # The worker sleeps: flush_interval is an hour and batch_size (1000) never fills.
    aegis = make_aegis(sink=sink, clock=clock, flush_interval=3600)
    _offer(aegis, 10)
    assert aegis.force_flush(timeout=10)  # forced: records and rollups
    [runner] = aegis.flusher.runners
    assert runner.rollups_pending is None and runner.rollups_in_flight is None

    _offer(aegis, 30)
    # An ordinary cycle, within the interval.
    assert aegis.flusher.cycle.run(force=False, stop=lambda: False) is False
    assert len(sink.requests) == 40  # every record written
    assert _total(sink, clock) == 10  # the rollups of those 30 wait for the interval
    assert runner.rollups_pending is not None and runner.rollups_pending.requests == 30
    now = time.monotonic()
    assert not runner.rollups_due(now, now_anyway=False)
    assert runner.rollups_due(now + sink_runner.ROLLUP_INTERVAL, now_anyway=False)

    assert aegis.force_flush(timeout=10)
    assert _total(sink, clock) == 40
