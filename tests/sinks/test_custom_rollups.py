"""The app's own metrics in the stored history: memory, a SQLite file and the
real PostgreSQL store their changes at every resolution and answer alike
(a gauge: the raw sum of its samples, and the first and last 5-second
bucket sampled, the earliest and the latest of the processes'); deltas are
added once, processes add up, text of any character and label values of
any length come back, reads are bounded and ordered, rows of another kind
are left out when read, pruning keeps to each level's horizon (by the
time index), older schemas migrate in place, and a sink that was down
loses nothing (custom cells bounded apart from the requests')."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import pytest

from aegis_mw import Aegis
from aegis_mw.core import sink_runner
from aegis_mw.core.custom_history import (
    CustomCell,
    CustomKey,
    CustomRow,
    CustomSampler,
    labels_text,
)
from aegis_mw.core.custom_metrics import CustomMetrics, MetricSnapshot
from aegis_mw.core.history import RequestQuery
from aegis_mw.core.record import Batch
from aegis_mw.core.rollup import (
    LEVELS,
    RollupDelta,
    RollupRow,
    encode_histogram,
    encode_histogram_array,
    expand,
    parameter_rows,
)
from aegis_mw.core.sink import RecordRejected
from aegis_mw.history.custom_series import Point, custom_history, figures
from aegis_mw.history.ranges import TimeRange
from aegis_mw.sinks import MemorySink, SQLiteSink, build_sink, history_sql, sqlite_schema
from aegis_mw.testing import FakeClock
from tests.harness import inbox_item

#: A wall time on a bucket boundary of every level (a multiple of 3600).
T = 1_699_999_200
#: Buckets are read over this whole range.
WHOLE = (0, 2**40)
#: Nothing happens in the background: the flusher waits for force_flush, and a
#: failed sink is retried by the next force_flush only.
QUIET: dict[str, Any] = {
    "flush_interval": 3600.0,
    "retry_backoff_initial": 60.0,
    "retry_backoff_max": 60.0,
}


class CustomStore(Protocol):
    """What a history sink offers for the app's own metrics."""

    def write(self, batch: Batch) -> None: ...

    def read_custom_rollups(
        self, metric: str, resolution: int, start: int, end: int, limit: int = 2**62
    ) -> list[CustomRow]: ...

    def read_custom_metrics(self) -> list[MetricSnapshot]: ...

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]: ...

    def prune(self, raw_before: float, rollups_before: Mapping[int, float], limit: int) -> int: ...

    def close(self) -> None: ...


@pytest.fixture
def store(history_sink_url: str) -> Iterator[CustomStore]:
    """A sink of each kind that keeps history, closed after the test."""
    sink = cast(CustomStore, build_sink(history_sink_url))
    yield sink
    sink.close()


def description(
    name: str,
    kind: str,
    help_text: str,
    labels: tuple[str, ...] = (),
    bounds: tuple[float, ...] = (),
    mode: str = "",
) -> MetricSnapshot:
    return MetricSnapshot(name, kind, help_text, labels, bounds, mode, {}, 0)


JOBS = description("jobs", "counter", "Jobs done.", ("region",))
QUEUE = description("queue", "gauge", "Queue depth.", mode="max")
LATENCY = description("latency", "histogram", "Latency.", ("route",), (1.0, 5.0))


def counter(total: float) -> CustomCell:
    return [total, 0, None, None, None, None]


def gauge(value: float, offset: int, last: int | None = None) -> CustomCell:
    """One process's sample of the bucket ``T + offset`` (its span that
    bucket alone), or a cell spanning to ``T + last``."""
    return [value, 1, value, value, None, [T + offset, T + (offset if last is None else last)]]


def histogram(total: float, counts: list[int]) -> CustomCell:
    return [total, sum(counts), None, None, counts, None]


def key(offset: int, metric: str, *labels: str) -> CustomKey:
    return (T + offset, metric, labels_text(labels))


def delta_of(
    delta_id: str, cells: dict[CustomKey, CustomCell], metrics: list[MetricSnapshot]
) -> RollupDelta:
    delta = RollupDelta()
    delta.custom = cells
    delta.metrics = {metric.name: metric for metric in metrics}
    delta.delta_id = delta_id
    return delta


def row(
    offset: int,
    labels: tuple[str, ...],
    total: Any,
    number: int = 0,
    low: float | None = None,
    high: float | None = None,
    counts: list[int] | None = None,
    first: int | None = None,
    last: int | None = None,
) -> CustomRow:
    """An expected row: bucket ``T + offset``, the label values as stored,
    a gauge's first and last bucket sampled at ``T + first`` and ``T + last``."""
    return CustomRow(
        T + offset, labels_text(labels), total, number, low, high, counts,
        None if first is None else T + first, None if last is None else T + last,
    )  # fmt: skip


def sampled(
    offset: int, total: float, number: int, low: float, high: float, first: int, last: int
) -> CustomRow:
    """An expected gauge row: the raw sum of ``number`` samples, and the
    first and last 5-second bucket sampled (offsets from T)."""
    return row(offset, (), total, number, low, high, first=first, last=last)


def stored(sink: CustomStore, metric: str) -> dict[int, list[CustomRow]]:
    """The metric's rows at every level, as the sink orders them: by bucket,
    then labels (checked)."""
    rows = {level: sink.read_custom_rollups(metric, level, *WHOLE) for level in LEVELS}
    for level_rows in rows.values():
        assert level_rows == sorted(level_rows, key=lambda r: (r.bucket, r.labels))
    return rows


def read_gauge(sink: CustomStore, metric: str, level: int, start: int, step: int) -> Any:
    """The "sum" value a chart reads from one resolution's rows over
    ``[start, start + step)`` (custom_series: one point)."""
    point = Point()
    for stored_row in sink.read_custom_rollups(metric, level, start, start + step):
        point.add(stored_row, level)
    return figures(description(metric, "gauge", "", mode="sum"), point, step)["value"]


def first_delta() -> RollupDelta:
    return delta_of(
        "process-1.1",
        {
            key(0, "jobs", "eu"): counter(3),
            key(0, "jobs", "us"): counter(1),
            key(5, "jobs", "eu"): counter(4),
            key(60, "jobs", "eu"): counter(10),
            key(3600, "jobs", "eu"): counter(7),
            key(0, "queue"): gauge(6, 0),
            key(5, "queue"): gauge(12, 5),
            key(0, "latency", "/a"): histogram(6.5, [1, 1, 0]),
            key(5, "latency", "/a"): histogram(10.0, [0, 0, 1]),
        },
        [JOBS, QUEUE, LATENCY],
    )


def check_first_delta(sink: CustomStore) -> None:
    """What ``first_delta`` written once reads back as."""
    jobs = stored(sink, "jobs")
    assert jobs[5] == [
        row(0, ("eu",), 3), row(0, ("us",), 1), row(5, ("eu",), 4), row(60, ("eu",), 10),
        row(3600, ("eu",), 7),
    ]  # fmt: skip
    assert jobs[60] == [
        row(0, ("eu",), 7), row(0, ("us",), 1), row(60, ("eu",), 10), row(3600, ("eu",), 7)
    ]  # fmt: skip
    for level in (300, 3600):
        assert jobs[level] == [row(0, ("eu",), 17), row(0, ("us",), 1), row(3600, ("eu",), 7)]

    queue = stored(sink, "queue")
    assert queue[5] == [sampled(0, 6, 1, 6, 6, 0, 0), sampled(5, 12, 1, 12, 12, 5, 5)]
    for level in (60, 300, 3600):
        # The raw sum at every level, and the first and last bucket sampled.
        assert queue[level] == [sampled(0, 18, 2, 6, 12, 0, 5)]
    # Counters and histograms (row's first and last None) have none.

    latency = stored(sink, "latency")
    assert latency[5] == [
        row(0, ("/a",), 6.5, 2, counts=[1, 1, 0]),
        row(5, ("/a",), 10.0, 1, counts=[0, 0, 1]),
    ]
    for level in (60, 300, 3600):
        assert latency[level] == [row(0, ("/a",), 16.5, 3, counts=[1, 1, 1])]

    assert sink.read_custom_metrics() == [JOBS, LATENCY, QUEUE]


# -- writing and reading -------------------------------------------------------------


def test_custom_changes_are_stored_at_every_level(store: CustomStore) -> None:
    assert store.read_custom_metrics() == []
    assert store.read_custom_rollups("jobs", 5, *WHOLE) == []
    store.write(Batch(rollups=first_delta()))
    check_first_delta(store)
    # Exactly the range asked for (its end left out), the metric asked for.
    in_range = store.read_custom_rollups("jobs", 5, T + 5, T + 60)
    assert in_range == [row(5, ("eu",), 4)]
    assert store.read_custom_rollups("jobs", 60, T + 1, T + 60) == []
    assert store.read_custom_rollups("nothing", 5, *WHOLE) == []
    assert store.read_custom_rollups("jobs", 10, *WHOLE) == []
    # Nothing of it in the request rollups.
    assert all(store.read_rollups(level, *WHOLE, by_route=False) == [] for level in LEVELS)
    # What a read gives is the caller's: changing it changes nothing stored.
    [first, *_] = store.read_custom_rollups("latency", 5, *WHOLE)
    assert first.counts is not None
    first.counts.append(99)
    first.counts[0] = 1000
    check_first_delta(store)


def test_custom_cells_ride_with_request_cells(store: CustomStore) -> None:
    delta = first_delta()
    delta.add(T + 1, "/a", "GET", 200, 12.5, False, 10, 20)
    delta.add(T + 2, "/a", "GET", 503, 2.5, True, 10, 20)
    store.write(Batch(rollups=delta))
    check_first_delta(store)
    reference = MemorySink()
    only_requests = RollupDelta()
    only_requests.cells, only_requests.requests = delta.cells, delta.requests
    only_requests.delta_id = "reference"
    reference.write(Batch(rollups=only_requests))
    for level in LEVELS:
        for by_route in (False, True):
            assert sorted(store.read_rollups(level, *WHOLE, by_route=by_route)) == sorted(
                reference.read_rollups(level, *WHOLE, by_route=by_route)
            )


def test_a_delta_written_twice_is_added_once(store: CustomStore) -> None:
    delta = first_delta()
    store.write(Batch(rollups=delta))
    store.write(
        Batch(rollups=delta, batch_id="another batch")
    )  # a retry of a write that did commit
    check_first_delta(store)
    # The same figures under another id are another process's: added.
    again = first_delta()
    again.delta_id = "process-2.1"
    store.write(Batch(rollups=again))
    assert stored(store, "jobs")[300] == [
        row(0, ("eu",), 34), row(0, ("us",), 2), row(3600, ("eu",), 14)
    ]  # fmt: skip
    # Its gauge samples too; the span is the same buckets', not longer.
    queue = stored(store, "queue")
    assert queue[5] == [sampled(0, 12, 2, 6, 6, 0, 0), sampled(5, 24, 2, 12, 12, 5, 5)]
    assert all(queue[level] == [sampled(0, 36, 4, 6, 12, 0, 5)] for level in (60, 300, 3600))


def test_two_processes_deltas_of_one_bucket_add_up(store: CustomStore) -> None:
    one = delta_of(
        "one",
        {
            key(0, "jobs", "eu"): counter(3),
            key(0, "queue"): gauge(6, 0),
            key(0, "latency", "/a"): histogram(6.5, [1, 1, 0]),
        },
        [JOBS, QUEUE, LATENCY],
    )
    other = delta_of(
        "other",
        {
            key(0, "jobs", "eu"): counter(5),
            key(5, "jobs", "eu"): counter(2),
            key(0, "queue"): gauge(-2, 0),
            key(5, "queue"): gauge(20, 5),
            key(0, "latency", "/a"): histogram(4.0, [0, 2, 1]),
            # Declared with another bucket (one more): the counts add element by element.
            key(5, "latency", "/a"): histogram(1.0, [1, 0, 0, 2]),
        },
        [JOBS, QUEUE, LATENCY],
    )
    store.write(Batch(rollups=one))
    store.write(Batch(rollups=other))

    jobs = stored(store, "jobs")
    assert jobs[5] == [row(0, ("eu",), 8), row(5, ("eu",), 2)]
    assert all(jobs[level] == [row(0, ("eu",), 10)] for level in (60, 300, 3600))
    queue = stored(store, "queue")
    # Two processes' samples of one bucket: their sum, the least and the greatest.
    assert queue[5] == [sampled(0, 4, 2, -2, 6, 0, 0), sampled(5, 20, 1, 20, 20, 5, 5)]
    for level in (60, 300, 3600):
        # 2 buckets spanned: the earliest first and the latest last of the processes'.
        assert queue[level] == [sampled(0, 24, 3, -2, 20, 0, 5)]
        # The average of the processes' sum: (4 + 20) / 2.
        assert read_gauge(store, "queue", level, T, 60) == 12
    assert read_gauge(store, "queue", 5, T, 60) == 12
    latency = stored(store, "latency")
    assert latency[5] == [
        row(0, ("/a",), 10.5, 5, counts=[1, 3, 1]),
        row(5, ("/a",), 1.0, 3, counts=[1, 0, 0, 2]),
    ]
    for level in (60, 300, 3600):
        assert latency[level] == [row(0, ("/a",), 11.5, 8, counts=[2, 3, 1, 2])]
    # Shorter counts onto longer stored ones: the stored tail is kept.
    short = delta_of("short", {key(5, "latency", "/a"): histogram(0.5, [1])}, [LATENCY])
    store.write(Batch(rollups=short))
    latency = stored(store, "latency")
    assert latency[5][1] == row(5, ("/a",), 1.5, 4, counts=[2, 0, 0, 2])
    for level in (60, 300, 3600):
        assert latency[level] == [row(0, ("/a",), 12.0, 9, counts=[3, 3, 1, 2])]


def test_a_gauge_low_and_high_come_from_whichever_process_has_them(store: CustomStore) -> None:
    """A row's least and greatest sample, and its span, are kept when a
    delta of another metric's kind (none of them) meets it, and taken when
    it had none."""
    counter_first = delta_of(
        "a", {key(0, "odd"): counter(2)}, [description("odd", "counter", "Odd.")]
    )
    gauge_next = delta_of(
        "b", {key(0, "odd"): gauge(-3.5, 0)}, [description("odd", "gauge", "Odd.")]
    )
    counter_last = delta_of(
        "c", {key(0, "odd"): counter(1)}, [description("odd", "counter", "Odd.")]
    )
    for delta in (counter_first, gauge_next, counter_last):
        store.write(Batch(rollups=delta))
    # And its span: NULL until a gauge's sample gives one, kept after.
    assert all(
        stored(store, "odd")[level] == [sampled(0, -0.5, 1, -3.5, -3.5, 0, 0)] for level in LEVELS
    )


def gauge_processes(count: int) -> list[tuple[Any, CustomSampler]]:
    """Processes' gauge ``depth`` and their samplers."""
    processes = []
    for _ in range(count):
        metrics = CustomMetrics("aegis_", (1.0,))
        processes.append((metrics.declare("gauge", "depth", "Depth."), CustomSampler(metrics)))
    return processes


def sample_into(store: CustomStore, processes: list[tuple[Any, CustomSampler]], now: float) -> None:
    """Each process's forced sample at ``now``, written as its own delta."""
    for number, (_, sampler) in enumerate(processes):
        cells, described = sampler.take(now, forced=True)
        delta = delta_of(f"process-{number}.{now}", cells, list(described.values()))
        store.write(Batch(rollups=delta))


def test_a_gauges_span_keeps_the_earliest_first_and_latest_last_whatever_the_order(
    store: CustomStore,
) -> None:
    """A later write of an earlier bucket (a spooled delta replayed late)
    moves the first back; one of a later bucket moves the last on; one
    inside the span changes neither."""
    late = delta_of("late", {key(10, "queue"): gauge(5, 10)}, [QUEUE])
    early = delta_of("early", {key(5, "queue"): gauge(4, 5)}, [QUEUE])
    other = delta_of("other", {key(10, "queue"): gauge(1, 10)}, [QUEUE])
    for delta in (late, early, other):
        store.write(Batch(rollups=delta))
    queue = stored(store, "queue")
    assert queue[5] == [sampled(5, 4, 1, 4, 4, 5, 5), sampled(10, 6, 2, 1, 5, 10, 10)]
    assert all(queue[level] == [sampled(0, 10, 3, 1, 5, 5, 10)] for level in (60, 300, 3600))
    # A later bucket afterwards moves the last on, an earlier one the first back.
    store.write(Batch(rollups=delta_of("more", {key(15, "queue"): gauge(2, 15)}, [QUEUE])))
    store.write(Batch(rollups=delta_of("first", {key(0, "queue"): gauge(2, 0)}, [QUEUE])))
    store.write(Batch(rollups=delta_of("inside", {key(5, "queue"): gauge(3, 5)}, [QUEUE])))
    for level in (60, 300, 3600):
        [minute] = stored(store, "queue")[level]
        assert (minute.first, minute.last, minute.number) == (T, T + 15, 6)
        # 17 over the 4 buckets from T to T+15.
        assert read_gauge(store, "queue", level, T, level) == 4.25


def test_the_stores_take_the_least_first_and_the_greatest_last_apart(store: CustomStore) -> None:
    """Each of the two columns on its own (``least`` and ``greatest`` on
    upsert): a span that starts earlier but ends earlier changes the first
    only, and a row with none (a counter's change of the same key) neither."""
    spans = description("spans", "gauge", "Spans.", mode="sum")
    writes = [
        gauge(1, 20, 40),  # as a merged delta's cell may span
        gauge(1, 10, 30),  # the first back
        gauge(1, 25, 50),  # the last on
        counter(1),  # no span
        gauge(1, 15, 45),  # inside
    ]
    expected = [(20, 40), (10, 40), (10, 50), (10, 50), (10, 50)]
    for number, (cell, (first, last)) in enumerate(zip(writes, expected, strict=True)):
        store.write(Batch(rollups=delta_of(f"write-{number}", {key(0, "spans"): cell}, [spans])))
        for level in LEVELS:
            [written] = store.read_custom_rollups("spans", level, *WHOLE)
            assert (written.first, written.last) == (T + first, T + last)
            assert all(type(bucket) is int for bucket in (written.first, written.last))
    [final] = store.read_custom_rollups("spans", 5, *WHOLE)
    assert (final.total, final.number, final.low, final.high) == (5, 4, 1, 1)


def test_a_worker_replaced_mid_minute_reads_alike_at_every_resolution_when_stored(
    store: CustomStore,
) -> None:
    """The old worker samples the minute's first 6 buckets, its replacement
    (a new process) the last 6: every resolution reads 10."""
    for number, start in enumerate((T, T + 30)):
        [(depth, sampler)] = gauge_processes(1)
        depth.set(10)
        for step in range(6):
            cells, described = sampler.take(start + 5 * step + 1, forced=True)
            delta = delta_of(f"worker-{number}.{step}", cells, list(described.values()))
            store.write(Batch(rollups=delta))
    depth_rows = stored(store, "depth")
    assert len(depth_rows[5]) == 12
    for level in (60, 300, 3600):
        assert depth_rows[level] == [sampled(0, 120, 12, 10, 10, 0, 55)]
    for level in LEVELS:
        assert read_gauge(store, "depth", level, T, 60) == 10
        assert read_gauge(store, "depth", level, T - T % level, max(level, 60)) == 10


def test_gauge_samples_of_two_processes_are_stored_as_their_sum_and_read_as_its_average(
    store: CustomStore,
) -> None:
    """Two processes sampling the same three 5-second buckets of a minute,
    then two that replaced them a bucket of the next (holding nothing of
    theirs): the raw sums, the first and last bucket sampled (the same for
    both processes: a bucket counts once), and each resolution reads the
    time average of the processes' sum over the buckets from its first
    sample to its last in each stored bucket."""
    processes = gauge_processes(2)
    values = [(4, 1), (6, 2), (11, 3), (7, 0)]
    for offset, pair in zip((0, 5, 10, 60), values, strict=True):
        if offset == 60:
            processes = gauge_processes(2)
        for (depth_gauge, _), value in zip(processes, pair, strict=True):
            depth_gauge.set(value)
        sample_into(store, processes, T + offset + 1)
    depth = stored(store, "depth")
    assert depth[5] == [
        sampled(0, 5, 2, 1, 4, 0, 0), sampled(5, 8, 2, 2, 6, 5, 5),
        sampled(10, 14, 2, 3, 11, 10, 10), sampled(60, 7, 2, 0, 7, 60, 60),
    ]  # fmt: skip
    assert depth[60] == [sampled(0, 27, 6, 1, 11, 0, 10), sampled(60, 7, 2, 0, 7, 60, 60)]
    for level in (300, 3600):
        assert depth[level] == [sampled(0, 34, 8, 0, 11, 0, 60)]
    for level in (5, 60):
        # (5 + 8 + 14) / 3 over the first minute; 7 over the next.
        assert read_gauge(store, "depth", level, T, 60) == 9
        assert read_gauge(store, "depth", level, T + 60, 60) == 7
        # Over the hour: 4 buckets spanned (3 in one minute, 1 in the other).
        assert read_gauge(store, "depth", level, T, 3600) == (5 + 8 + 14 + 7) / 4
    for level in (300, 3600):
        # One stored bucket spanning T..T+60: the 9 buckets no process
        # sampled between count as zero (34 over 13 buckets).
        assert read_gauge(store, "depth", level, T, 3600) == round(34 / 13, 6)


def test_one_gauge_sample_in_a_minute_reads_as_itself_at_every_resolution(
    store: CustomStore,
) -> None:
    """Not 7 * 5 / 60: the average over the buckets sampled."""
    processes = gauge_processes(1)
    processes[0][0].set(7)
    sample_into(store, processes, T + 122)
    assert [(r.first, r.last) for level in LEVELS for r in stored(store, "depth")[level]] == [
        (T + 120, T + 120)
    ] * len(LEVELS)
    for level in LEVELS:
        start = T + 120 - 120 % level
        assert read_gauge(store, "depth", level, start, max(level, 60)) == 7


@pytest.mark.parametrize("help_text", ["Jobs\x00 done \ud800 ☃ é", "\udfff", "\x00"])
def test_help_and_label_text_of_any_character_come_back(store: CustomStore, help_text: str) -> None:
    values = ["a\x00b", "\ud800", "日本 ☃", "", '"quoted" \\ ,']
    metric = description("odd", "counter", help_text, ("name", "other"))
    cells = {
        key(0, "odd", value, "\x00"): counter(number + 1) for number, value in enumerate(values)
    }
    store.write(Batch(rollups=delta_of("text", cells, [metric])))

    rows = stored(store, "odd")[5]
    assert sorted((json.loads(r.labels), r.total) for r in rows) == sorted(
        ([value, "\x00"], number + 1) for number, value in enumerate(values)
    )
    assert all(r.labels.isascii() for r in rows)
    assert store.read_custom_metrics() == [metric]
    # The latest description is the one kept.
    declared_again = description("odd", "counter", f"{help_text} v2 \ud801", ("name", "other"))
    store.write(
        Batch(rollups=delta_of("again", {key(5, "odd", "x", "y"): counter(1)}, [declared_again]))
    )
    assert store.read_custom_metrics() == [declared_again]


def test_prune_removes_custom_rows_past_each_levels_horizon(store: CustomStore) -> None:
    offsets = (0, 55, 60, 295, 300, 3595, 3600, 7200)
    cells = {key(offset, "jobs", "eu"): counter(1) for offset in offsets}
    cells.update({key(0, "queue"): gauge(2.5, 0), key(7200, "queue"): gauge(3.0, 7200)})
    cells.update({key(60, "latency", "/a"): histogram(0.5, [1, 0, 0])})
    store.write(Batch(rollups=delta_of("old and new", cells, [JOBS, QUEUE, LATENCY])))
    before = {metric: stored(store, metric) for metric in ("jobs", "queue", "latency")}
    assert [len(before["jobs"][level]) for level in LEVELS] == [8, 7, 5, 3]

    horizons = {5: T + 300.0, 60: T + 600.5, 300: T + 3600.0}  # hourly rows kept
    for _ in range(100):  # a few rows per call: until nothing is left to prune
        if not store.prune(0.0, horizons, 2):
            break
    else:
        pytest.fail("pruning never ended")

    for metric, levels in before.items():
        after = stored(store, metric)
        for level in LEVELS:
            horizon = horizons.get(level, -1.0)
            assert after[level] == [r for r in levels[level] if r.bucket >= horizon]
    jobs = stored(store, "jobs")
    assert [r.bucket - T for r in jobs[5]] == [300, 3595, 3600, 7200]
    assert [r.bucket - T for r in jobs[60]] == [3540, 3600, 7200]
    assert [(r.bucket - T, r.total) for r in jobs[300]] == [(3600, 1), (7200, 1)]
    assert [(r.bucket - T, r.total) for r in jobs[3600]] == [(0, 6), (3600, 1), (7200, 1)]
    assert stored(store, "latency")[60] == []
    assert [r.bucket - T for r in stored(store, "queue")[5]] == [7200]
    assert store.read_custom_metrics() == [JOBS, LATENCY, QUEUE]  # descriptions stay


# -- label values of any length, bounded reads, rows of another kind ---------------------------


def test_a_label_value_of_3000_characters_none_ascii_is_stored_and_read_back(
    store: CustomStore,
) -> None:
    """Rows are keyed by a digest of their label text: a value of any length
    fits the key (PostgreSQL's B-tree rows hold about 2.7 kB at most; this
    one's text is 24 kB), and two values differing in their last character
    only are two rows."""
    long = "é日☃𝄞" * 750  # 3,000 characters, one of each four past the BMP
    assert len(long) == 3000 and not any(character.isascii() for character in long)
    other = long[:-1] + "ü"
    wide = description("wide", "gauge", "Wide ☃.", ("name",), mode="sum")
    store.write(
        Batch(
            rollups=delta_of(
                "one", {key(0, "wide", long): gauge(4, 0), key(0, "wide", other): gauge(6, 0)},
                [wide],
            )
        )
    )  # fmt: skip
    # Another process's sample of the same series and bucket (added to its
    # row), and the next bucket's.
    store.write(
        Batch(
            rollups=delta_of(
                "two", {key(0, "wide", long): gauge(2, 0), key(5, "wide", long): gauge(8, 5)},
                [wide],
            )
        )
    )  # fmt: skip
    rows = stored(store, "wide")
    assert len(labels_text([long])) > 20_000
    by_value = {
        level: {(r.bucket - T, json.loads(r.labels)[0]): r for r in rows[level]} for level in LEVELS
    }
    assert by_value[5] == {
        (0, long): row(0, (long,), 6, 2, 2, 4, first=0, last=0),
        (0, other): row(0, (other,), 6, 1, 6, 6, first=0, last=0),
        (5, long): row(5, (long,), 8, 1, 8, 8, first=5, last=5),
    }
    for level in (60, 300, 3600):
        assert by_value[level] == {
            (0, long): row(0, (long,), 14, 3, 2, 8, first=0, last=5),
            (0, other): row(0, (other,), 6, 1, 6, 6, first=0, last=0),
        }
    assert all(r.labels.isascii() for level in LEVELS for r in rows[level])
    assert store.read_custom_metrics() == [wide]
    # Read as a chart does, one series per value.
    window = TimeRange(start=T, end=T + 60, step=60, level=60, until=float(T + 60))
    answer = custom_history(store.read_custom_rollups, window, wide, ("name",), 10)
    assert {
        series["labels"]["name"]: series["points"][0]["value"] for series in answer["series"]
    } == {long: 7.0, other: 6.0}


def test_a_read_gives_at_most_limit_rows_the_first_by_bucket_then_labels(
    store: CustomStore,
) -> None:
    values = ["B", "a", "a b", "ab", "", "é", "Z", "a-b", "~", "a\x00"]
    cells = {
        key(offset, "jobs", value): counter(number + 1)
        for offset in (60, 0, 5)
        for number, value in enumerate(values)
    }
    items = list(cells.items())
    random.Random(3).shuffle(items)  # written in no order, over three deltas
    for part in range(3):
        store.write(Batch(rollups=delta_of(f"part-{part}", dict(items[part::3]), [JOBS])))
    expected = sorted(
        (T + offset, labels_text([value])) for offset in (0, 5, 60) for value in values
    )

    finest = store.read_custom_rollups("jobs", 5, *WHOLE)
    assert [(r.bucket, r.labels) for r in finest] == expected
    for limit in range(len(expected) + 2):
        assert store.read_custom_rollups("jobs", 5, *WHOLE, limit) == finest[:limit]
    # Within a range: its first rows.
    within = [r for r in finest if T + 5 <= r.bucket < T + 61]
    assert len(within) == 2 * len(values)
    for limit in (1, 4, len(values), len(values) + 3, 100):
        assert store.read_custom_rollups("jobs", 5, T + 5, T + 61, limit) == within[:limit]
    # A coarser resolution alike: its rows are the finest's merged.
    minutes = store.read_custom_rollups("jobs", 60, *WHOLE)
    assert [(r.bucket, r.labels) for r in minutes] == sorted(
        (T + offset, labels_text([value])) for offset in (0, 60) for value in values
    )
    assert store.read_custom_rollups("jobs", 60, *WHOLE, 3) == minutes[:3]
    assert [r.total for r in minutes[:3]] == [2 * (values.index(v) + 1) for v in ("", "B", "Z")]


def test_rows_of_another_kind_are_left_out_when_read_through_custom_series(
    store: CustomStore,
) -> None:
    """A name declared as a counter, then a gauge, then a histogram, then a
    histogram of other buckets: reading it as any one of them reads the rows
    of that declaration only."""
    as_counter = description("odd", "counter", "Odd.")
    as_gauge = description("odd", "gauge", "Odd.", mode="sum")
    as_histogram = description("odd", "histogram", "Odd.", (), (1.0,))
    rebucketed = description("odd", "histogram", "Odd.", (), (1.0, 5.0))
    writes = [
        (as_counter, 0, counter(3)),
        (as_gauge, 60, gauge(7, 60)),
        (as_histogram, 120, histogram(2.5, [1, 1])),
        (rebucketed, 180, histogram(9.0, [1, 0, 1])),
    ]
    for number, (metric, offset, cell) in enumerate(writes):
        store.write(Batch(rollups=delta_of(f"kind-{number}", {key(offset, "odd"): cell}, [metric])))
    window = TimeRange(start=T, end=T + 240, step=60, level=60, until=float(T + 240))

    def points(metric: MetricSnapshot) -> list[dict[str, Any]]:
        answer = custom_history(store.read_custom_rollups, window, metric, (), 10)
        if not answer["series"]:
            return []
        [series] = answer["series"]
        return [{k: v for k, v in p.items() if k != "timestamp"} for p in series["points"]]

    nothing = {"increase": 0.0, "rate": 0.0}
    assert points(as_counter) == [{"increase": 3.0, "rate": 0.05}, nothing, nothing, nothing]
    unsampled = {"value": None, "low": None, "high": None}
    assert points(as_gauge) == [
        unsampled, {"value": 7.0, "low": 7.0, "high": 7.0}, unsampled, unsampled
    ]  # fmt: skip
    assert [p["count"] for p in points(as_histogram)] == [0, 0, 2, 0]
    assert points(as_histogram)[2]["sum"] == 2.5
    assert [p["count"] for p in points(rebucketed)] == [0, 0, 0, 2]
    assert points(rebucketed)[3]["sum"] == 9.0
    # Declared with buckets none of its rows has: no series at all.
    assert points(description("odd", "histogram", "Odd.", (), (1.0, 2.0, 3.0))) == []


# -- pruning by the time index -------------------------------------------------------------------

#: The custom rollups' indexes on PostgreSQL, and their columns.
POSTGRES_INDEXES = (
    "SELECT indexname, substring(indexdef from '\\(.*\\)') FROM pg_indexes "
    "WHERE schemaname = current_schema() AND tablename = 'aegis_custom_rollups' ORDER BY indexname"
)


def test_sqlite_prunes_custom_rows_by_the_time_index(
    tmp_path: Path, sink_factory: Callable[[Path | str], SQLiteSink]
) -> None:
    from aegis_mw.sinks.sqlite import _DELETE_CUSTOM

    path = tmp_path / "aegis.db"
    sink = sink_factory(path)
    sink.write(Batch(rollups=first_delta()))
    with closing(sqlite3.connect(path)) as reading:
        indexes = reading.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?",
            ("aegis_custom_rollups",),
        ).fetchall()
        columns = reading.execute("PRAGMA index_info(aegis_custom_rollups_time)").fetchall()
        plan = reading.execute(
            f"EXPLAIN QUERY PLAN {_DELETE_CUSTOM}", (5, T + 300.0, 10)
        ).fetchall()  # fmt: skip
    assert indexes == [("aegis_custom_rollups_time",)]
    assert [column[2] for column in columns] == ["resolution", "bucket"]
    details = [step[3] for step in plan]
    # The rows to delete are found by resolution and time, whatever the metric.
    assert any("aegis_custom_rollups_time (resolution=? AND bucket<?)" in d for d in details)
    assert not any(d.startswith("SCAN") for d in details), details
    # And the statement deletes what it says.
    assert sink.prune(0.0, {5: T + 5.0}, 100) == 4  # jobs eu and us, queue, latency at T
    assert [r.bucket - T for r in stored(cast(CustomStore, sink), "jobs")[5]] == [5, 60, 3600]


def test_postgresql_prunes_custom_rows_by_the_time_index(postgres_url: str) -> None:
    import psycopg

    from aegis_mw.sinks.postgres import _DELETE_CUSTOM, PostgresSink

    sink = PostgresSink(postgres_url)
    try:
        sink.write(Batch(rollups=first_delta()))
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            assert connection.execute(POSTGRES_INDEXES).fetchall() == [
                ("aegis_custom_rollups_pkey", "(resolution, metric, bucket, labels_key)"),
                ("aegis_custom_rollups_time", "(resolution, bucket)"),
            ]
            # A few rows: a sequential scan is cheaper, so the planner is told not to.
            with connection.transaction():
                connection.execute("SET LOCAL enable_seqscan = off")
                plan = connection.execute(
                    f"EXPLAIN {_DELETE_CUSTOM}", {"level": 5, "before": T + 300.0, "limit": 10}
                ).fetchall()
        lines = [line for (line,) in plan]
        assert any("using aegis_custom_rollups_time" in line for line in lines), lines
        assert sink.prune(0.0, {5: T + 5.0}, 100) == 4
        assert [r.bucket - T for r in stored(cast(CustomStore, sink), "jobs")[5]] == [5, 60, 3600]
    finally:
        sink.close()


# -- PostgreSQL on a database of another collation ----------------------------------------------


@pytest.fixture
def icu_postgres_url(postgres_url: str) -> Iterator[str]:
    """A database of its own whose default collation is ICU's English (as
    one made with ``initdb --locale-provider=icu`` or a non-C locale such
    as en_US.UTF-8 sorts text), dropped after the test."""
    import psycopg

    from tests.conftest import POSTGRES_URL

    name = f"aegis_test_icu_{os.getpid()}_{os.urandom(4).hex()}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        try:
            admin.execute(
                f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                "ICU_LOCALE 'en' LOCALE 'C.UTF-8'"
            )
        except psycopg.Error as exc:  # no ICU, or an older server
            pytest.skip(f"no database with an ICU collation: {exc}")
    try:
        yield urlsplit(POSTGRES_URL)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_postgresql_orders_labels_as_the_other_stores_whatever_the_collation(
    icu_postgres_url: str,
) -> None:
    from aegis_mw.sinks.postgres import PostgresSink

    values = ["B", "a", "a b", "ab", "Z", "~"]
    delta = delta_of(
        "labels", {key(0, "jobs", value): counter(1) for value in values}, [JOBS]
    )  # fmt: skip
    reference = MemorySink()
    reference.write(Batch(rollups=delta))
    sink = PostgresSink(icu_postgres_url)
    try:
        sink.write(Batch(rollups=delta))
        assert sink.read_custom_rollups("jobs", 5, *WHOLE, 3) == reference.read_custom_rollups(
            "jobs", 5, *WHOLE, 3
        )
        assert sink.read_custom_rollups("jobs", 5, *WHOLE) == reference.read_custom_rollups(
            "jobs", 5, *WHOLE
        )
    finally:
        sink.close()


# -- through the pipeline ------------------------------------------------------------------


def test_metrics_recorded_through_the_pipeline_are_stored(
    history_sink_url: str, make_aegis: Callable[..., Aegis]
) -> None:
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(sink=history_sink_url, clock=clock, **QUIET)
    orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
    queue = aegis.gauge("queue_depth", "Queue depth.", multiprocess_mode="max")
    jobs = aegis.histogram("job_seconds", "Job time.", labels=("kind",), buckets=(1.0, 5.0))
    [sink] = cast(list[CustomStore], aegis.sinks)

    orders.labels("eu").inc(3)
    orders.labels("us").inc()
    queue.set(4)
    jobs.labels("a").observe(0.5)
    jobs.labels("a").observe(2.0)
    assert aegis.force_flush(timeout=30)  # a forced flush samples at once: bucket T
    clock.advance(5)
    orders.labels("eu").inc(2)
    queue.set(10)
    jobs.labels("a").observe(7)
    assert aegis.force_flush(timeout=30)
    clock.advance(60)
    orders.labels("eu").inc(5)
    queue.set(1)
    assert aegis.force_flush(timeout=30)
    clock.advance(3600)
    orders.labels("us").inc(4)
    assert aegis.force_flush(timeout=30)
    assert aegis.force_flush(timeout=30)  # nothing new: nothing added

    stored_orders = stored(sink, "orders")
    assert stored_orders[5] == [
        row(0, ("eu",), 3), row(0, ("us",), 1), row(5, ("eu",), 2), row(65, ("eu",), 5),
        row(3665, ("us",), 4),
    ]  # fmt: skip
    assert stored_orders[60] == [
        row(0, ("eu",), 5), row(0, ("us",), 1), row(60, ("eu",), 5), row(3660, ("us",), 4)
    ]  # fmt: skip
    for level in (300, 3600):
        assert stored_orders[level] == [
            row(0, ("eu",), 10), row(0, ("us",), 1), row(3600, ("us",), 4)
        ]  # fmt: skip

    # One sample per flush's bucket (the last flush's bucket had one
    # already), and the value before in each bucket skipped since the last
    # sample (at most 60 of them: 5 minutes).
    def every(value: float, first: int, last: int) -> list[CustomRow]:
        return [sampled(b, value, 1, value, value, b, b) for b in range(first, last + 5, 5)]

    stored_queue = stored(sink, "queue_depth")
    assert stored_queue[5] == [
        *every(4, 0, 0), *every(10, 5, 60), *every(1, 65, 65), *every(1, 3365, 3665),
    ]  # fmt: skip
    # Raw sums, and the first and last bucket sampled in each.
    assert stored_queue[60] == [
        sampled(0, 114, 12, 4, 10, 0, 55), sampled(60, 11, 2, 1, 10, 60, 65),
        sampled(3360, 11, 11, 1, 1, 3365, 3415),
        *(sampled(m, 12, 12, 1, 1, m, m + 55) for m in (3420, 3480, 3540, 3600)),
        sampled(3660, 2, 2, 1, 1, 3660, 3665),
    ]  # fmt: skip
    assert stored_queue[300] == [
        sampled(0, 125, 14, 1, 10, 0, 65), sampled(3300, 47, 47, 1, 1, 3365, 3595),
        sampled(3600, 14, 14, 1, 1, 3600, 3665),
    ]  # fmt: skip
    assert stored_queue[3600] == [
        sampled(0, 172, 61, 1, 10, 0, 3595), sampled(3600, 14, 14, 1, 1, 3600, 3665),
    ]  # fmt: skip

    stored_jobs = stored(sink, "job_seconds")
    assert stored_jobs[5] == [
        row(0, ("a",), 2.5, 2, counts=[1, 1, 0]),
        row(5, ("a",), 7.0, 1, counts=[0, 0, 1]),
    ]
    for level in (60, 300, 3600):
        assert stored_jobs[level] == [row(0, ("a",), 9.5, 3, counts=[1, 1, 1])]

    assert sink.read_custom_metrics() == [
        description("job_seconds", "histogram", "Job time.", ("kind",), (1.0, 5.0)),
        description("orders", "counter", "Orders placed.", ("region",)),
        description("queue_depth", "gauge", "Queue depth.", mode="max"),
    ]
    dropped = aegis.stats().sinks[0].dropped
    assert {reason: dropped[reason] for reason in dropped if reason.startswith("custom")} == {
        "custom_rollups_full": 0,
        "custom_rollups_shutdown_timeout": 0,
        "custom_rollups_rejected": 0,
    }


def test_the_three_stores_answer_alike(
    tmp_path: Path, postgres_url: str, make_aegis: Callable[..., Aegis]
) -> None:
    """One pipeline writing to memory, a SQLite file and PostgreSQL at once:
    every level of every metric reads back the same from each, to the bit."""
    clock = FakeClock(wall=float(T) + 2)
    sinks = ["memory://", f"sqlite:///{tmp_path / 'aegis.db'}", postgres_url]
    aegis = make_aegis(sink=sinks, clock=clock, **QUIET)
    orders = aegis.counter("orders_total", "Orders \x00 placed \ud800.", labels=("region",))
    queue = aegis.gauge("queue_depth", "Queue depth ☃.", labels=("pool",))
    jobs = aegis.histogram("job_seconds", "Job time.", buckets=(0.1, 1.0, 5.0))
    rng = random.Random(7)
    recorded = {"eu": 0.0, "us \x00 \ud800": 0.0}
    observed: list[float] = []
    for _ in range(40):
        for region in recorded:
            amount = rng.choice([0, 1, 2, 0.1, 0.3, 2.5])
            orders.labels(region).inc(amount)
            recorded[region] += amount
        for pool in ("p", "q"):
            queue.labels(pool).set(rng.uniform(-5, 50))
        for _ in range(rng.randrange(3)):
            observed.append(rng.uniform(0, 8))
            jobs.observe(observed[-1])
        clock.advance(rng.choice([1, 3, 5, 11, 60, 299, 1800]))
        assert aegis.force_flush(timeout=30)
    memory, sqlite, postgres = cast(list[CustomStore], aegis.sinks)
    assert isinstance(memory, MemorySink) and isinstance(sqlite, SQLiteSink)

    for metric in ("orders", "queue_depth", "job_seconds"):
        expected = stored(memory, metric)
        assert all(expected[level] for level in LEVELS)
        assert stored(sqlite, metric) == expected
        assert stored(postgres, metric) == expected
    assert sqlite.read_custom_metrics() == memory.read_custom_metrics()
    assert postgres.read_custom_metrics() == memory.read_custom_metrics()
    # And what they answer is what was recorded.
    for level in LEVELS:
        rows = stored(memory, "orders")[level]
        for region, total in recorded.items():
            mine = [r.total for r in rows if r.labels == labels_text([region])]
            assert sum(mine) == pytest.approx(total)
        histogram_rows = stored(memory, "job_seconds")[level]
        assert sum(r.number for r in histogram_rows) == len(observed)
        assert sum(r.total for r in histogram_rows) == pytest.approx(sum(observed))
        assert all(r.first is None and r.last is None for r in rows + histogram_rows)
        # A gauge's row: the raw sum of the 5-second rows it covers, and
        # as many buckets sampled (one process, sampling both pools at once).
        finest = stored(memory, "queue_depth")[5]
        for gauge_row in stored(memory, "queue_depth")[level]:
            inside = [
                r for r in finest
                if r.labels == gauge_row.labels
                and gauge_row.bucket <= r.bucket < gauge_row.bucket + level
            ]  # fmt: skip
            assert gauge_row.number == len(inside) > 0
            assert all(r.first == r.last == r.bucket for r in inside)
            assert (gauge_row.first, gauge_row.last) == (inside[0].bucket, inside[-1].bucket)
            assert gauge_row.total == pytest.approx(sum(r.total for r in inside))


# -- a sink that fails ------------------------------------------------------------------------


class DownAtFirst(SQLiteSink):
    """Raises ConnectionError (storage unreachable) for its first ``failures`` writes."""

    def __init__(self, path: str, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.calls = 0

    def write(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("storage unreachable")
        super().write(batch)


def test_a_sink_down_for_a_while_loses_no_custom_increase(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    sink = DownAtFirst(str(tmp_path / "aegis.db"), failures=3)
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(sink=sink, clock=clock, **QUIET)
    orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
    queue = aegis.gauge("queue_depth", "Queue depth.")
    jobs = aegis.histogram("job_seconds", "Job time.", buckets=(1.0,))
    results = []
    recorded = {"eu": 0, "us": 0}
    for step in range(8):
        for region, amount in (("eu", step + 1), ("us", 2 * step)):
            orders.labels(region).inc(amount)
            recorded[region] += amount
        queue.set(step)
        jobs.observe(step % 3)
        results.append(aegis.force_flush(timeout=30))
        clock.advance(5 if step % 2 else 65)
    assert results == [False] * 3 + [True] * 5
    assert sink.calls > sink.failures

    for level in LEVELS:
        rows = stored(sink, "orders")[level]
        assert {
            region: sum(r.total for r in rows if r.labels == labels_text([region]))
            for region in recorded
        } == recorded
        histogram_rows = stored(sink, "job_seconds")[level]
        assert sum(r.number for r in histogram_rows) == 8
        assert sum(r.total for r in histogram_rows) == sum(step % 3 for step in range(8))
        columns = zip(*(r.counts or [] for r in histogram_rows), strict=True)
        assert [sum(column) for column in columns] == [6, 2]
        # One gauge sample per flush, and 12 buckets filled before each
        # of the four after a minute's pause (0, 2, 4, 6), none lost.
        assert sum(r.number for r in stored(sink, "queue_depth")[level]) == 8 + 48
        assert sum(r.total for r in stored(sink, "queue_depth")[level]) == sum(range(8)) + 144
    # Flushed at T, T+65, T+70, T+135, T+140, T+205, T+210, T+275: every
    # bucket from T to T+275 sampled or filled, in each minute, in the 5
    # minutes and the hour.
    samples = stored(sink, "queue_depth")
    assert [(r.bucket - T, r.number, r.first, r.last) for r in samples[60]] == [
        (0, 12, T, T + 55), (60, 12, T + 60, T + 115), (120, 12, T + 120, T + 175),
        (180, 12, T + 180, T + 235), (240, 8, T + 240, T + 275),
    ]  # fmt: skip
    for level in (300, 3600):
        assert [(r.bucket - T, r.number, r.first, r.last) for r in samples[level]] == [
            (0, 56, T, T + 275)
        ]
    dropped = aegis.stats().sinks[0].dropped
    assert sum(dropped[reason] for reason in dropped if reason.startswith("custom")) == 0


class LosesOneAcknowledgement(SQLiteSink):
    """Commits its first write carrying custom cells, then raises as if the
    acknowledgement was lost."""

    lost = 0

    def write(self, batch: Batch) -> None:
        super().write(batch)
        if not self.lost and batch.rollups is not None and batch.rollups.custom:
            self.lost += 1
            raise ConnectionError("connection reset after commit")


def test_a_retried_write_adds_its_custom_changes_once(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    sink = LosesOneAcknowledgement(str(tmp_path / "aegis.db"))
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(sink=sink, clock=clock, **QUIET)
    orders = aegis.counter("orders_total", "Orders placed.")
    orders.inc(5)
    assert aegis.force_flush(timeout=30) is False  # the lost acknowledgement
    orders.inc(2)
    assert aegis.force_flush(timeout=30) is True
    assert sink.lost == 1
    assert stored(sink, "orders")[5] == [row(0, (), 7)]


class RefusesOneSeries(SQLiteSink):
    """Refuses, for its content, any batch whose rollups hold the changes of
    the series labelled ``bad``."""

    refusals = 0

    def write(self, batch: Batch) -> None:
        if batch.rollups is not None and any(
            labels == labels_text(["bad"]) for _, _, labels in batch.rollups.custom
        ):
            self.refusals += 1
            raise RecordRejected("a value the store cannot take")
        super().write(batch)


def test_a_custom_change_the_store_refuses_is_set_aside_alone(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    sink = RefusesOneSeries(str(tmp_path / "aegis.db"))
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(sink=sink, clock=clock, **QUIET)
    orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
    queue = aegis.gauge("queue_depth", "Queue depth.")
    regions = ["a", "b", "bad", "c", "d", "e"]
    for number, region in enumerate(regions):
        orders.labels(region).inc(number + 1)
    queue.set(3)
    for number in range(3):
        aegis.recorder.offer(inbox_item(f"/r/{number}", route="/r/{n}", start=clock.monotonic()))
    assert aegis.force_flush(timeout=30) is True

    assert sink.refusals >= 2  # the whole delta, then the parts holding the series
    orders_rows = stored(sink, "orders")[5]
    assert [(json.loads(r.labels)[0], r.total) for r in orders_rows] == [
        (region, number + 1) for number, region in enumerate(regions) if region != "bad"
    ]
    assert stored(sink, "queue_depth")[5] == [sampled(0, 3, 1, 3, 3, 0, 0)]
    totals = sink.read_rollups(5, *WHOLE, by_route=False)
    assert sum(r.requests for r in totals) == 3  # the requests' rollups are all there
    assert len(sink.read_requests(RequestQuery(limit=10))) == 3
    dropped = aegis.stats().sinks[0].dropped
    assert dropped["custom_rollups_rejected"] == 1
    assert dropped["rollups_rejected"] == dropped["rejected"] == 0


def test_pending_custom_changes_are_bounded_and_what_is_refused_is_counted(
    tmp_path: Path, make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sink_runner, "MAX_PENDING_CUSTOM_CELLS", 4)
    sink = DownAtFirst(str(tmp_path / "aegis.db"), failures=1)
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(sink=sink, clock=clock, **QUIET)
    orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
    for region in "abc":
        orders.labels(region).inc()
    assert aegis.force_flush(timeout=30) is False  # 3 cells owed, in flight
    clock.advance(5)
    for region in "abcde":
        orders.labels(region).inc(10)
    # 5 new cells, room for 1 beside the 3 in flight: 4 refused, counted.
    assert aegis.force_flush(timeout=30) is True
    dropped = aegis.stats().sinks[0].dropped
    assert dropped["custom_rollups_full"] == 4
    assert [(r.bucket - T, r.labels, r.total) for r in stored(sink, "orders")[5]] == [
        (0, labels_text(["a"]), 1), (0, labels_text(["b"]), 1), (0, labels_text(["c"]), 1),
        (5, labels_text(["a"]), 10),
    ]  # fmt: skip


def test_an_outage_with_more_custom_cells_than_their_bound_keeps_the_request_rollups(
    tmp_path: Path, make_aegis: Callable[..., Aegis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many gauges (a cell each every 5 seconds) while the store is down:
    their cells past MAX_PENDING_CUSTOM_CELLS are refused and counted as
    custom_rollups_full, and the requests' rollups, under a bound of their
    own (here just large enough for them: with one bound for both, the
    gauges' cells would have crowded them out), are all kept."""
    monkeypatch.setattr(sink_runner, "MAX_PENDING_CUSTOM_CELLS", 5)  # one flush's gauges
    monkeypatch.setattr(sink_runner, "MAX_PENDING_CELLS", 4)
    sink = DownAtFirst(str(tmp_path / "aegis.db"), failures=2)
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(sink=sink, clock=clock, **QUIET)
    depth = aegis.gauge("depth", "Depth.", labels=("pool",))
    pools = "abcde"
    for pool in pools:
        depth.labels(pool).set(1)
    results = []
    for step in range(3):
        if step < 2:  # two request cells a flush, in the first two
            for route in ("/a/{n}", "/b/{n}"):
                path = route.replace("{n}", str(step))
                aegis.recorder.offer(inbox_item(path, route=route, start=clock.monotonic()))
        results.append(aegis.force_flush(timeout=30))
        clock.advance(5)
    assert sink.calls > sink.failures
    # The first flush: 5 gauge cells, all taken; the next two: no room
    # beside the 5 owed (5 refused each). The request cells: 2 and 2,
    # within their bound of 4, none refused.
    dropped = aegis.stats().sinks[0].dropped
    assert dropped["custom_rollups_full"] == 5 + 5
    assert dropped["rollups_full"] == 0
    assert {reason: dropped[reason] for reason in ("backlog_full", "rollups_rejected")} == {
        "backlog_full": 0,
        "rollups_rejected": 0,
    }
    assert aegis.force_flush(timeout=30) is True  # the store is back: nothing owed
    totals = sink.read_rollups(5, *WHOLE, by_route=False)
    assert sum(r.requests for r in totals) == 4
    assert {(r.bucket - T, r.route) for r in sink.read_rollups(5, *WHOLE, by_route=True)} == {
        (0, "/a/{n}"), (0, "/b/{n}"), (5, "/a/{n}"), (5, "/b/{n}"),
    }  # fmt: skip
    assert len(sink.read_requests(RequestQuery(limit=10))) == 4
    # The gauge cells kept: the first bucket's, and the one sampled once
    # the store was back.
    rows = stored(cast(CustomStore, sink), "depth")[5]
    assert [(r.bucket - T, json.loads(r.labels)[0]) for r in rows] == [
        *((0, pool) for pool in pools),
        *((15, pool) for pool in pools),
    ]
    assert results == [False, False, True]
    assert aegis.stats().sinks[0].dropped["custom_rollups_full"] == 10


class CountsWrites(MemorySink):
    """A remote store (its writes go through the spool) counting its writes."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0


class RemoteDownAtFirst(CountsWrites):
    """Unreachable for its first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def write(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("storage unreachable")
        super().write(batch)


def test_custom_changes_spooled_during_an_outage_are_replayed_once(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    sink = RemoteDownAtFirst(failures=3)
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(
        sink=sink, clock=clock, spool_dir=str(tmp_path / "spool"), flush_interval=3600,
        retry_backoff_initial=0.01, retry_backoff_max=0.05,
    )  # fmt: skip
    orders = aegis.counter("orders_total", "Orders \x00 placed \ud800.", labels=("region",))
    jobs = aegis.histogram("job_seconds", "Job time.", buckets=(1.0,))
    for step in range(3):
        orders.labels("eu \x00").inc(step + 1)
        jobs.observe(step)
        assert aegis.force_flush(timeout=30)  # into the spool: written, as far as we know
        clock.advance(5)
    assert aegis.stats().sinks[0].spool_bytes > 0  # rollups only: no records spooled
    assert stored(sink, "orders")[5] == []
    assert replay_all(aegis, sink)
    assert sink.calls > sink.failures
    orders.labels("eu \x00").inc(100)
    assert aegis.force_flush(timeout=30)

    for level in LEVELS:
        assert sum(r.total for r in stored(sink, "orders")[level]) == 106
        assert {r.labels for r in stored(sink, "orders")[level]} == {labels_text(["eu \x00"])}
        assert sum(r.number for r in stored(sink, "job_seconds")[level]) == 3
    assert sink.read_custom_metrics() == [
        description("job_seconds", "histogram", "Job time.", (), (1.0,)),
        description("orders", "counter", "Orders \x00 placed \ud800.", ("region",)),
    ]


def replay_all(aegis: Aegis, sink: CountsWrites, most_writes: int = 10_000) -> bool:
    """Flush until the spool is empty (True), or until the store was written
    to ``most_writes`` times more (False). The store's backoff is 0.05 s at most."""
    deadline = time.monotonic() + 30
    before = sink.calls
    while aegis.stats().sinks[0].spool_bytes:
        if sink.calls - before > most_writes:
            return False
        assert time.monotonic() < deadline, aegis.stats().sinks[0]
        aegis.force_flush(timeout=5)
    return True


class RemoteRefusesOneSeries(CountsWrites):
    """A remote store, unreachable for its first write, that then refuses
    any batch whose rollups hold the changes of the series labelled ``bad``."""

    def write(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("storage unreachable")
        if batch.rollups is not None and any(
            labels == labels_text(["bad"]) for _, _, labels in batch.rollups.custom
        ):
            raise RecordRejected("a value the store cannot take")
        MemorySink.write(self, batch)


def _spooled_with_a_bad_series(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> tuple[Aegis, RemoteRefusesOneSeries, Any]:
    """Three series' changes spooled during an outage; the store then refuses one."""
    sink = RemoteRefusesOneSeries()
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(
        sink=sink, clock=clock, spool_dir=str(tmp_path / "spool"),
        flush_interval=3600, retry_backoff_initial=0.01, retry_backoff_max=0.05,
    )  # fmt: skip
    orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
    for number, region in enumerate(("a", "bad", "c")):
        orders.labels(region).inc(number + 1)
    assert aegis.force_flush(timeout=30)  # spooled
    assert aegis.stats().sinks[0].spool_bytes > 0
    return aegis, sink, (clock, orders)


def test_a_custom_change_refused_on_replay_is_let_go_and_counted(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    aegis, sink, (clock, orders) = _spooled_with_a_bad_series(tmp_path, make_aegis)
    # A later batch, behind it in the spool: stored whole, it shows the store
    # takes what it is given, so the refused change is let go.
    clock.advance(5)
    orders.labels("a").inc(10)
    assert aegis.force_flush(timeout=30)
    assert replay_all(aegis, sink)
    for level in LEVELS:
        assert [(r.labels, r.total) for r in stored(sink, "orders")[level]] == (
            [(labels_text(["a"]), 11), (labels_text(["c"]), 3)]
            if level > 5
            else [(labels_text(["a"]), 1), (labels_text(["c"]), 3), (labels_text(["a"]), 10)]
        )
    assert [r.bucket - T for r in stored(sink, "orders")[5]] == [0, 0, 5]
    dropped = aegis.stats().sinks[0].dropped
    assert dropped["custom_rollups_rejected"] == 1
    assert dropped["rollups_rejected"] == 0


def test_a_spooled_batch_of_custom_changes_alone_is_let_go_once_part_of_it_went_in(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """No record in it, no batch behind it: the changes that went in show
    the store takes custom changes, so the one refused alone is let go
    (``took``) without the proof of a later batch stored whole."""
    aegis, sink, _ = _spooled_with_a_bad_series(tmp_path, make_aegis)
    drained = replay_all(aegis, sink, most_writes=200)
    # The changes of "a" and "c" went in: the store takes custom changes.
    assert [(r.labels, r.total) for r in stored(sink, "orders")[5]] == [
        (labels_text(["a"]), 1),
        (labels_text(["c"]), 3),
    ]
    assert drained  # the refused one let go, the spool empty
    dropped = aegis.stats().sinks[0].dropped
    assert (dropped["custom_rollups_rejected"], dropped["rollups_rejected"]) == (1, 0)
    assert aegis.stats().sinks[0].spool_lost == 0


class RemoteRefusesOneRecord(CountsWrites):
    """A remote store, unreachable for its first write, that then refuses
    any batch holding the request to ``/bad``."""

    def write(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("storage unreachable")
        if any(record.path == "/bad" for record in batch.requests):
            raise RecordRejected("a value the store cannot take")
        MemorySink.write(self, batch)


def test_a_record_refused_on_replay_needs_a_stored_record_though_custom_changes_went_in(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """The rollups (custom changes included) of a spooled batch whose one
    record the store refuses go in, once; that does not let the record go:
    a record held needs a record stored, or the next spooled batch stored
    whole, as before."""
    sink = RemoteRefusesOneRecord()
    clock = FakeClock(wall=float(T))
    aegis = make_aegis(
        sink=sink, clock=clock, spool_dir=str(tmp_path / "spool"),
        flush_interval=3600, retry_backoff_initial=0.01, retry_backoff_max=0.05,
    )  # fmt: skip
    orders = aegis.counter("orders_total", "Orders placed.")
    orders.inc()
    aegis.recorder.offer(inbox_item("/bad", route="/bad", start=clock.monotonic()))
    assert aegis.force_flush(timeout=30)  # spooled
    assert aegis.stats().sinks[0].spool_bytes > 0

    assert not replay_all(aegis, sink, most_writes=30)  # kept: no proof
    assert aegis.stats().sinks[0].spool_bytes > 0
    # Its rollups went in, once, however many times the search was made.
    assert stored(sink, "orders")[5] == [row(0, (), 1)]
    assert sum(r.requests for r in sink.read_rollups(5, *WHOLE, by_route=False)) == 1
    assert sink.read_requests(RequestQuery(limit=10)) == []
    assert aegis.stats().sinks[0].spool_lost == 0

    # A later batch stored whole proves the store takes records: let go.
    clock.advance(5)
    orders.inc(2)
    aegis.recorder.offer(inbox_item("/ok", route="/ok", start=clock.monotonic()))
    assert aegis.force_flush(timeout=30)
    assert replay_all(aegis, sink)
    assert [r.path for r in sink.read_requests(RequestQuery(limit=10))] == ["/ok"]
    assert [(r.bucket - T, r.total) for r in stored(sink, "orders")[5]] == [(0, 1), (5, 2)]
    assert aegis.stats().sinks[0].spool_lost == 1  # the record let go, counted
    dropped = aegis.stats().sinks[0].dropped
    assert dropped["custom_rollups_rejected"] == dropped["rollups_rejected"] == 0


def test_shutdown_stores_the_changes_since_the_last_flush(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    """The final flush samples at once, though its bucket was sampled already."""
    path = tmp_path / "aegis.db"
    aegis = make_aegis(sink=f"sqlite:///{path}", clock=FakeClock(wall=float(T)), **QUIET)
    orders = aegis.counter("orders_total", "Orders placed.")
    queue = aegis.gauge("queue_depth", "Queue depth.")
    orders.inc(2)
    queue.set(5)
    assert aegis.force_flush(timeout=30)
    orders.inc(3)
    queue.set(9)  # its bucket has its sample: this one is not stored
    assert aegis.shutdown(timeout=30)
    reader = SQLiteSink(str(path))
    try:
        assert stored(cast(CustomStore, reader), "orders")[5] == [row(0, (), 5)]
        assert stored(cast(CustomStore, reader), "queue_depth")[5] == [sampled(0, 5, 1, 5, 5, 0, 0)]
    finally:
        reader.close()


def _down_at_shutdown(tmp_path: Path, make_aegis: Callable[..., Aegis]) -> tuple[Aegis, bool]:
    """Two series' changes, to a sink that never takes them, then shutdown."""
    sink = DownAtFirst(str(tmp_path / "aegis.db"), failures=10**9)
    aegis = make_aegis(sink=sink, clock=FakeClock(wall=float(T)), **QUIET)
    orders = aegis.counter("orders_total", "Orders placed.", labels=("region",))
    orders.labels("eu").inc()
    orders.labels("us").inc()
    return aegis, aegis.shutdown(timeout=0.3)


def test_custom_changes_a_sink_cannot_take_by_shutdown_are_counted(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    aegis, _ = _down_at_shutdown(tmp_path, make_aegis)
    dropped = aegis.stats().sinks[0].dropped
    # The final flush sampled them (forced): two series' changes, lost.
    assert dropped["custom_rollups_shutdown_timeout"] == 2
    assert dropped["rollups_shutdown_timeout"] == 0  # no request was counted in them
    assert dropped["custom_rollups_full"] == dropped["custom_rollups_rejected"] == 0


def test_shutdown_that_drops_custom_changes_says_so(
    tmp_path: Path, make_aegis: Callable[..., Aegis]
) -> None:
    aegis, flushed = _down_at_shutdown(tmp_path, make_aegis)
    assert aegis.stats().sinks[0].dropped["custom_rollups_shutdown_timeout"] == 2
    assert flushed is False  # "True when all written": they were not


# -- older schemas -----------------------------------------------------------------------------


def request_delta(delta_id: str, seed: int) -> RollupDelta:
    """Request rollups spread over several buckets at every level."""
    rng = random.Random(seed)
    delta = RollupDelta()
    for _ in range(60):
        delta.add(
            T + rng.uniform(0, 7200), rng.choice(["/a", "/b/{id}"]), rng.choice(["GET", "POST"]),
            rng.choice([200, 404, 500]), rng.uniform(0.1, 900.0), False, rng.randrange(100),
            rng.randrange(10_000),
        )  # fmt: skip
    delta.delta_id = delta_id
    return delta


def all_rollups(sink: CustomStore) -> dict[tuple[int, bool], list[RollupRow]]:
    return {
        (level, by_route): sorted(sink.read_rollups(level, *WHOLE, by_route=by_route))
        for level in LEVELS
        for by_route in (True, False)
    }


def _insert_rollups(
    execute_many: Callable[[str, Any], object],
    delta: RollupDelta,
    mark: str,
    array: str,
    encode: Callable[[dict[int, int]], str],
) -> None:
    """The delta's rollup rows as an older version stored them: ``mark`` the
    placeholder, ``array`` the histogram's, ``encode`` its encoding."""
    routes, totals = expand(delta)
    for table, cells, columns in (
        ("aegis_rollups", routes, history_sql.ROLLUP_KEY),
        ("aegis_rollup_totals", totals, history_sql.TOTAL_KEY),
    ):
        names = (*columns, *history_sql.ROLLUP_VALUES)
        marks = ", ".join([mark] * (len(names) - 1) + [array])
        execute_many(
            f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})",
            list(parameter_rows(cells, encode)),
        )


def check_migrated(sink: CustomStore, old: RollupDelta) -> None:
    """The old rows read as before, the old delta id is remembered, and
    custom rows are taken beside them."""
    reference = MemorySink()
    reference.write(Batch(rollups=old))
    assert all_rollups(sink) == all_rollups(reference)
    sink.write(Batch(rollups=old))  # applied before the migration: not again
    assert all_rollups(sink) == all_rollups(reference)
    check_first_delta(sink)
    newer = request_delta("after", seed=2)
    sink.write(Batch(rollups=newer))
    reference.write(Batch(rollups=newer))
    assert all_rollups(sink) == all_rollups(reference)
    more = delta_of("more", {key(0, "jobs", "eu"): counter(1)}, [JOBS])
    sink.write(Batch(rollups=more))
    assert stored(sink, "jobs")[3600][0] == row(0, ("eu",), 18)


def version_before(migrations: Any) -> int:
    """The schema version before the one that made the custom tables."""
    return next(
        version for version, steps in enumerate(migrations)
        if any("CREATE TABLE aegis_custom_rollups" in str(step) for step in steps)
    )  # fmt: skip


def test_a_sqlite_file_of_the_previous_version_migrates_in_place(
    tmp_path: Path, sink_factory: Callable[[Path | str], SQLiteSink]
) -> None:
    path = tmp_path / "aegis.db"
    previous = version_before(sqlite_schema.MIGRATIONS)
    old = request_delta("before", seed=1)
    connection = sqlite3.connect(path)
    for version in range(1, previous + 1):
        for statement in sqlite_schema.MIGRATIONS[version - 1]:
            if "aegis_histogram_v3" not in statement:  # no version 2 rows to convert
                connection.execute(statement)
    _insert_rollups(connection.executemany, old, "?", "?", encode_histogram)
    connection.execute("INSERT INTO aegis_rollup_deltas VALUES (?, ?)", ("before", time.time()))
    connection.execute(f"PRAGMA user_version = {previous:d}")
    connection.commit()
    tables = "SELECT type, name FROM sqlite_master WHERE name LIKE 'aegis_custom%' ORDER BY name"
    assert connection.execute(tables).fetchall() == []
    connection.close()

    sink = sink_factory(path)
    sink.write(Batch(rollups=first_delta()))

    with sqlite3.connect(path) as reading:
        assert reading.execute("PRAGMA user_version").fetchall() == [
            (sqlite_schema.SCHEMA_VERSION,)
        ]
        assert reading.execute(tables).fetchall() == [
            ("table", "aegis_custom_metrics"),
            ("table", "aegis_custom_rollups"),
            ("index", "aegis_custom_rollups_time"),  # what prune deletes by
        ]
    reading.close()
    check_migrated(cast(CustomStore, sink), old)


def test_a_postgresql_schema_of_the_previous_version_migrates_in_place(
    postgres_url: str,
) -> None:
    import psycopg

    from aegis_mw.sinks import postgres_schema
    from aegis_mw.sinks.postgres import PostgresSink
    from tests.sinks.test_postgres import schema_at

    previous = version_before(postgres_schema.MIGRATIONS)
    old = request_delta("before", seed=1)
    tables = (
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_name LIKE 'aegis_custom%' ORDER BY table_name"
    )
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        schema_at(connection, previous)
        with connection.cursor() as cursor:
            _insert_rollups(cursor.executemany, old, "%s", "%s::bigint[]", encode_histogram_array)
        connection.execute(
            "INSERT INTO aegis_rollup_deltas VALUES (%s, %s)", ("before", time.time())
        )
        assert connection.execute(tables).fetchall() == []

    sink = PostgresSink(postgres_url)
    try:
        sink.write(Batch(rollups=first_delta()))
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            versions = connection.execute("SELECT max(version) FROM aegis_schema_version")
            assert versions.fetchall() == [(postgres_schema.SCHEMA_VERSION,)]
            assert connection.execute(tables).fetchall() == [
                ("aegis_custom_metrics",),
                ("aegis_custom_rollups",),
            ]
            assert connection.execute(POSTGRES_INDEXES).fetchall() == [
                ("aegis_custom_rollups_pkey", "(resolution, metric, bucket, labels_key)"),
                ("aegis_custom_rollups_time", "(resolution, bucket)"),
            ]
        check_migrated(cast(CustomStore, sink), old)
    finally:
        sink.close()


# -- edges found by testing ----------------------------------------------------------


def test_a_stored_description_holds_no_figures(
    history_sink_url: str, make_aegis: Callable[..., Aegis]
) -> None:
    """A metric's description is its declaration: the stores answer alike,
    whatever its figures were when sampled (here, a label set folded into
    ``<overflow>``)."""
    aegis = make_aegis(sink=history_sink_url, clock=FakeClock(wall=float(T)), **QUIET)
    jobs = aegis.counter("jobs_total", "Jobs.", labels=("kind",), max_series=1)
    jobs.labels("a").inc()
    jobs.labels("b").inc(2)  # past max_series: counted, into <overflow>
    assert aegis.force_flush(timeout=30)
    [sink] = cast(list[CustomStore], aegis.sinks)
    assert stored(sink, "jobs")[5] == [row(0, ("<overflow>",), 2), row(0, ("a",), 1)]
    assert sink.read_custom_metrics() == [description("jobs", "counter", "Jobs.", ("kind",))]
