"""The app's own metrics over a range: ``GET {api_path}/custom-metric-history``.

Reads the stored changes (see :mod:`aegis_mw.core.custom_history`) of one
metric over the same ranges and steps as the request history
(:mod:`.ranges`), all label sets added up, or one series per value of the
labels named in ``by``. Per point:

- counter: ``increase`` and ``rate`` (per second);
- histogram: ``count``, ``rate``, ``sum``, ``avg`` and ``p50``/``p95``/``p99``,
  interpolated within the declared buckets as Prometheus'
  ``histogram_quantile`` does (the +Inf bucket answers its lower bound);
- gauge: ``value``, the time average of the processes' sum over the stored
  5-second samples (``multiprocess_mode="sum"``), or the greatest (``max``)
  or least (``min``) sample; ``low`` and ``high`` are the least and greatest
  sample of any process. Null where nothing was sampled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..core.custom_history import FINEST, CustomRow
from ..core.custom_metrics import MetricSnapshot
from ..core.record import isoformat
from .ranges import QueryError, TimeRange

#: Series answered at most (``limit``), the largest first.
MAX_SERIES = 100
#: Stored rows one answer reads at most (a few tenths of a second of
#: Python): a longer range of a metric with more label sets is a 400.
MAX_ROWS = 100_000
QUANTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
Reader = Callable[[str, int, int, int, int], list[CustomRow]]


class Point:
    """Rows of one series and step added up."""

    __slots__ = ("count", "counts", "high", "low", "spans", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.low: float | None = None
        self.high: float | None = None
        self.counts: list[int] = []
        #: A gauge's stored buckets, (resolution, bucket), and the first and
        #: last 5-second bucket sampled in each (of every label set).
        self.spans: dict[tuple[int, int], list[int]] = {}

    def add(self, row: CustomRow, level: int) -> None:
        self.total += row.total
        self.count += row.number
        if row.low is not None:
            low, high = float(row.low), float(row.high if row.high is not None else row.low)
            self.low = low if self.low is None else min(self.low, low)
            self.high = high if self.high is None else max(self.high, high)
            first = row.bucket if row.first is None else row.first
            last = first if row.last is None else row.last
            span = self.spans.get((level, row.bucket))
            if span is None:
                self.spans[(level, row.bucket)] = [first, last]
            else:
                span[0], span[1] = min(span[0], first), max(span[1], last)
        if row.counts:
            if len(self.counts) < len(row.counts):
                self.counts.extend([0] * (len(row.counts) - len(self.counts)))
            for index, number in enumerate(row.counts):
                self.counts[index] += number

    def sampled(self) -> int:
        """The 5-second buckets a gauge's samples span, first to last, in
        each stored bucket."""
        return sum((last - first) // FINEST + 1 for first, last in self.spans.values())


#: A point with nothing in it (never added to: shared by every empty point).
EMPTY = Point()


def fits(metric: MetricSnapshot, row: CustomRow) -> bool:
    """Whether a stored row is of the metric's kind (and buckets): a name
    declared again as another kind leaves rows of the other behind."""
    if metric.kind == "gauge":
        return row.low is not None
    if metric.kind == "histogram":
        return row.counts is not None and len(row.counts) == len(metric.bounds) + 1
    return row.low is None and row.counts is None


def find_metric(
    name: str, stored: Sequence[MetricSnapshot], declared: Sequence[MetricSnapshot]
) -> MetricSnapshot:
    """The metric named ``name`` (a counter also by its name with ``_total``),
    as this process declared it, else as the history last stored it."""
    for metrics in (declared, stored):
        for metric in metrics:
            if name == metric.name or (metric.kind == "counter" and name == f"{metric.name}_total"):
                return metric
    raise QueryError(
        "name", f"no custom metric named {name!r} is declared or stored", "unknown_metric"
    )


def by_labels(metric: MetricSnapshot, text: str | None) -> tuple[str, ...]:
    """The label names of ``by`` (a comma list), each one of the metric's."""
    if not text:
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    for label in names:
        if label not in metric.labels:
            known = ", ".join(metric.labels) or "none"
            raise QueryError(
                "by", f"{label!r} is not a label of {metric.name} (its labels: {known})"
            )
    return names


def custom_history(
    read: Reader, window: TimeRange, metric: MetricSnapshot, by: tuple[str, ...], limit: int
) -> dict[str, Any]:
    """The answer for one metric over ``window``."""
    picks = [metric.labels.index(label) for label in by]
    # Points by index, made as rows come: a metric of many label sets costs
    # the rows read, not label sets times points.
    series: dict[tuple[str, ...], dict[int, Point]] = {}
    left = MAX_ROWS
    for level, start, end in window.segments():
        rows = read(metric.name, level, start, end, left + 1)
        left -= len(rows)
        if left < 0:
            raise QueryError(
                "range",
                f"the range holds more than {MAX_ROWS:,} stored changes of {metric.name} "
                "(its label sets times the stored buckets read): ask for a shorter range, "
                "or a longer one (read from coarser buckets)",
                "too_many_rows",
            )
        for row in rows:
            values = json.loads(row.labels)
            if len(values) != len(metric.labels) or not fits(metric, row):
                continue  # stored under another declaration of the name
            key = tuple(str(values[index]) for index in picks)
            points = series.setdefault(key, {})
            index = (row.bucket - window.start) // window.step
            point = points.get(index)
            if point is None:
                point = points[index] = Point()
            point.add(row, level)
    ranked = sorted(series.items(), key=lambda item: (-_weight(metric, item[1]), item[0]))
    stamps = [isoformat(window.start + i * window.step) for i in range(window.points)]
    return {
        "name": metric.name,
        "kind": metric.kind,
        "help": metric.help,
        "labels": list(metric.labels),
        **({"buckets": list(metric.bounds)} if metric.kind == "histogram" else {}),
        **({"multiprocess_mode": metric.mode} if metric.kind == "gauge" else {}),
        "by": list(by),
        "range": {
            "from": isoformat(window.start),
            "to": isoformat(window.end),
            "step_seconds": window.step,
        },
        "series": [
            {
                "labels": dict(zip(by, key, strict=True)),
                "points": [
                    {"timestamp": stamp, **figures(metric, points.get(index, EMPTY), window.step)}
                    for index, stamp in enumerate(stamps)
                ],
            }
            for key, points in ranked[:limit]
        ],
        "left_out": max(len(ranked) - limit, 0),
    }


def _weight(metric: MetricSnapshot, points: dict[int, Point]) -> float:
    """What orders the series: the increase, the count, the highest sample."""
    if metric.kind == "gauge":
        return max((abs(p.high or 0.0) for p in points.values()), default=0.0)
    if metric.kind == "histogram":
        return float(sum(p.count for p in points.values()))
    return sum(p.total for p in points.values())


def _round(value: float | None) -> float | None:
    """Six decimals; None for what JSON cannot hold (a sum past a float's range)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


def figures(metric: MetricSnapshot, point: Point, step: float) -> dict[str, Any]:
    """One point's figures for ``metric``'s kind, over ``step`` seconds."""
    if metric.kind == "counter":
        return {"increase": _round(point.total), "rate": _round(point.total / step)}
    if metric.kind == "gauge":
        sampled = point.sampled()
        if not sampled:
            return {"value": None, "low": None, "high": None}
        # The samples of every process added up, over the 5-second buckets
        # sampled: the average of the processes' sum (see custom_history).
        value = {"max": point.high, "min": point.low}.get(metric.mode, point.total / sampled)
        return {"value": _round(value), "low": _round(point.low), "high": _round(point.high)}
    figures: dict[str, Any] = {
        "count": point.count,
        "rate": _round(point.count / step),
        "sum": _round(point.total),
        "avg": _round(point.total / point.count) if point.count else None,
    }
    for label, quantile in QUANTILES:
        figures[label] = bucket_quantile(quantile, metric.bounds, point.counts)
    return figures


def bucket_quantile(
    quantile: float, bounds: Sequence[float], counts: Sequence[int]
) -> float | None:
    """``quantile`` of a histogram of ``counts`` per bucket (``bounds``, then
    +Inf), interpolated linearly within its bucket from the one below's
    bound (0 for the first); the +Inf bucket answers the highest bound."""
    total = sum(counts)
    if not total:
        return None
    rank = quantile * total
    seen = 0
    for index, number in enumerate(counts):
        if number and seen + number >= rank:
            if index >= len(bounds):
                return _round(bounds[-1]) if bounds else None
            lower = bounds[index - 1] if index else 0.0
            if index == 0 and bounds[0] <= 0:
                return _round(bounds[0])
            return _round(lower + (bounds[index] - lower) * (rank - seen) / number)
        seen += number
    return _round(bounds[-1]) if bounds else None
