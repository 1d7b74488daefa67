"""The figures alert rules compare: one window of the stored rollups.

Rules read the rollups every worker and host of the app writes to the same
store (see :mod:`aegis_mw.core.rollup`), so an evaluation sees the whole app,
not the process it runs in. A window ends at the last bucket old enough to
be complete (``settle`` seconds: the flushers write rollups every few
seconds) and reaches back ``rule.window``; ratios and percentiles are
computed from the summed counts and the merged latency histogram, never
averaged across buckets or routes.

Reads are shared: rules with the same window, resolution and kind of rows
(per route or totals) cost one query per evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core import histogram
from ..core.rollup import RollupRow
from .rules import AlertRule

#: Seconds a bucket is left to settle before a window includes it.
SETTLE_SECONDS = 10.0

#: ``(("route", "/items/{id}"),)``: the group labels of one alert instance.
Group = tuple[tuple[str, str], ...]


class RollupReader(Protocol):
    """What the figures need of a sink (``HistorySource.read_rollups``)."""

    def read_rollups(
        self, resolution: int, start: int, end: int, *, by_route: bool
    ) -> list[RollupRow]: ...


@dataclass
class WindowFigures:
    """Sums over one window for one alert instance's group."""

    seconds: float
    requests: int = 0
    errors: int = 0
    rate_limited: int = 0
    #: Requests per status class, 1xx to 5xx.
    classes: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])
    #: Counts per :mod:`aegis_mw.core.histogram` bucket.
    latency: list[int] = field(default_factory=lambda: [0] * histogram.COUNT)
    duration_min: float = float("inf")
    duration_max: float = float("-inf")

    def add(self, row: RollupRow) -> None:
        self.requests += row.requests
        self.errors += row.errors
        self.rate_limited += row.rate_limited
        if 1 <= row.status_class <= 5:
            self.classes[row.status_class - 1] += row.requests
        if row.requests:
            self.duration_min = min(self.duration_min, row.duration_min)
            self.duration_max = max(self.duration_max, row.duration_max)
        stored = row.histogram
        if stored:
            latency = self.latency
            last = len(latency) - 1
            for offset, count in enumerate(stored[1:]):
                if count:
                    latency[min(stored[0] + offset, last)] += count

    def value(self, rule: AlertRule) -> float | None:
        """The rule's input over this window; None when the window is "no
        data" for it (fewer than ``min_requests`` requests, for a ratio or a
        latency)."""
        name = rule.input
        if rule.needs_requests and (self.requests < max(rule.min_requests, 1)):
            return None
        if name == "request_rate":
            return self.requests / self.seconds
        if name == "error_rate":
            return self.errors / self.seconds
        if name == "rate_limited_rate":
            return self.rate_limited / self.seconds
        if name == "error_ratio":
            return self.errors / self.requests
        if name == "rate_limited_ratio":
            return self.rate_limited / self.requests
        if name.startswith("status_"):
            return self.classes[int(name[7]) - 1] / self.requests
        quantile = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}[name]
        value = histogram.percentiles(
            self.latency, [quantile], lowest=self.duration_min, highest=self.duration_max
        )[0]
        return value


def window_of(rule: AlertRule, now: float, settle: float = SETTLE_SECONDS) -> tuple[int, int]:
    """``[start, end)`` of bucket starts the rule reads at ``now``."""
    resolution = rule.resolution
    end = int((now - settle) // resolution) * resolution
    return end - int(rule.window), end


def _group_of(rule: AlertRule, row: RollupRow) -> Group | None:
    """The instance a per-route row counts for; None when the rule's filters
    leave it out."""
    if rule.route is not None and row.route != rule.route:
        return None
    if rule.method is not None and row.method != rule.method:
        return None
    return tuple((label, getattr(row, label)) for label in rule.group_by)


def per_route(rule: AlertRule) -> bool:
    """Whether the rule reads per-route rows rather than the totals."""
    return bool(rule.group_by) or rule.route is not None or rule.method is not None


def figures_for(rule: AlertRule, rows: Iterable[RollupRow]) -> dict[Group, WindowFigures]:
    """The window's figures per instance group. A rule without ``group_by``
    always has its one group, empty when nothing was recorded; a grouped rule
    has the groups that appear in ``rows``."""
    seconds = float(rule.window)
    out: dict[Group, WindowFigures] = {}
    if not rule.group_by:
        out[()] = WindowFigures(seconds)
    grouped = per_route(rule)
    for row in rows:
        group = _group_of(rule, row) if grouped else ()
        if group is None:
            continue
        figures = out.get(group)
        if figures is None:
            figures = out[group] = WindowFigures(seconds)
        figures.add(row)
    return out


Collected = dict[str, "dict[Group, WindowFigures] | Exception"]


def collect(
    reader: RollupReader,
    rules: Sequence[AlertRule],
    now: float,
    settle: float = SETTLE_SECONDS,
) -> Collected:
    """Every rule's figures at ``now``, by rule name: one read per distinct
    window; a read that fails gives its rules the exception instead (their
    health), and the others are still evaluated."""
    reads: dict[tuple[int, int, int, bool], list[RollupRow] | Exception] = {}
    out: Collected = {}
    for rule in rules:
        start, end = window_of(rule, now, settle)
        key = (rule.resolution, start, end, per_route(rule))
        rows = reads.get(key)
        if rows is None:
            try:
                rows = reader.read_rollups(key[0], start, end, by_route=key[3])
            except Exception as exc:  # the store's problem, reported as the rule's health
                rows = exc
            reads[key] = rows
        out[rule.name] = rows if isinstance(rows, Exception) else figures_for(rule, rows)
    return out


def describe(figures: WindowFigures) -> dict[str, Any]:
    """The figures as plain numbers (for a dry run or an API answer)."""
    return {
        "requests": figures.requests,
        "errors": figures.errors,
        "rate_limited": figures.rate_limited,
        "seconds": figures.seconds,
    }
