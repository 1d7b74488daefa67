"""The app's own metrics sampled into the rollups: the sampler's cells, one
sample per 5-second bucket, resets, gauges (raw sums, and the first and last
5-second bucket sampled: ``span``), how a gauge reads (its time average
from its first sample to its last in each stored bucket, at every
resolution), label text and its key, the arithmetic of the cells, which
stored rows fit a metric, and the cells riding in a RollupDelta (absorb and
its two bounds, split, spool)."""

from __future__ import annotations

import hashlib
import json
import math
from itertools import zip_longest
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aegis_mw.core import spool_codec
from aegis_mw.core.custom_history import (
    COUNT,
    COUNTS,
    HIGH,
    HOLD_BUCKETS,
    LOW,
    MAX_HELD_CELLS,
    SPAN,
    TOTAL,
    CustomCell,
    CustomKey,
    CustomRow,
    CustomSampler,
    add_counts,
    add_counts_text,
    copy_custom,
    custom_parameters,
    custom_row,
    custom_rows,
    describe,
    expand_custom,
    labels_key,
    labels_text,
    merge_custom,
    stored_metric,
)
from aegis_mw.core.custom_metrics import CustomMetrics, MetricSnapshot
from aegis_mw.core.isolation import split_delta
from aegis_mw.core.record import Batch
from aegis_mw.core.rollup import LEVELS, MAX_PENDING_CELLS, MAX_PENDING_CUSTOM_CELLS, RollupDelta
from aegis_mw.core.spool_codec import SpoolCorrupt
from aegis_mw.history.custom_series import Point, figures, fits

#: A wall time on a bucket boundary of every level (a multiple of 3600).
T = 1_699_999_200.0
BOUNDS = (1.0, 5.0)


def registry() -> CustomMetrics:
    return CustomMetrics("aegis_", BOUNDS)


def snapshot(
    name: str,
    kind: str,
    help_text: str = "Help.",
    labels: tuple[str, ...] = (),
    bounds: tuple[float, ...] = (),
    mode: str = "",
) -> MetricSnapshot:
    """A metric's description as the sampler gives it: no figures."""
    return MetricSnapshot(name, kind, help_text, labels, bounds, mode, {}, 0)


def counter_cell(total: float) -> CustomCell:
    return [total, 0, None, None, None, None]


def gauge_cell(value: float, first: float, last: float | None = None) -> CustomCell:
    """One gauge sample of the 5-second bucket ``first`` (its span
    ``[first, first]``), or a cell spanning ``first`` to ``last``."""
    return [value, 1, value, value, None, [int(first), int(first if last is None else last)]]


def held(value: float, first: float, last: float, name: str = "queue_depth") -> dict[Any, Any]:
    """The value before a sample, as that of each bucket skipped, ``first``
    to ``last``."""
    return {key(b, name): gauge_cell(value, b) for b in range(int(first), int(last) + 5, 5)}


def skipped_after(bucket: int, before: int | None) -> int:
    """How many buckets just before a sample of ``bucket`` the value before
    fills, after a sample of ``before``."""
    return 0 if before is None else max(0, min((bucket - before) // 5 - 1, HOLD_BUCKETS))


def histogram_cell(total: float, counts: list[int]) -> CustomCell:
    return [total, sum(counts), None, None, list(counts), None]


def key(bucket: float, metric: str, *labels: str) -> CustomKey:
    return (int(bucket), metric, labels_text(labels))


# -- the sampler: counters -----------------------------------------------------------


def test_a_counter_gives_its_increase_between_samples() -> None:
    metrics = registry()
    orders = metrics.declare("counter", "orders_total", "Orders placed.", ("region",))
    sampler = CustomSampler(metrics)
    orders.labels("eu").inc(3)
    orders.labels("us").inc(2.5)

    cells, described = sampler.take(T)
    assert cells == {
        key(T, "orders", "eu"): counter_cell(3),
        key(T, "orders", "us"): counter_cell(2.5),
    }
    assert described == {"orders": snapshot("orders", "counter", "Orders placed.", ("region",))}

    orders.labels("eu").inc(4)
    cells, described = sampler.take(T + 5)
    # The sample at the next bucket's first flush: the bucket that ended. Only eu moved.
    assert cells == {key(T, "orders", "eu"): counter_cell(4)}
    assert list(described) == ["orders"]


def test_one_sample_per_bucket_unless_forced() -> None:
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.")
    sampler = CustomSampler(metrics)
    jobs.inc()
    assert sampler.take(T + 1)[0] == {key(T, "jobs"): counter_cell(1)}
    jobs.inc(2)
    assert not sampler.due(T + 4.999)
    assert sampler.take(T + 2) == ({}, {})
    assert sampler.take(T + 4.999) == ({}, {})
    # Forced (a forced flush, shutdown): at once, into the bucket now is in.
    cells, described = sampler.take(T + 3, forced=True)
    assert cells == {key(T, "jobs"): counter_cell(2)}
    assert list(described) == ["jobs"]
    # What was taken is not taken again.
    assert sampler.take(T + 3, forced=True) == ({}, {})
    assert sampler.due(T + 5)


def test_the_bucket_a_sample_describes() -> None:
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.")
    sampler = CustomSampler(metrics)
    jobs.inc()
    # The first sample ever goes to the bucket now is in, wherever in it now is.
    assert list(sampler.take(T + 3)[0]) == [key(T, "jobs")]
    steps = [
        (T + 7, False, T),  # a bucket's first flush: the bucket that ended
        (T + 8, True, T + 5),  # forced: the current bucket
        (T + 13, False, T + 5),  # the next bucket's first flush: the one that ended
        (T + 31, False, T + 25),  # buckets without a flush: the last one that ended
        (T + 3600, True, T + 3600),
        (T + 3605.5, False, T + 3600),
    ]
    for now, forced, bucket in steps:
        jobs.inc()
        assert sampler.take(now, forced=forced)[0] == {key(bucket, "jobs"): counter_cell(1)}


def test_a_counter_reset_counts_its_new_value() -> None:
    """A value lower than the last sample's (a forked child's metrics start
    at zero): the new value is all increase, never a negative one."""
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.")
    sampler = CustomSampler(metrics)
    jobs.inc(10)
    assert sampler.take(T)[0] == {key(T, "jobs"): counter_cell(10)}
    metrics.reset_after_fork()
    jobs.inc(3)
    assert sampler.take(T + 5)[0] == {key(T, "jobs"): counter_cell(3)}
    jobs.inc(4)
    assert sampler.take(T + 10)[0] == {key(T + 5, "jobs"): counter_cell(4)}


def test_a_forked_childs_sampler_starts_afresh() -> None:
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.")
    sampler = CustomSampler(metrics)
    jobs.inc(10)
    sampler.take(T)
    metrics.reset_after_fork()
    sampler.reset_after_fork()
    jobs.inc(12)  # more than the parent had: no reset to see but the sampler's own
    # The child's first sample: the current bucket, all of its value.
    assert sampler.take(T + 2)[0] == {key(T, "jobs"): counter_cell(12)}


def test_series_that_never_moved_give_no_cell_and_no_description() -> None:
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.", ("kind",))
    latency = metrics.declare("histogram", "latency_seconds", "Latency.")
    metrics.declare("histogram", "idle_seconds", "Never observed.")
    metrics.declare("counter", "never_total", "Never counted.")
    jobs.labels("a").inc(0)  # a series that never moved
    jobs.labels("b").inc(1)
    latency.observe(0.5)
    cells, described = CustomSampler(metrics).take(T)
    assert set(cells) == {key(T, "jobs", "b"), key(T, "latency_seconds")}
    assert set(described) == {"jobs", "latency_seconds"}


def test_a_second_sample_of_unchanged_counters_and_histograms_is_empty() -> None:
    metrics = registry()
    metrics.declare("counter", "jobs_total", "Jobs.").inc(5)
    metrics.declare("histogram", "latency_seconds", "Latency.").observe(2)
    sampler = CustomSampler(metrics)
    assert len(sampler.take(T)[0]) == 2
    assert sampler.take(T + 5) == ({}, {})
    assert sampler.take(T + 10, forced=True) == ({}, {})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10**12), st.integers(0, 12), st.booleans(), st.booleans()),
        max_size=60,
    )
)
def test_the_increases_add_up_to_the_counter_exactly(
    steps: list[tuple[int, int, bool, bool]],
) -> None:
    """However the samples fall (a few a bucket, buckets without one, forced
    or not), every increase is counted once, exactly, in a bucket no later
    than the sample's and no earlier than the bucket before it."""
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.", ("shard",))
    sampler = CustomSampler(metrics)
    now = T + 1
    stored: dict[str, int] = {}
    last_bucket: float | None = None
    for amount, seconds, forced, other_shard in steps:
        jobs.labels("b" if other_shard else "a").inc(amount)
        now += seconds
        bucket = now // 5 * 5
        cells, described = sampler.take(now, forced=forced)
        if bucket == last_bucket and not forced:
            assert cells == {}
        for (cell_bucket, name, labels), cell in cells.items():
            assert name == "jobs" and described["jobs"].series == {}
            assert cell_bucket in (bucket, bucket - 5)
            assert cell[1:] == [0, None, None, None, None] and cell[TOTAL] > 0
            stored[labels] = stored.get(labels, 0) + cell[TOTAL]
        last_bucket = bucket
    for cell_key, cell in sampler.take(now, forced=True)[0].items():
        stored[cell_key[2]] = stored.get(cell_key[2], 0) + cell[TOTAL]
    recorded = {labels_text([shard]): 0 for shard in "ab"}
    for amount, _, _, other_shard in steps:
        recorded[labels_text(["b" if other_shard else "a"])] += amount
    assert stored == {labels: total for labels, total in recorded.items() if total}
    assert all(type(total) is int for total in stored.values())


# -- the sampler: histograms -------------------------------------------------------------


def test_a_histogram_gives_its_per_bucket_counts_and_sum_between_samples() -> None:
    metrics = registry()
    latency = metrics.declare("histogram", "latency_seconds", "Latency.", ("route",))
    sampler = CustomSampler(metrics)
    for value in (0.5, 3, 7, 1.0):
        latency.labels("/a").observe(value)
    cells, described = sampler.take(T)
    assert cells == {key(T, "latency_seconds", "/a"): histogram_cell(11.5, [2, 1, 1])}
    assert described == {
        "latency_seconds": snapshot("latency_seconds", "histogram", "Latency.", ("route",), BOUNDS)
    }
    latency.labels("/a").observe(0.25)
    latency.labels("/a").observe(0.5)
    latency.labels("/b").observe(9)
    assert sampler.take(T + 5)[0] == {
        key(T, "latency_seconds", "/a"): histogram_cell(0.75, [2, 0, 0]),
        key(T, "latency_seconds", "/b"): histogram_cell(9, [0, 0, 1]),
    }


def test_a_histogram_reset_counts_its_new_figures() -> None:
    metrics = registry()
    latency = metrics.declare("histogram", "latency_seconds", "Latency.")
    sampler = CustomSampler(metrics)
    for value in (0.5, 0.5, 3):
        latency.observe(value)
    sampler.take(T)
    metrics.reset_after_fork()
    latency.observe(2)
    latency.observe(6)
    assert sampler.take(T + 5)[0] == {key(T, "latency_seconds"): histogram_cell(8, [0, 1, 1])}


def test_a_histogram_that_observed_infinity_stores_sum_0_from_then_on() -> None:
    metrics = registry()
    latency = metrics.declare("histogram", "latency_seconds", "Latency.")
    sampler = CustomSampler(metrics)
    latency.observe(2)
    assert sampler.take(T)[0] == {key(T, "latency_seconds"): histogram_cell(2, [0, 1, 0])}
    latency.observe(math.inf)
    latency.observe(0.5)
    assert sampler.take(T + 5)[0] == {key(T, "latency_seconds"): histogram_cell(0.0, [1, 0, 1])}
    for step in range(2, 5):
        latency.observe(3)
        cells = sampler.take(T + 5 * step)[0]
        assert cells == {key(T + 5 * step - 5, "latency_seconds"): histogram_cell(0.0, [0, 1, 0])}
        assert not math.isnan(cells[key(T + 5 * step - 5, "latency_seconds")][TOTAL])
    # Infinity in the first sample ever: the same.
    fresh = registry()
    fresh.declare("histogram", "latency_seconds", "Latency.").observe(math.inf)
    assert CustomSampler(fresh).take(T)[0] == {
        key(T, "latency_seconds"): histogram_cell(0.0, [0, 0, 1])
    }


#: Observed values whose sums are exact in a float (quarters up to 100).
quarters = st.integers(0, 400).map(lambda number: number / 4)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.lists(quarters, max_size=6), st.integers(0, 11)), max_size=30))
def test_the_histogram_changes_add_up_to_its_figures(
    steps: list[tuple[list[float], int]],
) -> None:
    metrics = registry()
    latency = metrics.declare("histogram", "latency_seconds", "Latency.")
    sampler = CustomSampler(metrics)
    now = T
    counts = [0, 0, 0]
    total, number = 0.0, 0
    for values, seconds in steps:
        for value in values:
            latency.observe(value)
        now += seconds
        for cell in sampler.take(now)[0].values():
            assert cell[COUNT] == sum(cell[COUNTS]) > 0
            assert cell[LOW] is None and cell[HIGH] is None and cell[SPAN] is None
            counts = [a + b for a, b in zip(counts, cell[COUNTS], strict=True)]
            total += cell[TOTAL]
            number += cell[COUNT]
    for cell in sampler.take(now, forced=True)[0].values():
        counts = [a + b for a, b in zip(counts, cell[COUNTS], strict=True)]
        total += cell[TOTAL]
        number += cell[COUNT]
    observed = [value for values, _ in steps for value in values]
    assert total == sum(observed)
    assert number == len(observed)
    assert counts == [
        sum(1 for v in observed if v <= 1.0),
        sum(1 for v in observed if 1.0 < v <= 5.0),
        sum(1 for v in observed if v > 5.0),
    ]


# -- the sampler: gauges -------------------------------------------------------------------


def test_a_gauge_gives_one_sample_per_bucket() -> None:
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.", ("pool",))
    sampler = CustomSampler(metrics)
    queue.labels("x").set(5)
    cells, described = sampler.take(T + 1)
    # One sample of bucket T: its span, that bucket alone.
    assert cells == {key(T, "queue_depth", "x"): gauge_cell(5, T)}
    assert described == {
        "queue_depth": snapshot("queue_depth", "gauge", "Queue depth.", ("pool",), mode="sum")
    }
    queue.labels("x").set(6)
    # Forced in the same bucket: that bucket has its sample.
    assert sampler.take(T + 2, forced=True) == ({}, {})
    # The next bucket's first flush describes bucket T again: no second sample.
    queue.labels("x").set(7)
    assert sampler.take(T + 6) == ({}, {})
    queue.labels("x").set(8)
    # The next bucket's sample: its own span; no count of the buckets before it.
    assert sampler.take(T + 11)[0] == {key(T + 5, "queue_depth", "x"): gauge_cell(8, T + 5)}


def test_a_forced_then_a_boundary_sample_of_one_bucket_give_one_gauge_sample() -> None:
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    jobs = metrics.declare("counter", "jobs_total", "Jobs.")
    sampler = CustomSampler(metrics)
    queue.set(1)
    sampler.take(T)
    queue.set(2)
    jobs.inc()
    # Forced in bucket T+10: describes T+10, with the gauge's sample; its
    # value before, 1, is T+5's (not sampled: the flusher's sample of it
    # would have come later).
    assert sampler.take(T + 12, forced=True)[0] == {
        key(T + 5, "queue_depth"): gauge_cell(1, T + 5),
        key(T + 10, "queue_depth"): gauge_cell(2, T + 10),
        key(T + 10, "jobs"): counter_cell(1),
    }
    queue.set(3)
    jobs.inc()
    # Bucket T+15's first flush describes T+10 again: the counter's rest only.
    assert sampler.take(T + 15)[0] == {key(T + 10, "jobs"): counter_cell(1)}
    assert sampler.take(T + 20)[0] == {key(T + 15, "queue_depth"): gauge_cell(3, T + 15)}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_gauge_that_is_not_finite_gives_no_sample(value: float) -> None:
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    queue.set(value)
    assert sampler.take(T) == ({}, {})
    queue.set(-2.5)
    assert sampler.take(T + 5) == ({}, {})  # bucket T was sampled (with nothing to store)
    cells = sampler.take(T + 10)[0]
    assert list(cells) == [key(T + 5, "queue_depth")]
    # (How it reads: see test_a_gauge_that_was_not_finite_reads_alike_at_every_resolution.)
    assert cells[key(T + 5, "queue_depth")] == gauge_cell(-2.5, T + 5)
    queue.set(value)
    assert sampler.take(T + 15) == ({}, {})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans(), st.integers(-50, 50)), max_size=50))
def test_a_gauge_is_sampled_at_most_once_per_bucket(steps: list[tuple[int, bool, int]]) -> None:
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    now = T
    sampled: list[int] = []  # the buckets sampled or filled, in order
    last: int | None = None  # the bucket sampled last
    taken_in: float | None = None  # the bucket of the last take that read the metrics
    before: int | None = None  # the value that take read
    for seconds, forced, value in steps:
        now += seconds
        queue.set(value)
        cells = sampler.take(now, forced=forced)[0]
        if cells:
            bucket = max(b for b, _, _ in cells)
            assert bucket in (now // 5 * 5, now // 5 * 5 - 5)
            # The sample, of its bucket alone; the value read before fills
            # the buckets skipped since the last sample, HOLD_BUCKETS at most.
            skipped = skipped_after(bucket, last)
            assert cells == {
                **(held(before, bucket - 5 * skipped, bucket - 5) if skipped else {}),
                key(bucket, "queue_depth"): gauge_cell(value, bucket),
            }
            sampled.extend(sorted(b for b, _, _ in cells))
            last = bucket
        if forced or now // 5 * 5 != taken_in:
            taken_in, before = now // 5 * 5, value
    assert len(sampled) == len(set(sampled))
    assert sampled == sorted(sampled)


def at_level(cells: dict[tuple[int, int, str, str], CustomCell], level: int) -> dict[int, Any]:
    """Expanded cells of one level, by bucket offset from T."""
    return {bucket - int(T): cell for (lvl, bucket, _, _), cell in cells.items() if lvl == level}


def stored_of(*samples: dict[CustomKey, CustomCell]) -> dict[tuple[int, int, str, str], Any]:
    """Samples expanded and added up as the stores do, one delta each."""
    out: dict[tuple[int, int, str, str], CustomCell] = {}
    for cells in samples:
        for cell_key, cell in expand_custom(cells, LEVELS).items():
            if cell_key in out:
                merge_custom(out[cell_key], cell)
            else:
                out[cell_key] = cell
    return out


def stored_row(cell_key: tuple[int, int, str, str], cell: CustomCell) -> CustomRow:
    """An expanded cell as a sink gives it back."""
    _, bucket, _, labels = cell_key
    return CustomRow(bucket, labels, *cell[:SPAN], *(cell[SPAN] or (None, None)))


def read_gauge(
    stored: dict[tuple[int, int, str, str], CustomCell],
    level: int,
    start: int,
    labels: str | None = None,
    step: int = 60,
) -> Any:
    """The "sum" value a chart reads from one resolution's rows over
    ``[start, start + step)`` (custom_series: one point of ``step`` seconds,
    a minute unless told), of one label set or all of them added up."""
    point = Point()
    for cell_key, cell in stored.items():
        lvl, bucket, _, row_labels = cell_key
        if lvl == level and start <= bucket < start + step and labels in (None, row_labels):
            point.add(stored_row(cell_key, cell), level)
    return figures(snapshot("queue_depth", "gauge", mode="sum"), point, step)["value"]


def time_average(
    stored: dict[tuple[int, int, str, str], CustomCell], start: int, end: int
) -> float | None:
    """What the 5-second rows in ``[start, end)`` give as the time average
    of the processes' sum from their first bucket to their last: their
    totals over every 5-second bucket of that span (a bucket without a
    row counts as zero)."""
    rows = {b: c[TOTAL] for (lvl, b, _, _), c in stored.items() if lvl == 5 and start <= b < end}
    if not rows:
        return None
    return float(sum(rows.values())) / ((max(rows) - min(rows)) // 5 + 1)


def test_a_gauges_span_is_its_first_and_last_bucket_sampled_in_each_resolution() -> None:
    """Three samples in successive 5-second buckets of one minute, and one in
    the next minute (the value before filling the 9 buckets skipped): each
    sample's span is its own bucket; stored, a resolution's bucket keeps
    the raw sum, and the first and last bucket sampled in it."""
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    samples = []
    for now, value in ((T + 1, 4), (T + 11, 6), (T + 16, 11)):
        queue.set(value)
        samples.append(sampler.take(now)[0])
    queue.set(7)
    samples.append(sampler.take(T + 61, forced=True)[0])
    assert samples == [
        {key(T, "queue_depth"): gauge_cell(4, T)},
        {key(T + 5, "queue_depth"): gauge_cell(6, T + 5)},
        {key(T + 10, "queue_depth"): gauge_cell(11, T + 10)},
        {**held(11, T + 15, T + 55), key(T + 60, "queue_depth"): gauge_cell(7, T + 60)},
    ]
    stored = stored_of(*samples)
    assert at_level(stored, 5) == {
        0: gauge_cell(4, T), 5: gauge_cell(6, T + 5), 10: gauge_cell(11, T + 10),
        **{b: gauge_cell(11, T + b) for b in range(15, 60, 5)}, 60: gauge_cell(7, T + 60),
    }  # fmt: skip
    # Raw sums: no weighing by the resolution.
    assert at_level(stored, 60) == {
        0: [120, 12, 4, 11, None, [T, T + 55]], 60: gauge_cell(7, T + 60),
    }  # fmt: skip
    for level in (300, 3600):
        assert at_level(stored, level) == {0: [127, 13, 4, 11, None, [T, T + 60]]}
    # Read: 120 over 12 buckets at the minute; at 5 minutes and the hour,
    # 127 over the 13 buckets from T to T+60.
    assert [read_gauge(stored, level, int(T)) for level in (5, 60)] == [10, 10]
    for level in (300, 3600):
        assert read_gauge(stored, level, int(T), step=level) == round(127 / 13, 6)
        assert read_gauge(stored, level, int(T), step=level) == round(
            time_average(stored, int(T), int(T) + level) or 0, 6
        )
    # A sample in a new hour: the value before fills 5 minutes at most.
    queue.set(2)
    assert sampler.take(T + 3600, forced=True)[0] == {
        **held(7, T + 3300, T + 3595),
        key(T + 3600, "queue_depth"): gauge_cell(2, T + 3600),
    }


def test_the_value_before_fills_the_buckets_skipped() -> None:
    """A flusher that sampled T and T+20 only (every 20 seconds, or held up):
    the value before fills T+5..T+15, so every resolution reads the gauge's
    value, not a quarter of it (as buckets of nothing would) nor a gap."""
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    samples = []
    for offset in (0, 20):
        queue.set(10)
        samples.append(sampler.take(T + offset + 1, forced=True)[0])
    assert samples[1] == {
        **held(10, T + 5, T + 15),
        key(T + 20, "queue_depth"): gauge_cell(10, T + 20),
    }
    stored = stored_of(*samples)
    assert stored[(60, int(T), "queue_depth", "[]")] == [50, 5, 10, 10, None, [T, T + 20]]
    for level in LEVELS:
        assert read_gauge(stored, level, int(T), step=max(level, 60)) == 10
        assert time_average(stored, int(T), int(T) + max(level, 60)) == 10


@pytest.mark.parametrize("interval", [5, 10, 15, 30, 60])
def test_a_flusher_sampling_every_interval_reads_the_gauges_value(interval: int) -> None:
    """flush_interval of 5 to 60 seconds: a gauge at 6 reads 6 at every
    resolution, and a change from 6 to 12 half-way through the hour reads
    its time average at the hour, whatever the interval: 359 buckets of 6
    and 361 of 12 (the sample at T+1801 is of the bucket that ended,
    T+1795, as every sample is)."""
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    samples = []
    for now in range(int(T), int(T) + 3600, interval):
        queue.set(6 if now < T + 1800 else 12)
        samples.append(sampler.take(now + 1)[0])
    queue.set(12)
    samples.append(sampler.take(T + 3600 + 1)[0])  # of the hour's last bucket
    stored = stored_of(*samples)
    assert len(at_level(stored, 5)) == 720  # every bucket of the hour, once
    assert read_gauge(stored, 5, int(T)) == read_gauge(stored, 60, int(T)) == 6
    assert read_gauge(stored, 300, int(T), step=300) == 6
    assert read_gauge(stored, 3600, int(T), step=3600) == round((6 * 359 + 12 * 361) / 720, 6)


def test_a_gap_longer_than_the_hold_counts_as_absence() -> None:
    """A flusher stalled 10 minutes: the value before fills the 5 minutes
    (HOLD_BUCKETS) before its next sample; the 59 buckets before those
    count as nothing."""
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    queue.set(8)
    first = sampler.take(T + 1, forced=True)[0]
    later = sampler.take(T + 600 + 1, forced=True)[0]
    assert HOLD_BUCKETS == 60
    assert later == {
        **held(8, T + 300, T + 595),
        key(T + 600, "queue_depth"): gauge_cell(8, T + 600),
    }
    stored = stored_of(first, later)
    # The hour: 62 buckets of 8 over the 121 from T to T+600.
    assert read_gauge(stored, 3600, int(T), step=3600) == round(8 * 62 / 121, 6)


def test_many_series_after_a_stall_fill_fewer_buckets() -> None:
    """The cells one sample fills stay within MAX_HELD_CELLS: 999 series,
    and one new since the last sample, after a stall of 5 minutes fill the
    10 buckets before the sample each; the new one fills nothing."""
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.", ("pool",))
    sampler = CustomSampler(metrics)
    for number in range(999):
        queue.labels(str(number)).set(number)
    sampler.take(T + 1, forced=True)
    queue.labels("new").set(5)
    cells = sampler.take(T + 301, forced=True)[0]
    assert MAX_HELD_CELLS // 1000 == 10
    filled = sorted(b for b, _, labels in cells if labels == '["7"]')
    assert filled == list(range(int(T) + 250, int(T) + 305, 5))
    assert cells[(int(T) + 250, "queue_depth", '["7"]')] == gauge_cell(7, T + 250)
    assert len(cells) == 999 * 10 + 1000
    assert [b for b, _, labels in cells if labels == '["new"]'] == [T + 300]


def test_two_processes_sampling_the_same_buckets_count_each_bucket_once() -> None:
    processes = [registry(), registry()]
    gauges = [metrics.declare("gauge", "queue_depth", "Queue depth.") for metrics in processes]
    samplers = [CustomSampler(metrics) for metrics in processes]
    samples = []
    for step, now in enumerate((T, T + 5, T + 10)):
        for number, (gauge, sampler) in enumerate(zip(gauges, samplers, strict=True)):
            gauge.set(10 * number + step)
            samples.append(sampler.take(now, forced=True)[0])
    # Each process's sample: its bucket's span, the same for both.
    assert [cells[key(T + 10, "queue_depth")][SPAN] for cells in samples[4:]] == [[T + 10] * 2] * 2
    stored = stored_of(*samples)
    # The 5-second buckets: both processes' samples added, one bucket spanned.
    assert at_level(stored, 5) == {
        0: [10, 2, 0, 10, None, [T, T]], 5: [12, 2, 1, 11, None, [T + 5, T + 5]],
        10: [14, 2, 2, 12, None, [T + 10, T + 10]],
    }  # fmt: skip
    for level in (60, 300, 3600):
        # Three buckets spanned by the two processes: 3, not 6.
        [cell] = at_level(stored, level).values()
        assert cell == [36, 6, 0, 12, None, [T, T + 10]]
        # The average of the processes' sum: (10 + 12 + 14) / 3.
        assert read_gauge(stored, level, int(T), step=level) == 12
    assert read_gauge(stored, 5, int(T)) == 12


def test_a_forked_childs_gauge_samples_go_on_from_its_first_bucket() -> None:
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    queue.set(3)
    assert sampler.take(T)[0] == {key(T, "queue_depth"): gauge_cell(3, T)}
    assert sampler.take(T + 10)[0] == {key(T + 5, "queue_depth"): gauge_cell(3, T + 5)}
    metrics.reset_after_fork()
    sampler.reset_after_fork()
    queue.set(4)
    # The child's first sample: the current bucket.
    assert sampler.take(T + 12)[0] == {key(T + 10, "queue_depth"): gauge_cell(4, T + 10)}
    assert sampler.take(T + 16) == ({}, {})  # bucket T+10 has its sample
    assert sampler.take(T + 21)[0] == {key(T + 15, "queue_depth"): gauge_cell(4, T + 15)}


def test_each_gauge_series_spans_from_its_own_first_sample() -> None:
    """A label set first set mid-minute spans from its first sample: alone
    it reads the average of its samples, and with the others it adds
    nothing to the buckets before it (the average of the sum)."""
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.", ("pool",))
    sampler = CustomSampler(metrics)
    queue.labels("a").set(1)
    samples = [sampler.take(T, forced=True)[0]]
    queue.labels("b").set(8)
    samples.append(sampler.take(T + 5, forced=True)[0])
    assert samples[-1] == {
        key(T + 5, "queue_depth", "a"): gauge_cell(1, T + 5),
        key(T + 5, "queue_depth", "b"): gauge_cell(8, T + 5),
    }
    queue.labels("b").set(4)
    samples.append(sampler.take(T + 10, forced=True)[0])
    assert samples[-1] == {
        key(T + 10, "queue_depth", "a"): gauge_cell(1, T + 10),
        key(T + 10, "queue_depth", "b"): gauge_cell(4, T + 10),
    }
    stored = stored_of(*samples)
    a, b = labels_text(["a"]), labels_text(["b"])
    for level in (60, 300, 3600):
        assert stored[(level, int(T), "queue_depth", a)] == [3, 3, 1, 1, None, [T, T + 10]]
        assert stored[(level, int(T), "queue_depth", b)] == [12, 2, 4, 8, None, [T + 5, T + 10]]
    for level in LEVELS:
        assert read_gauge(stored, level, int(T), b) == 6
        # The sum at T, T+5, T+10: 1, 9, 5; the point's span is every label
        # set's earliest first and latest last.
        assert read_gauge(stored, level, int(T)) == 5


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.booleans(), st.integers(-1000, 1000), st.integers(-9, 9)),
        min_size=1,
        max_size=60,
    ),
    st.booleans(),
)
def test_a_gauges_stored_cells_hold_the_sum_and_the_span_of_its_samples(
    steps: list[tuple[int, bool, int, int]], two_processes: bool
) -> None:
    """Samples at increasing 5-second buckets (some skipped: a flusher held
    up, or sampling every 10 seconds or more), forced or at the next
    bucket's first flush, by one process or two sampling the same buckets:
    in every bucket of every resolution, the stored total is the sum of the
    samples and of the values before that fill the buckets skipped (up to
    HOLD_BUCKETS), the count their number, the span the first and last
    bucket sampled or filled in it, and the value read the total over the
    buckets of that span."""
    processes = [registry() for _ in range(2 if two_processes else 1)]
    gauges = [metrics.declare("gauge", "queue_depth", "Queue depth.") for metrics in processes]
    samplers = [CustomSampler(metrics) for metrics in processes]
    bucket = int(T) - 5
    # The 5-second bucket sampled, or filled by the values before -> the processes' sum.
    sums: dict[int, int] = {}
    samples = []
    for number, (gap, forced, value, other) in enumerate(steps):
        last, bucket = bucket, bucket + 5 * gap
        before = sums.get(last)
        values = (value, other)
        for process, (gauge, sampler) in enumerate(zip(gauges, samplers, strict=True)):
            gauge.set(values[process])
            # Forced: into the bucket now is in; else the next bucket's first
            # flush, which describes the one that ended (not the first sample ever).
            now = bucket + 2 if forced or not number else bucket + 7
            samples.append(sampler.take(now, forced=forced)[0])
        skipped = skipped_after(bucket, last if number else None)
        for filled in range(bucket - 5 * skipped, bucket, 5):
            assert before is not None
            sums[filled] = before
        sums[bucket] = sum(values[: len(processes)])
    stored = stored_of(*samples)
    for level in LEVELS:
        cells = at_level(stored, level)
        starts = {b - b % level for b in sums}
        assert set(cells) == {start - int(T) for start in starts}
        for start in starts:
            inside = {b: total for b, total in sums.items() if b - b % level == start}
            cell = cells[start - int(T)]
            assert cell[TOTAL] == sum(inside.values())
            assert cell[COUNT] == len(inside) * len(processes)
            assert cell[SPAN] == [min(inside), max(inside)]
            assert cell[COUNTS] is None
            spanned = (max(inside) - min(inside)) // 5 + 1
            assert read_gauge(stored, level, start, step=level) == pytest.approx(
                sum(inside.values()) / spanned, abs=1e-6
            )


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 719),
    st.lists(
        st.tuples(
            st.integers(0, 40),
            st.lists(
                st.tuples(st.integers(1, 20), st.integers(-1000, 1000), st.booleans()),
                min_size=1,
                max_size=15,
            ),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_a_gauge_of_processes_one_after_another_reads_its_time_average_at_every_resolution(
    first: int, processes: list[tuple[int, list[tuple[int, int, bool]]]]
) -> None:
    """Gauge samples at increasing 5-second buckets (some skipped), by one
    process or by several one after another (each a restart: a new
    process whose sampler starts afresh, after a pause of some buckets or
    in the very bucket its predecessor sampled last): at the minute, the
    5 minutes and the hour, what a chart reads of each stored bucket
    through Point and figures is the 5-second rows' time average over the
    same first..last span; and where no bucket of that span was skipped,
    the 5-second rows read alone give the same."""
    bucket = int(T) + 5 * first
    samples = []
    for number, (pause, steps) in enumerate(processes):
        metrics = registry()
        queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
        sampler = CustomSampler(metrics)
        if number:
            bucket += 5 * pause
        before = 0
        for step, (gap, value, forced) in enumerate(steps):
            last = bucket
            if step:
                bucket += 5 * gap
            queue.set(value)
            # Forced, or a process's first sample: the bucket now is in;
            # else the next bucket's first flush, which describes this one.
            now = bucket + 2 if forced or not step else bucket + 7
            cells = sampler.take(now, forced=forced)[0]
            # A restarted process fills nothing from its predecessor.
            skipped = skipped_after(bucket, last if step else None)
            assert cells == {
                **(held(before, bucket - 5 * skipped, bucket - 5) if skipped else {}),
                key(bucket, "queue_depth"): gauge_cell(value, bucket),
            }
            samples.append(cells)
            before = value
    stored = stored_of(*samples)
    finest = sorted(b for (lvl, b, _, _) in stored if lvl == 5)
    for level in (60, 300, 3600):
        starts = sorted({b - b % level for b in finest})
        assert sorted(b for (lvl, b, _, _) in stored if lvl == level) == starts
        for start in starts:
            inside = [b for b in finest if start <= b < start + level]
            cell = stored[(level, start, "queue_depth", "[]")]
            assert cell[SPAN] == [inside[0], inside[-1]]
            expected = time_average(stored, start, start + level)
            assert expected is not None
            assert read_gauge(stored, level, start, step=level) == pytest.approx(expected, abs=1e-6)
            if len(inside) == (inside[-1] - inside[0]) // 5 + 1:  # no bucket skipped
                assert read_gauge(stored, 5, start, step=level) == pytest.approx(expected, abs=1e-6)


def test_a_gauge_reads_as_the_average_over_the_buckets_sampled_at_every_resolution() -> None:
    """One sample of 7 in a minute reads 7 at the minute and coarser (not
    7 * 5 / 60); samples of 4, 6 and 11 read their mean, 7, from the
    5-second rows and from the minute's alike."""
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    queue.set(7)
    once = stored_of(sampler.take(T + 12, forced=True)[0])
    assert [read_gauge(once, level, int(T)) for level in LEVELS] == [7, 7, 7, 7]

    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    samples = []
    for now, value in ((T + 1, 4), (T + 11, 6), (T + 16, 11)):
        queue.set(value)
        samples.append(sampler.take(now)[0])
    thrice = stored_of(*samples)
    assert [read_gauge(thrice, level, int(T)) for level in LEVELS] == [7, 7, 7, 7]


def test_a_worker_replaced_mid_minute_reads_alike_at_every_resolution() -> None:
    """Two processes one after the other in one minute (a worker replaced,
    6 buckets each): the minute spans the 12 buckets, and reads 10."""
    samples = []
    for first in (T, T + 30):  # the old worker, then its replacement (a new process)
        metrics = registry()
        queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
        sampler = CustomSampler(metrics)
        queue.set(10)
        samples += [sampler.take(first + 5 * n, forced=True)[0] for n in range(6)]
    stored = stored_of(*samples)
    assert stored[(60, int(T), "queue_depth", "[]")] == [120, 12, 10, 10, None, [T, T + 55]]
    assert read_gauge(stored, 5, int(T)) == 10  # one process of 10 at every bucket
    assert read_gauge(stored, 60, int(T)) == 10
    for level in (300, 3600):
        assert read_gauge(stored, level, int(T), step=level) == 10


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_gauge_that_was_not_finite_reads_alike_at_every_resolution(value: float) -> None:
    metrics = registry()
    queue = metrics.declare("gauge", "queue_depth", "Queue depth.")
    sampler = CustomSampler(metrics)
    samples = []
    for number in range(12):
        queue.set(value if number < 6 else 10)
        samples.append(sampler.take(T + 5 * number, forced=True)[0])
    # Its first stored sample: the minute's span starts there.
    assert samples[6] == {key(T + 30, "queue_depth"): gauge_cell(10, T + 30)}
    stored = stored_of(*samples)
    assert stored[(60, int(T), "queue_depth", "[]")][SPAN] == [T + 30, T + 55]
    assert [read_gauge(stored, level, int(T)) for level in LEVELS] == [10] * len(LEVELS)


# -- label text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["eu", "a\x00b", "\ud800", "\udfff tail", "café ☃ 日本", '"quoted"\\', "", "<overflow>"],
)
def test_label_values_become_ascii_json_text(value: str) -> None:
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.", ("region", "kind"))
    jobs.labels(value, "k").inc()
    [(_, _, labels)] = CustomSampler(metrics).take(T)[0]
    assert labels.isascii()
    assert json.loads(labels) == [value, "k"]
    assert labels == labels_text([value, "k"])


def test_label_text_is_a_compact_json_array() -> None:
    assert labels_text([]) == "[]"
    assert labels_text(["eu", "x"]) == '["eu","x"]'
    assert labels_text(["\x00"]) == '["\\u0000"]'
    assert labels_text(["\ud800"]) == '["\\ud800"]'
    assert labels_text(["é"]) == '["\\u00e9"]'
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.", ("n",))
    jobs.labels(3).inc()  # a value that is no text: its str()
    assert list(CustomSampler(metrics).take(T)[0]) == [(int(T), "jobs", '["3"]')]


def test_a_labels_key_is_a_16_byte_blake2b_digest_of_the_label_text() -> None:
    """The stores key rows on it, so a label value of any length fits an index."""
    for labels in ("[]", labels_text(["eu"]), labels_text(["é" * 3000]), '["\\ud800"]'):
        digest = labels_key(labels)
        assert digest == hashlib.blake2b(labels.encode(), digest_size=16).hexdigest()
        assert len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)
    # Text that is not JSON of the sampler's (a lone surrogate itself) has a key too.
    assert len(labels_key("\ud800")) == 32
    assert labels_key("\ud800") != labels_key("\ud801")
    # Label sets differing in one character anywhere have other keys.
    long = "日本☃" * 1000
    keys = {labels_key(labels_text([long])), labels_key(labels_text([long[:-1] + "x"]))}
    keys |= {labels_key(labels_text(["x" + long[1:]])), labels_key(labels_text([long, ""]))}
    assert len(keys) == 4


# -- the cells' arithmetic ----------------------------------------------------------------


def test_expand_custom_keeps_raw_sums_and_the_span_of_each_levels_bucket() -> None:
    cells = {
        key(T, "queue", "x"): gauge_cell(6, T),
        key(T + 5, "queue", "x"): gauge_cell(12, T + 5),
        key(T + 60, "queue", "x"): gauge_cell(3, T + 60),
        key(T, "jobs"): counter_cell(3),
        key(T + 55, "jobs"): counter_cell(4),
        key(T + 300, "jobs"): counter_cell(5),
        key(T, "latency"): histogram_cell(2.5, [1, 1, 0]),
        key(T + 5, "latency"): histogram_cell(9.0, [0, 0, 1]),
    }
    out = expand_custom(cells, LEVELS)
    x, none = labels_text(["x"]), labels_text([])
    for level in LEVELS:
        gauges = {k[1]: v for k, v in out.items() if k[0] == level and k[2] == "queue"}
        counters = {k[1]: v for k, v in out.items() if k[0] == level and k[2] == "jobs"}
        histograms = {k[1]: v for k, v in out.items() if k[0] == level and k[2] == "latency"}
        assert all(k[3] == (x if k[2] == "queue" else none) for k in out)
        if level == 5:
            assert gauges == {
                int(T): gauge_cell(6, T),
                int(T) + 5: gauge_cell(12, T + 5),
                int(T) + 60: gauge_cell(3, T + 60),
            }
            assert counters == {
                int(T): counter_cell(3),
                int(T) + 55: counter_cell(4),
                int(T) + 300: counter_cell(5),
            }
            assert histograms == {
                int(T): histogram_cell(2.5, [1, 1, 0]),
                int(T) + 5: histogram_cell(9.0, [0, 0, 1]),
            }
            continue
        if level == 60:
            # The samples' raw sum, and the first and last bucket sampled in the minute.
            assert gauges == {
                int(T): [18, 2, 6, 12, None, [T, T + 5]], int(T) + 60: gauge_cell(3, T + 60),
            }  # fmt: skip
            assert counters == {int(T): counter_cell(7), int(T) + 300: counter_cell(5)}
        else:
            assert gauges == {int(T): [21, 3, 3, 12, None, [T, T + 60]]}
            if level == 300:
                assert counters == {int(T): counter_cell(7), int(T) + 300: counter_cell(5)}
            else:
                assert counters == {int(T): counter_cell(12)}
        assert histograms == {int(T): histogram_cell(11.5, [1, 1, 1])}
    assert all(cell[SPAN] is None for k, cell in out.items() if k[2] != "queue")
    # No cell shares a list with another, nor with the cells given.
    spans = [cell[SPAN] for k, cell in out.items() if k[2] == "queue"]
    spans += [cell[SPAN] for cell in cells.values() if cell[SPAN] is not None]
    assert len({id(span) for span in spans}) == len(spans)
    # The cells given are left as they were.
    assert cells[key(T, "queue", "x")] == gauge_cell(6, T)
    assert cells[key(T + 5, "queue", "x")] == gauge_cell(12, T + 5)
    assert cells[key(T, "latency")] == histogram_cell(2.5, [1, 1, 0])


def test_expand_custom_copies_a_cells_span_to_every_level() -> None:
    """No per-level number: each level's cell holds the span as it was given
    (a merged delta's cell may span more than its own bucket)."""
    cells = {key(T + 1795, "queue"): gauge_cell(2.5, T + 1700, T + 1795)}
    out = expand_custom(cells, LEVELS)
    assert {level: cell[SPAN] for (level, _, _, _), cell in out.items()} == {
        level: [T + 1700, T + 1795] for level in LEVELS
    }
    assert {(level, bucket) for (level, bucket, _, _) in out} == {
        (level, int(T) + 1795 - (int(T) + 1795) % level) for level in LEVELS
    }
    assert all(cell[:COUNTS] == [2.5, 1, 2.5, 2.5] for cell in out.values())
    assert all(type(bucket) is int for cell in out.values() for bucket in cell[SPAN])


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.tuples(st.integers(0, 2000).map(lambda n: int(T) + 5 * n), st.sampled_from("ab")),
        st.integers(-1000, 1000),
        max_size=40,
    )
)
def test_expanded_gauges_add_their_samples_and_span_their_buckets(
    samples: dict[tuple[int, str], int],
) -> None:
    """At every level, a bucket's total is the raw sum of its samples (no
    weighing), its count their number, its low and high their least and
    greatest, and its span its samples' first and last 5-second bucket."""
    cells = {
        (bucket, "queue", labels_text([pool])): gauge_cell(value, bucket)
        for (bucket, pool), value in samples.items()
    }
    out = expand_custom(cells, LEVELS)
    for level in LEVELS:
        mine = {k: v for k, v in out.items() if k[0] == level}
        assert sum(v[TOTAL] for v in mine.values()) == sum(samples.values())
        assert sum(v[COUNT] for v in mine.values()) == len(samples)
        for (_, bucket, _, labels), cell in mine.items():
            assert bucket % level == 0
            inside = {
                b: v for (b, pool), v in samples.items()
                if b - b % level == bucket and labels_text([pool]) == labels
            }  # fmt: skip
            assert cell[TOTAL] == sum(inside.values())
            assert (cell[LOW], cell[HIGH]) == (min(inside.values()), max(inside.values()))
            assert cell[SPAN] == [min(inside), max(inside)]


def test_merge_custom_keeps_the_least_low_and_greatest_high() -> None:
    into = counter_cell(2)
    merge_custom(into, counter_cell(3))
    assert into == counter_cell(5)

    into = counter_cell(0)
    merge_custom(into, gauge_cell(4, T + 5))  # None low, high and span take the other's
    assert into == [4, 1, 4, 4, None, [T + 5, T + 5]]
    merge_custom(into, gauge_cell(-1, T + 10))
    assert into == [3, 2, -1, 4, None, [T + 5, T + 10]]
    merge_custom(into, gauge_cell(9.5, T))  # span: the earliest first, the latest last
    assert into == [12.5, 3, -1, 9.5, None, [T, T + 10]]
    merge_custom(into, counter_cell(1))  # the other's None leaves them
    assert into == [13.5, 3, -1, 9.5, None, [T, T + 10]]

    into = histogram_cell(1.0, [1, 0])
    merge_custom(into, histogram_cell(2.0, [0, 1, 3]))
    assert into == [3.0, 5, None, None, [1, 1, 3], None]
    into = counter_cell(0)
    other = histogram_cell(2.0, [0, 2])
    merge_custom(into, other)
    assert into == [2.0, 2, None, None, [0, 2], None]
    other[COUNTS][1] = 99
    assert into[COUNTS] == [0, 2]  # a copy, not the other's list


def test_merge_custom_keeps_the_earliest_first_and_the_latest_last() -> None:
    into = gauge_cell(2, T + 10, T + 20)
    merge_custom(into, gauge_cell(3, T, T + 15))  # an earlier first only
    assert into == [5, 2, 2, 3, None, [T, T + 20]]
    merge_custom(into, gauge_cell(1, T + 5, T + 30))  # a later last only
    assert into == [6, 3, 1, 3, None, [T, T + 30]]
    merge_custom(into, gauge_cell(1, T + 5, T + 25))  # inside: unchanged
    assert into[SPAN] == [T, T + 30]
    # A list taken from the other is a copy, not the other's list.
    into = counter_cell(1)
    other = gauge_cell(3, T + 5)
    merge_custom(into, other)
    assert into == [4, 1, 3, 3, None, [T + 5, T + 5]]
    other[SPAN][1] = 99
    assert into[SPAN] == [T + 5, T + 5]
    merge_custom(into, counter_cell(1))
    assert into[SPAN] == [T + 5, T + 5]
    # Merged into, the held list is not the other's either.
    held = gauge_cell(3, T + 10)
    merge_custom(held, other)
    other[SPAN][0] = -5
    assert held[SPAN] == [T + 5, T + 10]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(-1000, 1000), st.integers(0, 100), st.integers(0, 100)),
        min_size=1,
        max_size=12,
    ),
    st.randoms(use_true_random=False),
)
def test_merged_spans_are_the_earliest_first_and_the_latest_last_in_any_order(
    parts: list[tuple[int, int, int]], rng: Any
) -> None:
    cells = [
        gauge_cell(value, T + 5 * min(a, b), T + 5 * max(a, b)) for value, a, b in parts
    ]  # fmt: skip
    expected = [min(c[SPAN][0] for c in cells), max(c[SPAN][1] for c in cells)]
    rng.shuffle(cells)
    into = counter_cell(0)
    for cell in cells:
        merge_custom(into, cell)
    assert into[SPAN] == expected
    assert into[TOTAL] == sum(value for value, _, _ in parts)


def test_copy_custom_shares_no_list() -> None:
    cell = histogram_cell(1.0, [1, 2])
    copied = copy_custom(cell)
    assert copied == cell and copied is not cell and copied[COUNTS] is not cell[COUNTS]
    sampled = gauge_cell(2, T + 5)
    copied = copy_custom(sampled)
    assert copied == sampled and copied[SPAN] is not sampled[SPAN]
    copied[SPAN][0] = 0
    assert sampled == gauge_cell(2, T + 5)
    assert copy_custom(counter_cell(1)) == counter_cell(1)


def test_add_counts_of_unequal_lengths() -> None:
    assert add_counts([1, 2, 3], [10]) == [11, 2, 3]
    assert add_counts([1], [10, 20, 30]) == [11, 20, 30]
    assert add_counts([], [4]) == [4]
    assert add_counts(None, [4, 5]) == [4, 5]
    assert add_counts([4, 5], None) == [4, 5]
    assert add_counts(None, None) == []
    left, right = [1, 2], [3]
    out = add_counts(left, right)
    assert out == [4, 2] and left == [1, 2] and right == [3]
    assert add_counts(left, None) is not left


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=8), st.lists(st.integers(0, 2**40), max_size=8))
def test_add_counts_adds_element_by_element(left: list[int], right: list[int]) -> None:
    expected = [a + b for a, b in zip_longest(left, right, fillvalue=0)]
    assert add_counts(left, right) == expected
    assert add_counts(right, left) == expected
    assert json.loads(add_counts_text(json.dumps(left), json.dumps(right)) or "null") == expected


def test_add_counts_text_with_none() -> None:
    assert add_counts_text(None, None) is None
    assert add_counts_text("[1,2]", None) == "[1,2]"
    assert add_counts_text(None, "[3]") == "[3]"
    assert add_counts_text("[1,2]", "[3]") == "[4,2]"
    assert add_counts_text("[1]", "[3,4,5]") == "[4,4,5]"


def test_custom_rows_are_sorted_with_their_key_span_and_counts() -> None:
    cells = {
        (60, int(T), "b", "[]"): histogram_cell(1.5, [1, 0, 2]),
        (5, int(T) + 5, "a", "[]"): counter_cell(2),
        (5, int(T), "a", '["x"]'): gauge_cell(3, T),
        (60, int(T), "a", '["x"]'): [9, 3, 2, 4, None, [int(T), int(T) + 10]],
    }
    x, none = labels_key('["x"]'), labels_key("[]")
    # (level, bucket, metric, labels, labels_key, total, count, low, high, first, last, counts)
    assert list(custom_rows(cells)) == [
        (5, int(T), "a", '["x"]', x, 3, 1, 3, 3, int(T), int(T), None),
        (5, int(T) + 5, "a", "[]", none, 2, 0, None, None, None, None, None),
        (60, int(T), "a", '["x"]', x, 9, 3, 2, 4, int(T), int(T) + 10, None),
        (60, int(T), "b", "[]", none, 1.5, 3, None, None, None, None, "[1,0,2]"),
    ]
    assert (
        list(custom_rows(cells, lambda c: "{" + ",".join(map(str, c)) + "}"))[-1][-1] == "{1,0,2}"
    )


def test_custom_row_reads_a_database_row_back() -> None:
    """``select_custom``'s columns: bucket, labels, total, count, low, high,
    counts (JSON text or an array), first, last."""
    assert custom_row((int(T), "[]", 3, 1, 3.0, 3.0, None, int(T), int(T) + 5)) == CustomRow(
        int(T), "[]", 3.0, 1, 3.0, 3.0, None, int(T), int(T) + 5
    )
    back = custom_row((int(T), '["a"]', 1.5, 3, None, None, "[1,0,2]", None, None))
    assert back == CustomRow(int(T), '["a"]', 1.5, 3, None, None, [1, 0, 2], None, None)
    assert custom_row((int(T), "[]", 2, 0, None, None, [4, 5], None, None)).counts == [4, 5]
    first_last = custom_row((int(T), "[]", 1, 1, 1.0, 1.0, None, 5.0, 10.0))[7:]
    assert first_last == (5, 10) and all(type(n) is int for n in first_last)
    # The defaults: a row of something else than a gauge has no span.
    assert CustomRow(int(T), "[]", 1.0, 0, None, None, None)[7:] == (None, None)


def test_custom_parameters_expand_every_level_and_describe_the_metrics() -> None:
    delta = RollupDelta()
    delta.custom = {
        key(T + 1795, "queue"): gauge_cell(12, T + 1795),
        key(T + 1795, "jobs"): counter_cell(2),
    }
    delta.metrics = {
        "queue": snapshot("queue", "gauge", mode="max"),
        "jobs": snapshot("jobs", "counter", "Jobs\x00 \ud800."),
    }
    described, rows = custom_parameters(delta)
    assert [row[:6] for row in described] == [
        ("jobs", "counter", '"Jobs\\u0000 \\ud800."', "[]", "[]", ""),
        ("queue", "gauge", '"Help."', "[]", "[]", "max"),
    ]
    assert all(isinstance(row[6], float) for row in described)
    rows_by_key = {row[:4]: row[4:] for row in rows}
    for level in LEVELS:
        bucket = int(T) + 1795 - (int(T) + 1795) % level
        assert rows_by_key[(level, bucket, "jobs", "[]")] == (
            labels_key("[]"), 2, 0, None, None, None, None, None,
        )  # fmt: skip
        # The raw sample at every level, with its own bucket as its span.
        assert rows_by_key[(level, bucket, "queue", "[]")] == (
            labels_key("[]"), 12, 1, 12, 12, int(T) + 1795, int(T) + 1795, None,
        )  # fmt: skip
    assert len(rows_by_key) == 2 * len(LEVELS)


@pytest.mark.parametrize("help_text", ["Plain.", "a\x00b", "lone \ud800 surrogate", "日本 ☃"])
def test_a_description_is_stored_as_ascii_and_read_back(help_text: str) -> None:
    metric = MetricSnapshot(
        "latency",
        "histogram",
        help_text,
        ("route", "m"),
        (0.5, 1.0),
        "",
        {("/", "GET"): [1, 0, 0, 0.2]},
        7,
    )
    row = describe(metric, 123.5)
    assert row[6] == 123.5
    assert all(isinstance(text, str) and text.isascii() for text in row[:6])
    assert stored_metric(row[:6]) == snapshot(
        "latency", "histogram", help_text, ("route", "m"), (0.5, 1.0)
    )


# -- which stored rows fit a metric -------------------------------------------------------


def test_fits_leaves_out_rows_of_another_kind_or_other_buckets() -> None:
    """A name declared again as another kind leaves rows of the other behind:
    a gauge's rows have a low, a histogram's counts of its buckets (and
    +Inf), a counter's neither."""
    counter_row = CustomRow(int(T), "[]", 3.0, 0, None, None, None)
    gauge_row = CustomRow(int(T), "[]", 7.0, 1, 7.0, 7.0, None, int(T), int(T))
    histogram_row = CustomRow(int(T), "[]", 1.5, 2, None, None, [1, 1, 0])
    other_buckets = CustomRow(int(T), "[]", 1.5, 2, None, None, [1, 1])
    counter = snapshot("odd", "counter")
    gauge = snapshot("odd", "gauge", mode="sum")
    histogram = snapshot("odd", "histogram", bounds=BOUNDS)
    rows = (counter_row, gauge_row, histogram_row, other_buckets)
    assert [fits(counter, row) for row in rows] == [True, False, False, False]
    assert [fits(gauge, row) for row in rows] == [False, True, False, False]
    assert [fits(histogram, row) for row in rows] == [False, False, True, False]
    # A gauge row met by a counter's change of the same key (a store merges
    # them): it has a low, so it is a gauge's.
    assert fits(gauge, gauge_row._replace(total=10.0)) and not fits(counter, gauge_row)


def test_a_point_reads_the_span_of_every_label_set_and_falls_back_to_the_bucket() -> None:
    point = Point()
    point.add(CustomRow(int(T), '["a"]', 10.0, 2, 5.0, 5.0, None, int(T) + 10, int(T) + 15), 60)
    point.add(CustomRow(int(T), '["b"]', 8.0, 2, 2.0, 6.0, None, int(T), int(T) + 5), 60)
    # One stored bucket: the earliest first and the latest last, T..T+15.
    assert point.spans == {(60, int(T)): [int(T), int(T) + 15]}
    assert point.sampled() == 4
    assert figures(snapshot("q", "gauge", mode="sum"), point, 60)["value"] == 4.5
    assert figures(snapshot("q", "gauge", mode="max"), point, 60)["value"] == 6
    assert figures(snapshot("q", "gauge", mode="min"), point, 60)["value"] == 2
    # Another stored bucket adds its own span.
    point.add(CustomRow(int(T) + 60, "[]", 3.0, 1, 3.0, 3.0, None, int(T) + 60, int(T) + 60), 60)
    assert point.sampled() == 5
    # A gauge row without a span (none is stored) counts its bucket alone.
    alone = Point()
    alone.add(CustomRow(int(T), "[]", 6.0, 1, 6.0, 6.0, None), 3600)
    assert alone.sampled() == 1
    assert figures(snapshot("q", "gauge", mode="sum"), alone, 3600)["value"] == 6
    # Counters and histograms have none: no gauge value.
    counted = Point()
    counted.add(CustomRow(int(T), "[]", 6.0, 0, None, None, None), 60)
    assert counted.spans == {} and counted.sampled() == 0
    assert figures(snapshot("q", "gauge", mode="sum"), counted, 60)["value"] is None


# -- the cells in a RollupDelta -------------------------------------------------------------


def test_a_delta_holding_custom_cells_only_holds_something() -> None:
    delta = RollupDelta()
    assert not delta.holds_anything() and len(delta) == 0
    delta.custom[key(T, "jobs")] = counter_cell(1)
    assert delta.holds_anything() and len(delta) == 1 and delta.requests == 0
    delta.add(T, "/a", "GET", 200, 1.0, False, 0, 0)
    assert len(delta) == 2


def test_absorb_adds_custom_cells_and_descriptions() -> None:
    first = RollupDelta()
    first.add(T, "/a", "GET", 200, 1.0, False, 0, 0)
    first.custom = {
        key(T, "jobs"): counter_cell(2),
        key(T, "latency"): histogram_cell(1.0, [1, 0]),
        key(T, "depth"): gauge_cell(7, T),
    }
    first.metrics = {"jobs": snapshot("jobs", "counter")}
    pending = RollupDelta()
    assert pending.absorb(first) == (0, 0)
    assert pending.custom == first.custom and pending.metrics == first.metrics
    # Copies: changing what was absorbed changes nothing held.
    first.custom[key(T, "latency")][COUNTS][0] = 50
    first.custom[key(T, "jobs")][TOTAL] = 99
    first.custom[key(T, "depth")][SPAN][1] = 50
    assert pending.custom[key(T, "latency")] == histogram_cell(1.0, [1, 0])
    assert pending.custom[key(T, "jobs")] == counter_cell(2)
    assert pending.custom[key(T, "depth")] == gauge_cell(7, T)

    second = RollupDelta()
    second.custom = {
        key(T, "jobs"): counter_cell(3),
        key(T, "latency"): histogram_cell(2.0, [0, 1, 1]),
        key(T, "queue"): gauge_cell(4, T),
        # The same bucket's sample again (a second process's, in a merged
        # delta): added, the span the earliest first and the latest last.
        key(T, "depth"): gauge_cell(3, T - 5, T + 5),
    }
    second.metrics = {"queue": snapshot("queue", "gauge", mode="sum")}
    assert pending.absorb(second) == (0, 0)
    assert pending.custom == {
        key(T, "jobs"): counter_cell(5),
        key(T, "latency"): histogram_cell(3.0, [1, 1, 1]),
        key(T, "queue"): gauge_cell(4, T),
        key(T, "depth"): [10, 2, 3, 7, None, [T - 5, T + 5]],
    }
    assert set(pending.metrics) == {"jobs", "queue"}
    assert pending.requests == 1


def test_absorb_counts_the_custom_cells_past_their_own_limit() -> None:
    pending = RollupDelta()
    base = RollupDelta()
    base.add(T, "/a", "GET", 200, 1.0, False, 0, 0)
    base.add(T, "/b", "GET", 200, 1.0, False, 0, 0)
    base.custom = {key(T, "jobs", "a"): counter_cell(1)}
    assert pending.absorb(base, limit=2, custom_limit=2) == (0, 0)
    assert len(pending) == 3

    more = RollupDelta()
    more.custom = {
        key(T, "jobs", "a"): counter_cell(10),  # held: merged, whatever the limit
        key(T, "jobs", "b"): counter_cell(1),  # the one that fits
        key(T, "jobs", "c"): counter_cell(1),
        key(T, "jobs", "d"): counter_cell(1),
    }
    more.metrics = {"jobs": snapshot("jobs", "counter", labels=("k",))}
    assert pending.absorb(more, limit=2, custom_limit=2) == (0, 2)
    assert len(pending) == 4
    assert pending.custom == {
        key(T, "jobs", "a"): counter_cell(11),
        key(T, "jobs", "b"): counter_cell(1),
    }
    assert pending.metrics == more.metrics  # described all the same

    # Request cells past theirs: the requests refused are counted.
    requests = RollupDelta()
    requests.add(T, "/c", "GET", 200, 1.0, False, 0, 0)
    requests.add(T, "/c", "GET", 200, 2.0, False, 0, 0)
    requests.add(T, "/a", "GET", 200, 2.0, False, 0, 0)  # held: merged
    assert pending.absorb(requests, limit=2, custom_limit=2) == (2, 0)
    assert pending.requests == 3
    assert len(pending.cells) == 2


def test_custom_cells_never_take_the_request_cells_room() -> None:
    """Each bound counts its own kind: a delta full of custom cells takes
    request cells up to ``limit`` all the same, and the other way round."""
    pending = RollupDelta()
    many = RollupDelta()
    for number in range(6):
        many.custom[key(T, "depth", str(number))] = gauge_cell(number, T)
    for route in ("/a", "/b", "/c"):
        many.add(T, route, "GET", 200, 1.0, False, 0, 0)
    assert pending.absorb(many, limit=3, custom_limit=2) == (0, 4)
    assert (len(pending.cells), len(pending.custom), pending.requests) == (3, 2, 3)

    # Request cells at their bound leave custom cells their room.
    more = RollupDelta()
    more.add(T + 5, "/d", "GET", 200, 1.0, False, 0, 0)
    more.custom[key(T + 5, "jobs")] = counter_cell(1)
    assert pending.absorb(more, limit=3, custom_limit=3) == (1, 0)
    assert (len(pending.cells), len(pending.custom), pending.requests) == (3, 3, 3)

    # No room for custom cells: the request cells are taken whole.
    only = RollupDelta()
    only.add(T + 10, "/e", "GET", 200, 1.0, False, 0, 0)
    only.custom[key(T + 10, "jobs")] = counter_cell(1)
    assert pending.absorb(only, limit=10, custom_limit=0) == (0, 1)
    assert (len(pending.cells), len(pending.custom), pending.requests) == (4, 3, 4)


def test_the_two_pending_bounds_are_their_own() -> None:
    assert MAX_PENDING_CELLS == 50_000
    assert MAX_PENDING_CUSTOM_CELLS == 50_000
    # The defaults: absorb bounds each kind by its own constant.
    delta = RollupDelta()
    delta.add(T, "/a", "GET", 200, 1.0, False, 0, 0)
    delta.custom[key(T, "jobs")] = counter_cell(1)
    pending = RollupDelta()
    assert pending.absorb(delta) == (0, 0)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 8), st.integers(0, 8), st.integers(0, 8), st.integers(0, 8), st.integers(0, 4)
)
def test_absorb_refuses_past_each_bound_alone(
    request_cells: int, custom_cells: int, limit: int, custom_limit: int, held: int
) -> None:
    """Whatever the two counts and bounds: request cells fill up to
    ``limit`` and custom cells up to ``custom_limit``, independently; cells
    held already are merged whatever the bounds."""
    pending = _delta_with(min(held, request_cells), min(held, custom_cells))
    pending.delta_id = ""
    before_cells, before_custom = len(pending.cells), len(pending.custom)
    before_requests = pending.requests
    delta = _delta_with(request_cells, custom_cells)
    refused, refused_custom = pending.absorb(delta, limit, custom_limit)
    new_cells = request_cells - before_cells
    new_custom = custom_cells - before_custom
    taken = max(min(new_cells, limit - before_cells), 0)
    taken_custom = max(min(new_custom, custom_limit - before_custom), 0)
    assert len(pending.cells) == before_cells + taken
    assert len(pending.custom) == before_custom + taken_custom
    assert refused_custom == new_custom - taken_custom
    assert refused == sum(
        cell[0] for cell_key, cell in delta.cells.items() if cell_key not in pending.cells
    )
    assert pending.requests == before_requests + delta.requests - refused


def _delta_with(request_cells: int, custom_cells: int) -> RollupDelta:
    delta = RollupDelta()
    for number in range(request_cells):
        for _ in range(number % 3 + 1):
            delta.add(T + 5 * number, f"/r/{number}", "GET", 200, 1.0, False, 0, 0)
    for number in range(custom_cells):
        delta.custom[key(T + 5 * number, "jobs", str(number))] = counter_cell(number + 1)
    delta.metrics = {"jobs": snapshot("jobs", "counter", labels=("n",))}
    delta.delta_id = "abc123"
    return delta


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 7), st.integers(0, 7))
def test_split_delta_halves_add_up_to_the_whole(request_cells: int, custom_cells: int) -> None:
    assume(request_cells + custom_cells >= 2)
    delta = _delta_with(request_cells, custom_cells)
    first, second = split_delta(delta)
    assert (first.delta_id, second.delta_id) == ("abc123.0", "abc123.1")
    assert len(first) >= 1 and len(second) >= 1
    assert abs(len(first) - len(second)) <= 1
    assert len(first) + len(second) == len(delta)
    assert {**first.cells, **second.cells} == delta.cells
    assert not set(first.cells) & set(second.cells)
    assert {**first.custom, **second.custom} == delta.custom
    assert not set(first.custom) & set(second.custom)
    assert first.requests + second.requests == delta.requests
    assert first.requests == sum(cell[0] for cell in first.cells.values())
    assert second.requests == sum(cell[0] for cell in second.cells.values())
    # Each half describes the metrics of its own cells, and only those: a
    # description the store refuses is found with its metric's cells.
    for part in (first, second):
        names = {metric for _, metric, _ in part.custom}
        assert part.metrics == {n: m for n, m in delta.metrics.items() if n in names}


def test_split_delta_of_custom_cells_only() -> None:
    delta = _delta_with(0, 3)
    first, second = split_delta(delta)
    assert (len(first.custom), len(second.custom)) == (1, 2)
    assert first.cells == second.cells == {} and first.requests == second.requests == 0
    again, rest = split_delta(second)
    assert (again.delta_id, rest.delta_id) == ("abc123.1.0", "abc123.1.1")
    assert again.metrics == rest.metrics == delta.metrics


# -- the cells through the spool ------------------------------------------------------------

texts = st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
metric_names = st.sampled_from(["jobs", "queue_depth", "latency_seconds", "a:b"])


@st.composite
def custom_cells(draw: st.DrawFn) -> tuple[CustomKey, CustomCell]:
    bucket = draw(st.integers(0, 10**9)) * 5
    cell_key = (bucket, draw(metric_names), labels_text(draw(st.lists(texts, max_size=3))))
    kind = draw(st.sampled_from(["counter", "gauge", "histogram"]))
    number = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
    if kind == "counter":
        return cell_key, counter_cell(draw(number))
    if kind == "gauge":
        # A sample's span (its bucket), or a merged cell's (any two buckets).
        first = draw(st.just(bucket) | st.integers(0, 10**9).map(lambda n: n * 5))
        last = draw(st.just(first) | st.integers(first // 5, 10**9).map(lambda n: n * 5))
        return cell_key, gauge_cell(draw(number), first, last)
    counts = draw(st.lists(st.integers(0, 2**53), min_size=1, max_size=8))
    return cell_key, histogram_cell(draw(number), counts)


descriptions = st.builds(
    MetricSnapshot,
    metric_names,
    st.sampled_from(["counter", "gauge", "histogram"]),
    texts,
    st.lists(texts, max_size=3).map(tuple),
    st.lists(st.floats(allow_nan=False), max_size=4).map(tuple),
    st.sampled_from(["", "sum", "max", "min"]),
    st.just({}),
    st.just(0),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(custom_cells(), max_size=spool_codec.CHUNK + 10),
    st.dictionaries(metric_names, descriptions, max_size=4),
    st.integers(0, 3),
    texts,
)
def test_custom_cells_come_back_from_the_spool_equal(
    cells: list[tuple[CustomKey, CustomCell]],
    metrics: dict[str, MetricSnapshot],
    request_cells: int,
    delta_id: str,
) -> None:
    delta = _delta_with(request_cells, 0)
    delta.custom = dict(cells)
    delta.metrics = metrics
    delta.delta_id = delta_id
    back = spool_codec.decode(spool_codec.encode(Batch(rollups=delta, batch_id="b")))
    assert back.rollups is not None
    assert (back.rollups.delta_id, back.rollups.requests) == (delta_id, delta.requests)
    assert back.rollups.cells == delta.cells
    assert back.rollups.custom == delta.custom
    assert all(type(cell[TOTAL]) is float for cell in back.rollups.custom.values())
    # The descriptions ride along with the cells (none without cells).
    assert back.rollups.metrics == (
        {description.name: description for description in metrics.values()} if cells else {}
    )


def test_custom_cells_go_in_parts_after_the_request_cells() -> None:
    delta = _delta_with(3, spool_codec.CHUNK * 2 + 1)
    delta.metrics = {"jobs": snapshot("jobs", "counter", "Jobs \x00\ud800.", ("n",))}
    looks: list[int] = []
    payload = spool_codec.encode(Batch(rollups=delta, batch_id="b"), lambda: looks.append(1))
    assert len(looks) == 5  # the header, one part of request cells, three of custom ones
    header = json.loads(part_text(payload, 0))
    assert header["rollups"] == {
        "delta_id": "abc123",
        "requests": delta.requests,
        "cells": 3,
        "custom": spool_codec.CHUNK * 2 + 1,
        "metrics": [["jobs", "counter", "Jobs \x00\ud800.", ["n"], [], ""]],
    }
    looks.clear()
    back = spool_codec.decode(payload, lambda: looks.append(1))
    assert len(looks) == 4
    assert back.rollups is not None
    assert back.rollups.custom == delta.custom and back.rollups.metrics == delta.metrics


def part_text(payload: bytes, index: int) -> bytes:
    """The JSON text of the payload's part ``index``."""
    parts = spool_codec._parts(payload)
    for _ in range(index):
        next(parts)
    return next(parts)


def _payload(parts: list[object]) -> bytes:
    return b"".join(spool_codec._part(part) for part in parts)


HEADER: dict[str, Any] = {
    "format": 1, "batch_id": "b", "request_fields": [], "session_fields": [],
    "requests": 0, "sessions": 0,
    "rollups": {"delta_id": "d", "requests": 0, "cells": 0},
}  # fmt: skip
#: ``[bucket, metric, labels, total, number, low, high, counts, span]``
CUSTOM_ROW = [int(T), "jobs", "[]", 2, 0, None, None, None, None]
GAUGE_ROW = [int(T), "depth", "[]", 3.5, 1, 3.5, 3.5, None, [int(T), int(T)]]
METRICS = [["jobs", "counter", "Jobs.", [], [], ""]]


def with_custom(count: object, metrics: object = METRICS) -> dict[str, Any]:
    return {**HEADER, "rollups": {**HEADER["rollups"], "custom": count, "metrics": metrics}}


def test_a_payload_without_the_custom_keys_decodes() -> None:
    """What an earlier version spooled: no ``custom`` nor ``metrics``."""
    back = spool_codec.decode(_payload([HEADER]))
    assert back.rollups is not None and back.rollups.custom == {} and back.rollups.metrics == {}
    # And what this version writes for a delta without custom cells is the same.
    delta = _delta_with(2, 0)
    payload = spool_codec.encode(Batch(rollups=delta, batch_id="b"))
    assert set(json.loads(part_text(payload, 0))["rollups"]) == {"delta_id", "requests", "cells"}
    decoded = spool_codec.decode(payload).rollups
    assert decoded is not None and decoded.cells == delta.cells and decoded.custom == {}


def test_the_hand_made_custom_payload_is_valid() -> None:
    back = spool_codec.decode(
        _payload([with_custom(3), [CUSTOM_ROW, [int(T) + 5, *CUSTOM_ROW[1:]], GAUGE_ROW]])
    )
    assert back.rollups is not None
    assert back.rollups.custom == {
        key(T, "jobs"): counter_cell(2),
        key(T + 5, "jobs"): counter_cell(2),
        key(T, "depth"): gauge_cell(3.5, T),
    }
    assert back.rollups.metrics == {"jobs": snapshot("jobs", "counter", "Jobs.")}


def test_a_spooled_custom_cell_is_one_row_of_nine() -> None:
    """Its key, total, number, low, high, counts, and span (a gauge's first
    and last 5-second bucket, null for the others)."""
    delta = RollupDelta()
    delta.custom = {
        key(T, "jobs"): counter_cell(2),
        key(T, "depth"): gauge_cell(3.5, T),
        key(T, "latency"): histogram_cell(1.5, [1, 0, 1]),
    }
    delta.metrics = {"jobs": snapshot("jobs", "counter")}
    payload = spool_codec.encode(Batch(rollups=delta, batch_id="b"))
    assert json.loads(part_text(payload, 1)) == [
        CUSTOM_ROW,
        GAUGE_ROW,
        [int(T), "latency", "[]", 1.5, 2, None, None, [1, 0, 1], None],
    ]


@pytest.mark.parametrize(
    "parts",
    [
        [with_custom(1), [CUSTOM_ROW[:-1]]],  # a row too short: the 8 of cells without a span
        [with_custom(1), [GAUGE_ROW[:-1]]],
        [with_custom(1), [[*CUSTOM_ROW, 0]]],  # too long
        [with_custom(1), [{"row": CUSTOM_ROW}]],  # no list
        [with_custom(1), [[*CUSTOM_ROW[:-2], 3, None]]],  # counts that are no list
        [with_custom(1), [[*CUSTOM_ROW[:-2], "12", None]]],  # nor text of digits
        [with_custom(1), [[*CUSTOM_ROW[:-2], ["x"], None]]],  # counts that are no numbers
        [with_custom(1), [[*GAUGE_ROW[:-1], int(T)]]],  # a span that is no list
        [with_custom(1), [[*GAUGE_ROW[:-1], "2"]]],  # nor text
        [with_custom(1), [[*GAUGE_ROW[:-1], {"5": 1}]]],  # nor an object
        [with_custom(1), [[*GAUGE_ROW[:-1], [int(T)]]]],  # one bucket, not two
        [with_custom(1), [[*GAUGE_ROW[:-1], [int(T)] * 3]]],  # three
        [with_custom(1), [[*GAUGE_ROW[:-1], []]]],
        [with_custom(1), [[*GAUGE_ROW[:-1], [1, 2, 2, 2]]]],  # slots, as a version before spooled
        [with_custom(1), [[*GAUGE_ROW[:-1], ["x", int(T)]]]],  # buckets that are no numbers
        [with_custom(1), [[*GAUGE_ROW[:-1], [int(T), None]]]],
        [with_custom(1), [[*GAUGE_ROW[:-1], [[int(T)], int(T)]]]],
        [with_custom(1), [[*GAUGE_ROW[:-1], [int(T), {"b": 1}]]]],
        [with_custom(1), [[*CUSTOM_ROW[:3], "two", *CUSTOM_ROW[4:]]]],  # a total that is no number
        [with_custom(1), [[*CUSTOM_ROW[:3], None, *CUSTOM_ROW[4:]]]],
        [with_custom(1), [["later", *CUSTOM_ROW[1:]]]],  # a bucket that is no number
        [with_custom(1), [[*CUSTOM_ROW[:5], "low", 1.0, None, None]]],
        [with_custom(2), [CUSTOM_ROW]],  # fewer than counted
        [with_custom(2), [CUSTOM_ROW, CUSTOM_ROW]],  # the same key twice: fewer cells
        [with_custom(1), [CUSTOM_ROW, [int(T) + 5, *CUSTOM_ROW[1:]]]],  # more than counted
        [with_custom(1), [CUSTOM_ROW], [CUSTOM_ROW]],  # more parts than counted
        [with_custom(1), []],  # an empty part
        [with_custom(1)],  # no part at all
        [with_custom(-1)],
        [with_custom("one"), [CUSTOM_ROW]],
        [with_custom(1, [["jobs", "counter", "Jobs."]]), [CUSTOM_ROW]],  # a short description
        [with_custom(1, [["jobs", "counter", "Jobs.", 5, [], ""]]), [CUSTOM_ROW]],  # labels no list
        [with_custom(1, [["jobs", "counter", "Jobs.", [], ["x"], ""]]), [CUSTOM_ROW]],
        [with_custom(1, 7), [CUSTOM_ROW]],
    ],
)
def test_a_malformed_custom_part_is_refused_as_such(parts: list[object]) -> None:
    with pytest.raises(SpoolCorrupt):
        spool_codec.decode(_payload(parts))


@pytest.mark.parametrize(
    "span",
    [["5", "10"], [int(T) + 0.5, int(T)], [True, 1]],
)
def test_a_span_of_anything_but_two_ints_is_refused(span: list[Any]) -> None:
    with pytest.raises(SpoolCorrupt):
        spool_codec.decode(_payload([with_custom(1), [[*GAUGE_ROW[:-1], span]]]))


def test_a_spooled_span_comes_back_a_list_of_two_ints() -> None:
    back = spool_codec.decode(
        _payload([with_custom(1), [[*GAUGE_ROW[:-1], [int(T) - 60, int(T) + 55]]]])
    )
    assert back.rollups is not None
    [cell] = back.rollups.custom.values()
    assert cell == gauge_cell(3.5, T - 60, T + 55)
    assert all(type(bucket) is int for bucket in cell[SPAN])
    # Null: a counter's or a histogram's.
    back = spool_codec.decode(_payload([with_custom(1), [CUSTOM_ROW]]))
    assert back.rollups is not None
    assert [cell[SPAN] for cell in back.rollups.custom.values()] == [None]


# -- edges found by testing ----------------------------------------------------------


def test_a_counter_at_infinity_that_does_not_move_gives_no_cell() -> None:
    metrics = registry()
    jobs = metrics.declare("counter", "jobs_total", "Jobs.")
    sampler = CustomSampler(metrics)
    jobs.inc(1e308)
    jobs.inc(1e308)  # the sum is past a float's range: +inf
    first = sampler.take(T)[0]
    assert all(not math.isnan(cell[TOTAL]) for cell in first.values())
    # Unchanged since: nothing to store, and certainly no NaN.
    assert sampler.take(T + 5) == ({}, {})
