"""Several processes' custom metrics added up into one reading.

Each process publishes its :class:`~aegis_mw.core.custom_metrics.MetricSnapshot`
tuple as JSON (:func:`encode`) beside its other figures; the process that
answers a scrape adds the others' to its own (:class:`CustomMerge`). Counters
and histograms add up, a finished process's included; a gauge counts only
while its process lives, combined by the gauge's ``multiprocess_mode`` (sum,
max or min). A metric another process declared differently (another kind,
labels, buckets or mode) is left out of the sum and named in a warning once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from .custom_metrics import KINDS, MetricSnapshot, well_formed

logger = logging.getLogger("aegis_mw.metrics")


def encode(metrics: Iterable[MetricSnapshot], *, live: bool) -> list[dict[str, Any]]:
    """JSON-able data; a stopped process's gauges are left out."""
    return [
        {
            "name": metric.name,
            "kind": metric.kind,
            "help": metric.help,
            "labels": list(metric.labels),
            "bounds": list(metric.bounds),
            "mode": metric.mode,
            "series": [[*key, value] for key, value in metric.series.items()],
            "overflowed": metric.overflowed,
        }
        for metric in metrics
        if live or metric.kind != "gauge"
    ]


#: Largest int a file may hold: readings write larger sums as floats (2**53 and
#: up), and a count of 2**63 would take centuries; far below what would fail a
#: sum or the text exposition.
_LARGEST = 2**63


def _gauge_value(value: Any) -> bool:
    """A JSON number a gauge may hold: an int in range, or any float (NaN too)."""
    return type(value) is float or (type(value) is int and -_LARGEST <= value <= _LARGEST)


def _count(value: Any) -> bool:
    """A JSON number a counter or a histogram may hold: 0 or more, not NaN."""
    return _gauge_value(value) and value >= 0


def decode(data: Any) -> MetricSnapshot | None:
    """One metric of :func:`encode`'s data, or None when it is damaged or foreign
    (its names, labels and buckets are checked by the caller's rules)."""
    if not isinstance(data, dict):
        return None
    kind, labels, bounds = data.get("kind"), data.get("labels"), data.get("bounds")
    series, overflowed = data.get("series"), data.get("overflowed")
    if not (
        kind in KINDS
        and isinstance(data.get("name"), str)
        and isinstance(data.get("help"), str)
        and isinstance(data.get("mode"), str)
        and isinstance(labels, list)
        and all(isinstance(label, str) for label in labels)
        and isinstance(bounds, list)
        and all(type(bound) in (int, float) and abs(bound) < _LARGEST for bound in bounds)
        and type(overflowed) is int
        and 0 <= overflowed <= _LARGEST
        and isinstance(series, list)
    ):
        return None
    width = len(labels)
    number = _gauge_value if kind == "gauge" else _count
    values: dict[tuple[str, ...], Any] = {}
    for row in series:
        if not (
            isinstance(row, list)
            and len(row) == width + 1
            and all(isinstance(text, str) for text in row[:width])
        ):
            return None
        value = row[width]
        if kind == "histogram":
            if not (
                isinstance(value, list)
                and len(value) == len(bounds) + 2
                and all(type(count) is int and 0 <= count <= _LARGEST for count in value[:-1])
                and _count(value[-1])
            ):
                return None
        elif not number(value):
            return None
        values[tuple(row[:width])] = value
    return MetricSnapshot(
        name=data["name"],
        kind=kind,
        help=data["help"],
        labels=tuple(labels),
        bounds=tuple(float(bound) for bound in bounds),
        mode=data["mode"],
        series=values,
        overflowed=overflowed,
    )


def _combine(kind: str, mode: str, mine: Any, theirs: Any) -> Any:
    if kind == "histogram":
        return [a + b for a, b in zip(mine, theirs, strict=True)]
    if mode == "max":
        return max(mine, theirs)
    if mode == "min":
        return min(mine, theirs)
    return mine + theirs


class CustomMerge:
    """Adds processes' custom metrics to a first reading (the answering process's)."""

    def __init__(
        self,
        own: Iterable[MetricSnapshot],
        warned: set[str] | None = None,
        admits: Callable[[MetricSnapshot], bool] = well_formed,
    ) -> None:
        #: Names warned about already (the caller's, kept across merges).
        self._warned = set() if warned is None else warned
        #: Whether a metric read from a file could have been declared here.
        self._admits = admits
        self._metrics: dict[str, MetricSnapshot] = {}
        for metric in own:
            self._metrics[metric.name] = _copy(metric)

    def add(self, data: Any, *, live: bool) -> None:
        """Add one process's encoded metrics; damaged entries are skipped."""
        if not isinstance(data, list):
            return
        for entry in data:
            try:
                self._add(entry, live)
            except Exception:  # whatever a file holds, a scrape never fails on it
                logger.debug("aegis_mw: a custom metric of a snapshot left out", exc_info=True)

    def _add(self, entry: Any, live: bool) -> None:
        metric = decode(entry)
        if metric is None or not self._admits(metric) or (metric.kind == "gauge" and not live):
            return
        mine = self._metrics.get(metric.name)
        if mine is None:
            self._metrics[metric.name] = _copy(metric)
            return
        if not mine.same_shape(metric):
            if metric.name not in self._warned:
                self._warned.add(metric.name)
                logger.warning(
                    "aegis_mw: the custom metric %s is declared differently in another "
                    "process; its figures there are left out",
                    metric.name,
                )
            return
        # Added into a copy, put in place whole: an entry is added entirely or not at all.
        series = dict(mine.series)
        for key, value in metric.series.items():
            known = series.get(key)
            series[key] = (
                (list(value) if metric.kind == "histogram" else value)
                if known is None
                else _combine(mine.kind, mine.mode, known, value)
            )
        self._metrics[metric.name] = replace(
            mine, series=series, overflowed=mine.overflowed + metric.overflowed
        )

    def reading(self) -> tuple[MetricSnapshot, ...]:
        return tuple(metric for _, metric in sorted(self._metrics.items()))


def _copy(metric: MetricSnapshot) -> MetricSnapshot:
    """A copy whose series the merge may add into."""
    series = {
        key: list(value) if metric.kind == "histogram" else value
        for key, value in metric.series.items()
    }
    return replace(metric, series=series)
