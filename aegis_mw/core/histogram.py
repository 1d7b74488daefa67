"""Log-spaced latency buckets, shared by the realtime ring and later rollups.

Bucket ``i >= 1`` holds durations in ``(LOW_MS * GROWTH**(i-1), LOW_MS * GROWTH**i]``
and bucket 0 everything up to ``LOW_MS``. Reporting a bucket's geometric
midpoint keeps the relative error of any percentile under
``sqrt(GROWTH) - 1`` (about 2%), and two histograms merge by adding counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil, log

GROWTH = 1.04
LOW_MS = 0.01
HIGH_MS = 1_000_000.0  # about 17 minutes; anything slower lands in the last bucket
COUNT = ceil(log(HIGH_MS / LOW_MS) / log(GROWTH)) + 2

_SCALE = 1.0 / log(GROWTH)
_SHIFT = -log(LOW_MS) * _SCALE
_LAST = COUNT - 1
#: What the compiled pipeline loops need to place a duration as
#: :func:`bucket_index` does (``aegis_mw/_hotpath_c/``): the same numbers.
PLACEMENT = (LOW_MS, _SCALE, _SHIFT, _LAST)


def bucket_index(duration_ms: float) -> int:
    """Index of the bucket holding ``duration_ms`` (O(1), no search)."""
    if duration_ms <= LOW_MS:
        return 0
    index = int(log(duration_ms) * _SCALE + _SHIFT) + 1
    return index if index < _LAST else _LAST


def bucket_value(index: int) -> float:
    """The value reported for a bucket: its geometric midpoint."""
    if index <= 0:
        return LOW_MS
    return float(LOW_MS * GROWTH ** (index - 0.5))


def percentiles(
    counts: Sequence[int],
    quantiles: Sequence[float],
    *,
    lowest: float | None = None,
    highest: float | None = None,
) -> list[float | None]:
    """Read several quantiles (0..1) from one histogram in a single pass.

    Returns ``None`` for each quantile when the histogram is empty. With the
    observed ``lowest`` and ``highest`` durations given, each value is kept
    within them: a bucket's midpoint can lie past every duration in it (all
    requests just above the bucket's lower edge), and a p99 above the max
    reads as a bug. Clamping only moves a value closer to the truth, since
    every true quantile lies between the min and the max.
    """
    results = _read(counts, quantiles)
    if lowest is None and highest is None:
        return results
    low = float("-inf") if lowest is None else lowest
    high = float("inf") if highest is None else highest
    return [None if value is None else min(max(value, low), high) for value in results]


def _read(counts: Sequence[int], quantiles: Sequence[float]) -> list[float | None]:
    total = sum(counts)
    if total == 0:
        return [None for _ in quantiles]
    # The rank of quantile q is ceil(q * total), at least 1: the value below
    # which a fraction q of the observations fall.
    ranks = sorted((max(1, ceil(q * total)), position) for position, q in enumerate(quantiles))
    results: list[float | None] = [None] * len(quantiles)
    seen = 0
    pending = iter(ranks)
    rank, position = next(pending)
    for index, count in enumerate(counts):
        if not count:
            continue
        seen += count
        while seen >= rank:
            results[position] = bucket_value(index)
            step = next(pending, None)
            if step is None:
                return results
            rank, position = step
    return results
