"""A sink that refuses records for their content: the refused ones are found and set
aside (counted ``rejected``), everything else is stored once, in order; an outage is
still an outage (kept, backed off, never split)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from aegis_mw import Aegis, Batch, RecordRejected
from aegis_mw.core.refusals import HOLD_LIMIT
from aegis_mw.core.rollup import LEVELS
from aegis_mw.testing import MemorySink
from tests.core.faulty_sinks import (
    WAIT,
    FaultySink,
    SinkDown,
    accounted,
    drop_lines,
    http_item,
    offer_all,
    paths,
    sink_drops,
    sink_stats,
)


def refusing(sink: FaultySink, poison: set[str], *, down_at_attempt: int = 0) -> None:
    """Make ``sink`` refuse every batch holding a path in ``poison``; from its
    ``down_at_attempt``-th write on, it is down instead."""

    def check(batch: Batch) -> None:
        if down_at_attempt and len(sink.attempts) == down_at_attempt:
            sink.down = True
        for record in batch.requests:
            if record.path in poison:
                raise RecordRejected(f"cannot store {record.path}")

    sink.on_write = check


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "aegis_mw.flusher" and " refused " in record.getMessage()
    ]


@pytest.mark.parametrize("position", [0, 1, 499, 998, 999])
def test_one_refused_record_costs_only_itself(
    rig: Callable[..., Aegis], caplog: pytest.LogCaptureFixture, position: int
) -> None:
    """1000 records in one batch, one refused: the 999 others stored in order, each
    once, in at most log2(1000) + 3 writes; one log line says what and why."""
    sink = FaultySink("refuses-one")
    offered = paths(1000)
    refusing(sink, {offered[position]})
    aegis = rig(sink)
    offer_all(aegis, offered)

    assert aegis.force_flush(WAIT) is True

    assert sink.paths == offered[:position] + offered[position + 1 :]
    assert set(sink.deliveries.values()) == {1}
    assert len(sink.attempts) <= math.ceil(math.log2(1000)) + 3
    stats = aegis.stats()
    entry = sink_stats(aegis, "refuses-one")
    assert entry.dropped == sink_drops(rejected=1)
    assert (entry.written, entry.backlog, entry.errors, entry.consecutive_failures) == (
        999,
        0,
        0,
        0,
    )
    assert accounted(stats) == stats.offered == 1000
    [line] = refusal_lines(caplog)
    assert "refused request" in line and repr(offered[position]) in line
    assert f"cannot store {offered[position]}" in line


def test_many_refused_records_are_all_found_and_logged_once(
    rig: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    sink = FaultySink("refuses-some")
    offered = paths(500)
    poison = set(random.Random(13).sample(offered, 7))
    refusing(sink, poison)
    aegis = rig(sink, batch_size=200)
    offer_all(aegis, offered)

    assert aegis.force_flush(WAIT) is True

    assert sink.paths == [path for path in offered if path not in poison]
    assert set(sink.deliveries.values()) == {1}
    assert sink_stats(aegis, "refuses-some").dropped == sink_drops(rejected=7)
    assert len(refusal_lines(caplog)) == 1  # one burst, one line


def test_a_sink_refusing_every_record_is_an_outage_not_bad_records(
    rig: Callable[..., Aegis],
) -> None:
    """A sink that refuses every record (a column added NOT NULL, a bug in a custom
    sink) looks, record by record, like bad records: none is set aside before the sink
    has stored one. After HOLD_LIMIT refused in a row, and the backlog's last record
    refused too, all are kept and retried with backoff, as in an outage; once the
    sink is fixed, every record is stored once, in order."""
    sink = FaultySink("refuses-all")
    offered = paths(64)
    poison = set(offered)
    refusing(sink, poison)
    aegis = rig(sink)
    offer_all(aegis, offered)

    assert aegis.force_flush(WAIT) is False

    entry = sink_stats(aegis, "refuses-all")
    assert entry.dropped == sink_drops()
    assert (entry.backlog, entry.errors, entry.consecutive_failures) == (64, 1, 1)
    assert "refused every record it was given" in entry.last_error
    # Halvings down to one record (twice: the rest is tried whole once), then
    # one by one up to HOLD_LIMIT, then the last record: never one per record.
    assert len(sink.attempts) <= 2 * math.ceil(math.log2(64)) + HOLD_LIMIT + 2
    poison.clear()  # the schema is fixed
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == offered
    assert set(sink.deliveries.values()) == {1}
    stats = aegis.stats()
    assert accounted(stats) == stats.offered == 64


def test_a_run_of_refused_records_longer_than_the_hold_is_still_set_aside(
    rig: Callable[..., Aegis],
) -> None:
    """More refused records in a row than HOLD_LIMIT, then good ones: the backlog's
    last record proves the sink takes records (stored out of order), so the refused
    ones are set aside and the rest stored."""
    sink = FaultySink("refuses-a-run")
    offered = paths(100)
    refusing(sink, set(offered[:20]))
    aegis = rig(sink)
    offer_all(aegis, offered)

    assert aegis.force_flush(WAIT) is True

    assert sink.paths == [offered[99], *offered[20:99]]
    assert set(sink.deliveries.values()) == {1}
    assert sink_stats(aegis, "refuses-a-run").dropped == sink_drops(rejected=20)


def test_a_lone_refused_record_waits_for_a_record_the_sink_takes(
    rig: Callable[..., Aegis],
) -> None:
    """The only record owed is refused: nothing tells yet whether the sink takes any,
    so it is kept (with backoff) until a later record is stored; then it is set aside."""
    sink = FaultySink("refuses-the-only-one")
    refusing(sink, {"/only"})
    aegis = rig(sink)
    offer_all(aegis, ["/only"])

    assert aegis.force_flush(WAIT) is False
    entry = sink_stats(aegis, "refuses-the-only-one")
    assert (entry.backlog, entry.dropped) == (1, sink_drops())

    offer_all(aegis, ["/later"])
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == ["/later"]
    entry = sink_stats(aegis, "refuses-the-only-one")
    assert (entry.backlog, entry.dropped) == (0, sink_drops(rejected=1))


def test_at_shutdown_a_lone_refused_record_is_set_aside_at_once(
    rig: Callable[..., Aegis],
) -> None:
    """Shutdown has no time to wait for proof: the refused record is set aside and
    shutdown succeeds without waiting out its deadline's backoff."""
    sink = FaultySink("refuses-at-shutdown")
    refusing(sink, {"/only"})
    aegis = rig(sink, shutdown_timeout=30)
    offer_all(aegis, ["/only"])

    assert aegis.shutdown() is True

    entry = sink_stats(aegis, "refuses-at-shutdown")
    assert (entry.backlog, entry.dropped) == (0, sink_drops(rejected=1))


@pytest.mark.parametrize("error", [UnicodeEncodeError, OverflowError])
def test_a_user_function_that_cannot_encode_one_record(
    make_aegis: Callable[..., Aegis], error: type[Exception]
) -> None:
    """A callable sink that never heard of RecordRejected: the errors Python raises
    for a value that cannot be encoded or represented count as refusals too."""
    shipped: list[str] = []

    def ship(batch: Batch) -> None:
        lines = []
        for record in batch.requests:
            if record.path == "/café":
                if error is UnicodeEncodeError:
                    record.path.encode("ascii")
                raise OverflowError("too large")
            lines.append(record.path)
        shipped.extend(lines)

    aegis = make_aegis(sink=ship, flush_interval=3600)
    offer_all(aegis, ["/a", "/café", "/b"])

    assert aegis.force_flush(WAIT) is True

    assert shipped == ["/a", "/b"]
    assert aegis.stats().sinks[0].dropped == sink_drops(rejected=1)


@pytest.mark.parametrize(
    "error",
    [
        lambda: SinkDown("down"),
        lambda: ValueError("Expecting value: line 1 column 1"),
        TimeoutError,
    ],
)
def test_an_outage_is_kept_and_retried_never_split(
    rig: Callable[..., Aegis], error: Callable[[], BaseException]
) -> None:
    """Any error but a refusal (a ValueError from parsing an error page, say) keeps
    the whole batch, tries once and backs off; healed, it stores every record once."""
    sink = FaultySink("outage")
    sink.down = True
    sink.error = error
    aegis = rig(sink)
    offered = paths(300)
    offer_all(aegis, offered)

    assert aegis.force_flush(WAIT) is False

    assert len(sink.attempts) == 1
    entry = sink_stats(aegis, "outage")
    assert (entry.backlog, entry.errors, entry.dropped) == (300, 1, sink_drops())
    sink.heal()
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == offered


def test_an_outage_in_the_middle_of_a_search_loses_nothing(rig: Callable[..., Aegis]) -> None:
    """The sink goes down while the refused record is searched: the search waits
    for it to come back and goes on where it was."""
    sink = FaultySink("flaky")
    offered = paths(100)
    refusing(sink, {offered[70]}, down_at_attempt=3)
    aegis = rig(sink)
    offer_all(aegis, offered)

    assert aegis.force_flush(WAIT) is False
    entry = sink_stats(aegis, "flaky")
    assert entry.dropped == sink_drops()
    assert entry.written + entry.backlog == 100

    sink.down = False
    assert aegis.force_flush(WAIT) is True
    assert sink.paths == offered[:70] + offered[71:]
    assert set(sink.deliveries.values()) == {1}
    assert sink_stats(aegis, "flaky").dropped == sink_drops(rejected=1)


def test_shutdown_with_a_refused_record_stores_the_rest_and_succeeds(
    rig: Callable[..., Aegis],
) -> None:
    sink = FaultySink("shutdown")
    offered = paths(50)
    refusing(sink, {offered[10]})
    aegis = rig(sink, shutdown_timeout=30)
    offer_all(aegis, offered)

    assert aegis.shutdown() is True

    assert sink.paths == offered[:10] + offered[11:]
    entry = sink_stats(aegis, "shutdown")
    assert entry.dropped == sink_drops(rejected=1)


# -- rollups travel with a batch ---------------------------------------------------


class PickyHistory(MemorySink):
    """A history sink that refuses some records, or some rollup cells, for their content."""

    name = "picky"

    def __init__(self, paths: set[str] = frozenset(), routes: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__()
        self.bad_paths = paths
        self.bad_routes = routes
        self.attempts = 0
        self.delta_ids: list[str] = []

    def write(self, batch: Batch) -> None:
        self.attempts += 1
        for record in batch.requests:
            if record.path in self.bad_paths:
                raise RecordRejected(f"path {record.path}")
        if batch.rollups is not None:
            for _, route, _, _ in batch.rollups.cells:
                if route in self.bad_routes:
                    raise RecordRejected(f"route {route}")
        super().write(batch)
        if batch.rollups is not None and batch.rollups.cells:
            self.delta_ids.append(batch.rollups.delta_id)


def rollup_requests(sink: MemorySink) -> dict[str, int]:
    """Requests in the stored rollups by route, at every level (they must agree)."""
    by_level = []
    for level in LEVELS:
        counts: dict[str, int] = {}
        for row in sink.read_rollups(level, 0, 2**40, by_route=True):
            counts[row.route] = counts.get(row.route, 0) + row.requests
        by_level.append(counts)
    assert all(counts == by_level[0] for counts in by_level)
    return by_level[0]


def offer_routes(aegis: Aegis, routes: dict[str, int]) -> None:
    for route, count in routes.items():
        for number in range(count):
            aegis.recorder.offer(http_item(f"{route}/{number}", route=route))


def test_rollups_are_neither_lost_nor_applied_twice_when_records_are_refused(
    make_aegis: Callable[..., Aegis],
) -> None:
    sink = PickyHistory(paths={"/a/3", "/b/9"})
    aegis = make_aegis(sink=sink, flush_interval=3600)
    offer_routes(aegis, {"/a": 40, "/b": 60})

    assert aegis.force_flush(WAIT) is True

    assert len(sink.requests) == 98
    # Rollups count every request, those whose record was refused too: once.
    assert rollup_requests(sink) == {"/a": 40, "/b": 60}
    assert len(sink.delta_ids) == len(set(sink.delta_ids)) == 1
    entry = aegis.stats().sinks[0]
    assert (entry.dropped["rejected"], entry.dropped["rollups_rejected"]) == (2, 0)


def test_refused_rollup_cells_are_set_aside_and_the_others_applied(
    make_aegis: Callable[..., Aegis],
) -> None:
    sink = PickyHistory(routes={"/bad"})
    aegis = make_aegis(sink=sink, flush_interval=3600)
    offer_routes(aegis, {"/a": 5, "/bad": 7, "/c": 11, "/d": 13})

    assert aegis.force_flush(WAIT) is True

    assert len(sink.requests) == 36  # the records were never the trouble
    assert rollup_requests(sink) == {"/a": 5, "/c": 11, "/d": 13}
    entry = aegis.stats().sinks[0]
    assert (entry.dropped["rejected"], entry.dropped["rollups_rejected"]) == (0, 7)
    assert len(sink.delta_ids) == len(set(sink.delta_ids))
    # Parts of the refused delta, under ids derived from its own.
    assert all("." in delta_id for delta_id in sink.delta_ids)

    # Later rollups go out as usual.
    offer_routes(aegis, {"/a": 2})
    assert aegis.force_flush(WAIT) is True
    assert rollup_requests(sink)["/a"] == 7


def test_the_search_state_is_dropped_with_what_shutdown_could_not_write(
    rig: Callable[..., Aegis],
) -> None:
    """A sink down during a search, then shut down: what is left is counted
    shutdown_timeout, never written twice nor left half-searched."""
    sink = FaultySink("down-at-shutdown")
    offered = paths(40)
    refusing(sink, {offered[5]}, down_at_attempt=2)
    aegis = rig(sink)
    offer_all(aegis, offered)
    assert aegis.force_flush(WAIT) is False

    assert aegis.shutdown(timeout=0.2) is False

    entry = sink_stats(aegis, "down-at-shutdown")
    assert entry.dropped["rejected"] == 0
    assert entry.written + entry.dropped["shutdown_timeout"] == 40
    assert aegis.flusher.runners[0].isolation.suspect == 0


def test_rejected_records_show_in_the_metrics_and_the_drop_report(
    rig: Callable[..., Aegis], caplog: pytest.LogCaptureFixture
) -> None:
    sink = FaultySink("metrics")
    offered = paths(20)
    refusing(sink, {offered[3], offered[4]})
    aegis = rig(sink, metrics_registry="none")
    offer_all(aegis, offered)
    assert aegis.force_flush(WAIT) is True

    body = aegis.metrics.endpoint.respond().body.decode()
    assert 'aegis_records_dropped_total{reason="rejected"} 2' in body
    assert aegis.shutdown(timeout=WAIT) is True
    assert any("rejected@metrics=2" in line for line in drop_lines(caplog))


def test_a_retried_tail_probe_takes_out_the_record_it_probed(rig: Callable[..., Aegis]) -> None:
    """The probe (the backlog's last record) is stored but its acknowledgement
    is lost; records arrive before the retry. The retry sends the same record,
    and its success takes out that record, not the newest one: every record
    is stored, none lost without a count."""
    sink = FaultySink("probe-retry")
    first = paths(HOLD_LIMIT + 4, "/first")
    poison = set(first[:HOLD_LIMIT])
    probed = first[-1]
    lost_once: list[bool] = []

    def check(batch: Batch) -> None:
        for record in batch.requests:
            if record.path in poison:
                raise RecordRejected(f"cannot store {record.path}")
        if not lost_once and [record.path for record in batch.requests] == [probed]:
            lost_once.append(True)
            sink.lose_acks = 1  # stored, then the acknowledgement is lost

    sink.on_write = check
    aegis = rig(sink)
    offer_all(aegis, first)
    assert aegis.force_flush(WAIT) is False
    assert lost_once and sink.paths == [probed]
    later = paths(3, "/later")
    offer_all(aegis, later)

    assert aegis.force_flush(WAIT) is True

    assert sorted(sink.paths) == sorted(first[HOLD_LIMIT:] + later)
    entry = sink_stats(aegis, "probe-retry")
    assert entry.dropped == sink_drops(rejected=HOLD_LIMIT)
    assert entry.backlog == 0
    stats = aegis.stats()
    assert accounted(stats) == stats.offered == len(first) + len(later)
