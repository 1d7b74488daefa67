"""Log-spaced latency buckets: bounded relative error, monotonic, mergeable.

Percentiles are compared with exact order statistics: the value of rank
``max(1, ceil(q * n))`` in the sorted sample, the definition the module
documents.
"""

from __future__ import annotations

import importlib.util
import math
import random
from collections.abc import Iterable, Sequence
from itertools import pairwise

import pytest

from aegis_mw.core import histogram
from aegis_mw.core.histogram import COUNT, GROWTH, HIGH_MS, LOW_MS, bucket_index, bucket_value

#: The bound the module promises: half a bucket in log space.
MAX_ERROR = math.sqrt(GROWTH) - 1
QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


def relative_error(reported: float, exact: float) -> float:
    return abs(reported - exact) / exact


def histogram_of(values: Iterable[float]) -> list[int]:
    counts = [0] * COUNT
    for value in values:
        counts[bucket_index(value)] += 1
    return counts


def exact_quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def sample_values() -> list[float]:
    """Many durations over 1e-2..1e6 ms: a dense log grid, bucket edges and their neighbours,
    and random log-uniform draws.
    """
    values = [LOW_MS * 1.0007**k for k in range(int(math.log(HIGH_MS / LOW_MS) / math.log(1.0007)))]
    for k in range(COUNT):
        edge = LOW_MS * GROWTH**k
        if edge <= HIGH_MS:
            values += [edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf)]
    rng = random.Random(20240611)
    values += [10 ** rng.uniform(-2, 6) for _ in range(20_000)]
    values += [LOW_MS, HIGH_MS, 1.0, 10.0, 100.0, 1000.0]
    return [v for v in values if LOW_MS <= v <= HIGH_MS]


def test_the_error_bound_is_about_two_percent() -> None:
    """The geometry gives a worst case just under 2%."""
    assert MAX_ERROR < 0.02
    assert math.ceil(math.log(HIGH_MS / LOW_MS) / math.log(GROWTH)) + 2 == COUNT


def test_relative_error_at_most_two_percent() -> None:
    """Every duration from 1e-2 to 1e6 ms is reported within 2% of itself."""
    values = sample_values()
    assert len(values) > 30_000
    worst = max(relative_error(bucket_value(bucket_index(v)), v) for v in values)
    assert worst <= MAX_ERROR * (1 + 1e-9)
    assert worst <= 0.02


def test_bucket_indices_are_monotonic_and_in_range() -> None:
    """Larger durations never land in a lower bucket; indices stay within the histogram."""
    values = sorted(sample_values())
    indices = [bucket_index(v) for v in values]
    assert all(a <= b for a, b in pairwise(indices))
    assert indices[0] == 0
    assert max(indices) <= COUNT - 1
    # Every bucket between the first and the one holding HIGH_MS is used.
    assert set(range(indices[-1] + 1)) <= set(indices)


def test_bucket_values_increase_and_round_trip() -> None:
    """Each bucket's reported value lies in that bucket, and values grow with the index."""
    reported = [bucket_value(i) for i in range(COUNT)]
    assert all(a < b for a, b in pairwise(reported))
    assert [bucket_index(value) for value in reported] == list(range(COUNT))


def test_bucket_edges() -> None:
    """Bucket 0 holds everything up to LOW_MS (zero and negative durations included);
    anything beyond the top lands in the last bucket.
    """
    assert bucket_index(0.0) == 0
    assert bucket_index(-5.0) == 0
    assert bucket_index(LOW_MS) == 0
    assert bucket_index(math.nextafter(LOW_MS, 1.0)) == 1
    assert bucket_value(0) == LOW_MS
    assert bucket_index(1e12) == COUNT - 1
    assert bucket_index(HIGH_MS) < COUNT - 1


def test_empty_histogram_gives_none() -> None:
    """An empty histogram has no percentiles: one None per quantile asked."""
    assert histogram.percentiles([0] * COUNT, (0.5, 0.95, 0.99)) == [None, None, None]
    assert histogram.percentiles([0] * COUNT, ()) == []


def check_percentiles(values: Sequence[float]) -> None:
    reported = histogram.percentiles(histogram_of(values), QUANTILES)
    for q, value in zip(QUANTILES, reported, strict=True):
        exact = exact_quantile(values, q)
        assert value is not None, q
        assert relative_error(value, exact) <= MAX_ERROR * (1 + 1e-9), (q, value, exact)
        # More precisely: the reported value is the midpoint of the exact one's bucket.
        assert value == bucket_value(bucket_index(exact)), q


def test_percentiles_of_an_evenly_spaced_sample() -> None:
    """1, 2, ... 1000 ms: each percentile within 2% of the exact order statistic."""
    values = [float(v) for v in range(1, 1001)]
    check_percentiles(values)
    p50, p95, p99 = histogram.percentiles(histogram_of(values), (0.5, 0.95, 0.99))
    assert p50 == pytest.approx(500, rel=0.02)
    assert p95 == pytest.approx(950, rel=0.02)
    assert p99 == pytest.approx(990, rel=0.02)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_of_a_uniform_sample(seed: int) -> None:
    """Random uniform durations: every percentile within 2% of the exact one."""
    rng = random.Random(seed)
    check_percentiles([rng.uniform(0.05, 5000.0) for _ in range(5000)])


def test_percentiles_of_a_two_point_distribution() -> None:
    """90% at 10 ms and 10% at 1000 ms: the percentiles jump exactly at rank 900."""
    values = [10.0] * 900 + [1000.0] * 100
    check_percentiles(values)
    p50, p90, p901, p99 = histogram.percentiles(histogram_of(values), (0.5, 0.9, 0.901, 0.99))
    assert p50 == pytest.approx(10.0, rel=0.02)
    assert p90 == pytest.approx(10.0, rel=0.02)
    assert p901 == pytest.approx(1000.0, rel=0.02)
    assert p99 == pytest.approx(1000.0, rel=0.02)


@pytest.mark.parametrize("value", [0.01, 0.37, 42.0, 999.5, 250_000.0])
def test_percentiles_of_a_single_value(value: float) -> None:
    """One repeated value: every percentile is that value within 2%."""
    for n in (1, 7):
        reported = histogram.percentiles(histogram_of([value] * n), QUANTILES)
        assert reported == [bucket_value(bucket_index(value))] * len(QUANTILES)
        assert all(relative_error(r, value) <= MAX_ERROR for r in reported if r is not None)


def test_quantiles_come_back_in_the_order_asked() -> None:
    """Results follow the order of the quantiles requested, not their sorted order."""
    counts = histogram_of(float(v) for v in range(1, 101))
    assert histogram.percentiles(counts, (0.99, 0.01, 0.5)) == [
        bucket_value(bucket_index(99.0)),
        bucket_value(bucket_index(1.0)),
        bucket_value(bucket_index(50.0)),
    ]
    assert bucket_value(bucket_index(1.0)) < bucket_value(bucket_index(50.0))


def test_merging_by_adding_counts_equals_the_union() -> None:
    """Two histograms added bucket by bucket equal the histogram of both samples."""
    rng = random.Random(7)
    first = [rng.lognormvariate(3, 1) for _ in range(3000)]
    second = [rng.uniform(100, 2000) for _ in range(1000)]
    merged = [a + b for a, b in zip(histogram_of(first), histogram_of(second), strict=True)]
    assert merged == histogram_of(first + second)
    assert histogram.percentiles(merged, QUANTILES) == histogram.percentiles(
        histogram_of(first + second), QUANTILES
    )
    check_percentiles(first + second)


if importlib.util.find_spec("hypothesis") is not None:  # optional: not a dev dependency
    from hypothesis import given
    from hypothesis import strategies as st

    @given(st.floats(min_value=LOW_MS, max_value=HIGH_MS, allow_nan=False))
    def test_relative_error_property(duration_ms: float) -> None:
        """Any duration in range is reported within 2% of itself (property-based)."""
        assert relative_error(bucket_value(bucket_index(duration_ms)), duration_ms) <= 0.02

    @given(st.lists(st.floats(min_value=LOW_MS, max_value=HIGH_MS), min_size=1, max_size=300))
    def test_percentiles_property(values: list[float]) -> None:
        """Any sample's percentiles are its exact order statistics within 2% (property-based)."""
        check_percentiles(values)
