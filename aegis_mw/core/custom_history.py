"""The app's own metrics in the stored history: what changed, 5 seconds at a time.

Once per 5-second bucket (:data:`.rollup.FINEST`) the flusher compares its
process's custom metrics (:mod:`.custom_metrics`) with what it sampled last,
and the difference rides to the history sinks in the request rollups' delta
(:class:`.rollup.RollupDelta`): the same id, the same transaction, added
once. Each sample describes the bucket that just ended; a forced flush (and
shutdown) samples at once, into the bucket now is in.

A cell is ``[total, count, low, high, counts, span]``, keyed by ``(bucket,
metric, labels)`` (``labels``: the label values as a JSON array):

- counter: ``total`` is the increase;
- histogram: ``total`` the sum of the values observed, ``count`` how many,
  ``counts`` how many per bucket (the declared bounds, then +Inf);
- gauge: one sample per process, series and 5-second bucket: ``total``,
  ``low`` and ``high`` the value, ``count`` 1, and ``span`` the first and
  the last 5-second bucket sampled (``[bucket, bucket]`` for one sample).
  When the process skipped buckets since its last sample (a
  ``flush_interval`` over 5 seconds, a flusher held up by a slow store),
  each series' value before is that of the buckets skipped, a sample of
  each, up to :data:`HOLD_BUCKETS` (as Prometheus holds a scraped gauge
  between scrapes), so none of them reads as zero or as a gap.

``total`` and ``count`` add up, ``low`` and ``high`` take the least and the
greatest, ``span`` the earliest first and the latest last, so cells merge
across processes and resolutions the way request rollups do, and the stores
add them with one upsert. A stored gauge's ``total`` over the 5-second
buckets its ``span`` covers is the time average of the processes' sum from
its first sample to its last in that bucket of the resolution: a process
not running (one restarted, replaced, not started yet) or a series not yet
recorded counts nothing, and a bucket sampled in part (the app started or
stopped in it) is averaged over the time it was sampled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from .custom_metrics import CustomMetrics, MetricSnapshot
from .gil_slices import Slices

FINEST = 5
TOTAL, COUNT, LOW, HIGH, COUNTS, SPAN = 0, 1, 2, 3, 4, 5

CustomKey = tuple[int, str, str]
CustomCell = list[Any]


def labels_key(labels: str) -> str:
    """A stored row's key for its label text: a fixed-size digest, so a long
    label value never makes a key too large for an index (PostgreSQL's
    B-tree rows hold at most about 2.7 kB)."""
    return hashlib.blake2b(labels.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def labels_text(values: Iterable[str]) -> str:
    """Label values as stored: a compact JSON array (``["eu"]``; ``[]``),
    ASCII, so no store refuses a character of it (a NUL, a lone surrogate)."""
    return json.dumps(list(values), separators=(",", ":"))


def merge_custom(into: CustomCell, other: CustomCell) -> None:
    """Add ``other`` into ``into``."""
    into[TOTAL] += other[TOTAL]
    into[COUNT] += other[COUNT]
    if other[LOW] is not None:
        into[LOW] = other[LOW] if into[LOW] is None else min(into[LOW], other[LOW])
        into[HIGH] = other[HIGH] if into[HIGH] is None else max(into[HIGH], other[HIGH])
    if other[COUNTS] is not None:
        into[COUNTS] = add_counts(into[COUNTS], other[COUNTS])
    span = other[SPAN]
    if span is not None:
        held = into[SPAN]
        into[SPAN] = list(span) if held is None else [min(held[0], span[0]), max(held[1], span[1])]


def add_counts(left: list[int] | None, right: list[int] | None) -> list[int]:
    """Two lists of bucket counts added (the longer one's tail kept)."""
    if not left:
        return list(right or ())
    if not right:
        return list(left)
    short, long = (left, right) if len(left) <= len(right) else (right, left)
    out = list(long)
    for index, count in enumerate(short):
        out[index] += count
    return out


def copy_custom(cell: CustomCell) -> CustomCell:
    copied = cell[:COUNTS]
    copied.append(None if cell[COUNTS] is None else list(cell[COUNTS]))
    copied.append(None if cell[SPAN] is None else list(cell[SPAN]))
    return copied


#: The most 5-second buckets skipped that a gauge's value before fills: 5
#: minutes, the time Prometheus holds a gauge's last sample (its lookback
#: delta). The buckets of a longer gap (the flusher stalled) before those
#: count as the process's absence.
HOLD_BUCKETS = 60
#: The most cells those fill in one sample, all series together: after a
#: stall, many series hold fewer buckets rather than crowd the pending
#: bound (``MAX_PENDING_CUSTOM_CELLS``).
MAX_HELD_CELLS = 10_000


class CustomSampler:
    """The flusher's view of its process's custom metrics: what it sampled
    last, to take differences from. Not thread-safe: the flusher's thread
    alone calls :meth:`take`."""

    def __init__(self, metrics: CustomMetrics) -> None:
        self._metrics = metrics
        #: (name, shape) -> label values -> the figure sampled last.
        self._last: dict[tuple[Any, ...], dict[tuple[str, ...], Any]] = {}
        self._bucket: int | None = None
        #: The bucket whose gauge sample was taken: one per process and bucket.
        self._gauges_for: int | None = None

    def reset_after_fork(self) -> None:
        """A forked child's metrics start at zero, and so do its samples."""
        self._last = {}
        self._bucket = self._gauges_for = None

    def due(self, now: float) -> bool:
        """Whether ``now`` is in another bucket than the last sample's."""
        return int(now // FINEST) * FINEST != self._bucket

    def take(
        self, now: float, *, forced: bool = False
    ) -> tuple[dict[CustomKey, CustomCell], dict[str, MetricSnapshot]]:
        """The changes since the last sample, as cells, and the metrics they
        are of (their figures left out). Nothing when a sample of this bucket
        was taken already, unless ``forced``."""
        bucket = int(now // FINEST) * FINEST
        if bucket == self._bucket and not forced:
            return {}, {}
        # A sample at a bucket's first flush describes the bucket that ended;
        # a forced one (and the very first), the bucket now is in. (A forced
        # flush just past a boundary, before the flusher's own sample, skips
        # the ended bucket: the gauges' values before stand for it.)
        target = bucket if forced or self._bucket is None else bucket - FINEST
        self._bucket = bucket
        gauges = self._gauges_for != target
        skipped = 0
        if gauges:
            if self._gauges_for is not None:
                skipped = max(0, min((target - self._gauges_for) // FINEST - 1, HOLD_BUCKETS))
            self._gauges_for = target
        read = self._metrics.read()
        if skipped:
            series = sum(len(m.series) for m in read if m.kind == "gauge")
            skipped = min(skipped, MAX_HELD_CELLS // max(series, 1))
        cells: dict[CustomKey, CustomCell] = {}
        described: dict[str, MetricSnapshot] = {}
        for metric in read:
            shape = (metric.name, metric.kind, metric.labels, metric.bounds, metric.mode)
            last = self._last.setdefault(shape, {})
            found = False
            for key, value in metric.series.items():
                before = last.get(key)
                cell = _change(metric.kind, value, before, target if gauges else None)
                last[key] = value
                if cell is not None:
                    labels = labels_text(key)
                    cells[(target, metric.name, labels)] = cell
                    found = True
                    if skipped and metric.kind == "gauge" and before is not None:
                        _hold(cells, before, target, skipped, metric.name, labels)
            if found:
                described[metric.name] = dataclasses.replace(metric, series={}, overflowed=0)
        return cells, described


def _hold(
    cells: dict[CustomKey, CustomCell], value: float, target: int, skipped: int, name: str,
    labels: str,
) -> None:  # fmt: skip
    """A gauge series' value before, as the sample of each of the ``skipped``
    buckets just before ``target`` (a series new since then holds nothing,
    nor one whose value was not finite)."""
    if not math.isfinite(value):
        return
    for bucket in range(target - skipped * FINEST, target, FINEST):
        cells[(bucket, name, labels)] = [value, 1, value, value, None, [bucket, bucket]]


def _change(kind: str, value: Any, before: Any, sampled: int | None) -> CustomCell | None:
    """One series' cell, or None when it has nothing to add (``sampled``: the
    bucket a gauge's sample is of, None when gauges are not sampled now)."""
    if kind == "gauge":
        if sampled is None or not math.isfinite(value):
            return None  # a NaN or infinite gauge has no average: not stored
        return [value, 1, value, value, None, [sampled, sampled]]
    if kind == "counter":
        change = value if before is None or value < before else value - before
        if not math.isfinite(change):
            return None  # past a float's range (inf - inf): nothing more is stored
        return [change, 0, None, None, None, None] if change else None
    counts, total = value[:-1], value[-1]
    if before is None or any(now < then for now, then in zip(counts, before, strict=False)):
        added, added_sum = list(counts), total  # new, or reset (a fork's child)
    else:
        added = [now - then for now, then in zip(counts, before, strict=False)]
        added_sum = total - before[-1]
    observed = sum(added)
    if not observed:
        return None
    if not math.isfinite(added_sum):
        added_sum = 0.0  # +Inf was observed: its sum is kept no more
    return [added_sum, observed, None, None, added, None]


def expand_custom(
    cells: dict[CustomKey, CustomCell], levels: Sequence[int]
) -> dict[tuple[int, int, str, str], CustomCell]:
    """Cells at every resolution: ``(level, bucket, metric, labels)``."""
    out: dict[tuple[int, int, str, str], CustomCell] = {}
    for (bucket, metric, labels), cell in cells.items():
        for level in levels:
            key = (level, bucket - bucket % level, metric, labels)
            mine = out.get(key)
            if mine is None:
                out[key] = copy_custom(cell)
            else:
                merge_custom(mine, cell)
    return out


def counts_json(counts: list[int]) -> str:
    return "[" + ",".join(map(str, counts)) + "]"


def counts_array(counts: list[int]) -> str:
    """PostgreSQL array text, cast to ``bigint[]`` by the statement."""
    return "{" + ",".join(map(str, counts)) + "}"


def add_counts_text(left: str | None, right: str | None) -> str | None:
    """Two stored JSON lists of counts added; SQLite's upsert calls it."""
    if left is None or right is None:
        return left if right is None else right
    return counts_json(add_counts(json.loads(left), json.loads(right)))


def custom_rows(
    cells: dict[tuple[int, int, str, str], CustomCell],
    encode: Callable[[list[int]], str] = counts_json,
    slices: Slices | None = None,
) -> Iterator[tuple[Any, ...]]:
    """Parameter rows ``(level, bucket, metric, labels, labels_key, total,
    count, low, high, first, last, counts)``, sorted by key (writers lock
    rows in one order),
    the counts as ``encode`` gives them (None for counters and gauges). Made as
    ``executemany`` takes them; with ``slices``, the writing thread pauses
    when its slice is spent (see :mod:`.gil_slices`)."""
    for key, cell in sorted(cells.items()):
        counts = cell[COUNTS]
        span = cell[SPAN] or (None, None)
        yield (
            *key, labels_key(key[3]), *cell[:COUNTS], *span,
            None if counts is None else encode(counts),
        )  # fmt: skip
        if slices is not None:
            slices.check()


def describe(metric: MetricSnapshot, at: float) -> tuple[Any, ...]:
    """A metric's stored description: name, kind, help (a JSON string, so no
    store refuses a character of it), labels and bounds (JSON arrays), mode,
    and when it was written."""
    return (
        metric.name,
        metric.kind,
        json.dumps(metric.help),
        json.dumps(list(metric.labels)),
        json.dumps(list(metric.bounds)),
        metric.mode,
        at,
    )


def stored_metric(row: tuple[Any, ...]) -> MetricSnapshot:
    """A :func:`describe` row read back (figures empty)."""
    name, kind, help_text, labels, bounds, mode = row
    return MetricSnapshot(
        str(name), str(kind), str(json.loads(help_text)), tuple(json.loads(labels)),
        tuple(float(bound) for bound in json.loads(bounds)), str(mode), {}, 0,
    )  # fmt: skip


class CustomRow(NamedTuple):
    """One stored cell of a metric, as sinks give it back."""

    bucket: int
    labels: str  # the label values, a JSON array
    total: float
    #: A histogram's observations, a gauge's samples (0 for a counter).
    number: int
    low: float | None
    high: float | None
    counts: list[int] | None
    #: A gauge's first and last 5-second bucket sampled (None for the others).
    first: int | None = None
    last: int | None = None


def custom_row(row: tuple[Any, ...]) -> CustomRow:
    """A database row read back: the counts from JSON text (SQLite) or an array."""
    counts = row[6]
    if isinstance(counts, str):
        counts = json.loads(counts)
    first = None if row[7] is None else int(row[7])
    last = None if row[8] is None else int(row[8])
    return CustomRow(
        int(row[0]), row[1], float(row[2]), int(row[3]), row[4], row[5], counts, first, last
    )


def custom_parameters(
    delta: Any,
    encode: Callable[[list[int]], str] = counts_json,
    slices: Slices | None = None,
) -> tuple[list[tuple[Any, ...]], Iterator[tuple[Any, ...]]]:
    """A delta's metric descriptions and its custom rows at every stored
    resolution (:data:`.rollup.LEVELS`), as a sink's upserts take them."""
    from .rollup import LEVELS

    now = time.time()
    described = [describe(metric, now) for _, metric in sorted(delta.metrics.items())]
    expanded = expand_custom(delta.custom, LEVELS)
    return described, custom_rows(expanded, encode, slices)
