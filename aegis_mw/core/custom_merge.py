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
import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from .custom_metrics import GAUGE_MODES, KINDS, LABEL_NAME, METRIC_NAME, MetricSnapshot

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


def _number(value: Any) -> bool:
    return type(value) in (int, float)


def decode(data: Any) -> MetricSnapshot | None:
    """One metric of :func:`encode`'s data, or None when it is damaged or foreign."""
    if not isinstance(data, dict):
        return None
    name, kind, labels, bounds = (
        data.get("name"),
        data.get("kind"),
        data.get("labels"),
        data.get("bounds"),
    )
    mode, series, help_text = data.get("mode"), data.get("series"), data.get("help")
    if not (
        isinstance(name, str)
        and METRIC_NAME.match(name)
        and kind in KINDS
        and isinstance(help_text, str)
        and isinstance(labels, list)
        and all(isinstance(label, str) and LABEL_NAME.match(label) for label in labels)
        and isinstance(bounds, list)
        and all(_number(bound) and math.isfinite(bound) for bound in bounds)
        and (mode in GAUGE_MODES if kind == "gauge" else mode == "")
        and _number(data.get("overflowed"))
        and isinstance(series, list)
    ):
        return None
    width = len(labels)
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
                and all(_number(count) for count in value)
            ):
                return None
        elif not _number(value):
            return None
        values[tuple(row[:width])] = value
    return MetricSnapshot(
        name=name,
        kind=kind,
        help=help_text,
        labels=tuple(labels),
        bounds=tuple(bounds),
        mode=str(mode),
        series=values,
        overflowed=int(data["overflowed"]),
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

    def __init__(self, own: Iterable[MetricSnapshot], warned: set[str] | None = None) -> None:
        #: Names warned about already (the caller's, kept across merges).
        self._warned = set() if warned is None else warned
        self._metrics: dict[str, MetricSnapshot] = {}
        for metric in own:
            self._metrics[metric.name] = _copy(metric)

    def add(self, data: Any, *, live: bool) -> None:
        """Add one process's encoded metrics; damaged entries are skipped."""
        if not isinstance(data, list):
            return
        for entry in data:
            metric = decode(entry)
            if metric is None or (metric.kind == "gauge" and not live):
                continue
            mine = self._metrics.get(metric.name)
            if mine is None:
                self._metrics[metric.name] = _copy(metric)
                continue
            if not mine.same_shape(metric):
                if metric.name not in self._warned:
                    self._warned.add(metric.name)
                    logger.warning(
                        "aegis_mw: the custom metric %s is declared differently in another "
                        "process; its figures there are left out",
                        metric.name,
                    )
                continue
            series = mine.series
            for key, value in metric.series.items():
                known = series.get(key)
                series[key] = (
                    (list(value) if metric.kind == "histogram" else value)
                    if known is None
                    else _combine(mine.kind, mine.mode, known, value)
                )
            self._metrics[metric.name] = replace(
                mine, overflowed=mine.overflowed + metric.overflowed
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
