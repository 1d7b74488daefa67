"""The figures alert rules compare: one window of the stored rollups.

Rules read the rollups every worker and host of the app writes to the same
store (see :mod:`aegis_mw.core.rollup`), so an evaluation sees the whole app,
not the process it runs in. A window ends at the last bucket old enough to
be complete (``settle`` seconds: the flushers write rollups every few
seconds) and reaches back ``rule.window``; ratios and percentiles are
computed from the summed counts and the merged latency histogram, never
averaged across buckets or routes.

Reads are shared: rules reading the same resolution and kind of rows (per
route or totals) cost one query per evaluation, and with
:class:`RecentRollups` that query takes only the buckets that may have
changed since the last one.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

from ..core import histogram
from ..core.rollup import RollupRow
from .rules import CUSTOM_INPUTS, ROLLUP_INPUTS, STATE_INPUTS, AlertRule

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
    #: A state input's value (see rules.STATE_INPUTS): 0 when not given.
    state: float = 0.0
    #: A custom input's value (see .custom_inputs): None is no data. A
    #: window not read for it (a group with nothing in the window, which the
    #: evaluator fills in) is an increase of 0, and no data for the rest.
    custom: float | None = None
    custom_read: bool = False

    def add(self, row: RollupRow) -> None:
        add_row(self, row, 1)
        if row.requests:
            if row.duration_min < self.duration_min:
                self.duration_min = row.duration_min
            if row.duration_max > self.duration_max:
                self.duration_max = row.duration_max

    def merge(self, other: WindowFigures) -> None:
        """Add another window's figures (the same window: sums and the
        merged histogram)."""
        self.requests += other.requests
        self.errors += other.errors
        self.rate_limited += other.rate_limited
        self.classes = [a + b for a, b in zip(self.classes, other.classes, strict=True)]
        self.latency = [a + b for a, b in zip(self.latency, other.latency, strict=True)]
        self.duration_min = min(self.duration_min, other.duration_min)
        self.duration_max = max(self.duration_max, other.duration_max)

    def value(self, rule: AlertRule) -> float | None:
        """The rule's input over this window; None when the window is "no
        data" for it (fewer than ``min_requests`` requests, for a ratio or a
        latency)."""
        name = rule.input
        if rule.needs_requests and (self.requests < max(rule.min_requests, 1)):
            return None
        if name in STATE_INPUTS:
            return self.state
        if name in CUSTOM_INPUTS:
            if self.custom_read:
                return self.custom
            return 0.0 if name in ("custom_increase", "custom_rate") else None
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


def add_row(figures: WindowFigures, row: RollupRow, sign: int) -> None:
    """A row's counts and histogram added to ``figures`` (``sign`` 1) or
    taken out of them (-1, the running sums of :mod:`.sliding`); the fastest
    and slowest request are the caller's."""
    requests = row.requests * sign
    figures.requests += requests
    figures.errors += row.errors * sign
    figures.rate_limited += row.rate_limited * sign
    if 1 <= row.status_class <= 5:
        figures.classes[row.status_class - 1] += requests
    stored = row.histogram
    if not stored:
        return
    latency = figures.latency
    first, stop = stored[0], stored[0] + len(stored) - 1
    if first >= 0 and stop <= len(latency):
        # A slice at a time (map in C): a row's histogram spans a hundred
        # buckets or more, and each row is added and taken away once.
        step = operator.add if sign > 0 else operator.sub
        latency[first:stop] = map(step, latency[first:stop], islice(stored, 1, None))
        return
    last = len(latency) - 1  # a layout of another build: clamped into ours
    for index, count in enumerate(stored[1:], first):
        if count:
            latency[max(0, min(index, last))] += count * sign


def window_of(rule: AlertRule, now: float, settle: float = SETTLE_SECONDS) -> tuple[int, int]:
    """``[start, end)`` of bucket starts the rule reads at ``now``."""
    resolution = rule.resolution
    end = int((now - settle) // resolution) * resolution
    return end - int(rule.window), end


def per_route(rule: AlertRule) -> bool:
    """Whether the rule reads per-route rows rather than the totals."""
    return bool(rule.group_by) or rule.route is not None or rule.method is not None


def figures_for(rule: AlertRule, rows: Iterable[RollupRow]) -> dict[Group, WindowFigures]:
    """The window's figures per instance group. A rule without ``group_by``
    always has its one group, empty when nothing was recorded; a grouped rule
    has the groups that appear in ``rows``."""
    return _groups(rule, _index(rows, float(rule.window)))


Index = dict[tuple[str, str], WindowFigures]


def _index(rows: Iterable[RollupRow], seconds: float) -> Index:
    """One read's rows summed per (route, method): each row is added once,
    however many rules read it (the totals' rows are all ("", ""))."""
    index: Index = {}
    for row in rows:
        key = (row.route, row.method)
        figures = index.get(key)
        if figures is None:
            figures = index[key] = WindowFigures(seconds)
        figures.add(row)
    return index


def _groups(rule: AlertRule, index: Index) -> dict[Group, WindowFigures]:
    out: dict[Group, WindowFigures] = {}
    if not rule.group_by:
        out[()] = WindowFigures(float(rule.window))
    grouped = per_route(rule)
    for (route, method), figures in index.items():
        if grouped:
            if (rule.route is not None and route != rule.route) or (
                rule.method is not None and method != rule.method
            ):
                continue
            labels = {"route": route, "method": method}
            group: Group = tuple((label, labels[label]) for label in rule.group_by)
        else:
            group = ()
        total = out.get(group)
        if total is None:
            total = out[group] = WindowFigures(float(rule.window))
        total.merge(figures)
    return out


Collected = dict[str, "dict[Group, WindowFigures] | Exception"]
#: (resolution, per route) -> buckets' rows, as one read of [start, end) gives them.
Rows = dict[int, list[RollupRow]]


class RecentRollups:
    """Rollup rows kept from one evaluation to the next, so each tick reads
    only the buckets that may have changed since.

    Buckets settle before a window includes them, but a worker whose store
    was down writes its rollups late. So every read takes again the last
    ``recheck`` seconds of buckets (a minute: a late write within it is seen
    at once), and every ``refresh`` seconds the whole range (five minutes:
    anything later is seen after at most that). Without it every tick reads
    every bucket of every window: at 200 rules over 50 routes, tens of
    thousands of rows (``bench/alerts.py``).
    """

    def __init__(self, recheck: float = 60.0, refresh: float = 300.0) -> None:
        self.recheck = recheck
        self.refresh = refresh
        #: (resolution, per route) -> (the rows by bucket, read from, read up
        #: to, refreshed at)
        self._kept: dict[tuple[int, bool], tuple[Rows, int, int, float]] = {}

    def read(
        self, reader: RollupReader, resolution: int, by_route: bool, start: int, end: int,
        now: float,
    ) -> Rows:  # fmt: skip
        """The rows of the buckets in ``[start, end)``, by bucket."""
        key = (resolution, by_route)
        kept = self._kept.get(key)
        rows: Rows
        # Read whole: the first time, every refresh, after a gap, and when the
        # range starts before what was read (a rule with a longer window).
        if kept is None or now - kept[3] >= self.refresh or kept[2] < start or start < kept[1]:
            first, rows, refreshed = start, {}, now
        else:
            rows, _, through, refreshed = kept
            first = max(start, min(through, end) - max(int(self.recheck), resolution))
            first -= first % resolution
        fresh: Rows = {}
        for row in reader.read_rollups(resolution, first, end, by_route=by_route):
            fresh.setdefault(row.bucket, []).append(row)
        kept_rows = {b: r for b, r in rows.items() if start <= b < first}
        kept_rows.update(fresh)
        self._kept[key] = (kept_rows, start, end, refreshed)
        return kept_rows


def _rows_in(rows: Rows, start: int, end: int) -> Iterable[RollupRow]:
    for bucket, bucket_rows in rows.items():
        if start <= bucket < end:
            yield from bucket_rows


def state_figures(
    rules: Sequence[AlertRule], states: Mapping[str, Mapping[Group, float] | Exception] | None
) -> Collected:
    """The figures of the rules over a state input, from ``states`` (the
    values per group of each input, read by the caller, or its read's error)."""
    out: Collected = {}
    for rule in rules:
        if rule.input not in STATE_INPUTS:
            continue
        values = (states or {}).get(rule.input, {})
        if isinstance(values, Exception):
            out[rule.name] = values
            continue
        summed: dict[Group, WindowFigures] = {}
        for group, value in values.items():
            kept: Group = tuple(pair for pair in group if pair[0] in rule.group_by)
            figures = summed.setdefault(kept, WindowFigures(float(rule.window)))
            figures.state += value
        if not rule.group_by:
            summed.setdefault((), WindowFigures(float(rule.window)))
        out[rule.name] = summed
    return out


def collect(
    reader: RollupReader,
    rules: Sequence[AlertRule],
    now: float,
    settle: float = SETTLE_SECONDS,
    recent: RecentRollups | None = None,
    states: Mapping[str, Mapping[Group, float] | Exception] | None = None,
) -> Collected:
    """Every rule's figures at ``now``, by rule name.

    One read per resolution and kind of rows (per route, or the totals)
    covering every window that needs it (with ``recent``, only the buckets
    that may have changed since its last read); the rows summed per route
    and method once per window; one set of groups per distinct window,
    filters and grouping, which rules share (read only). A read that fails
    gives its rules the exception instead (their health), and the others
    are still evaluated. Rules over a state input take its values per group
    from ``states`` (by input), read by the caller."""
    from .custom_inputs import custom_figures

    out = state_figures(rules, states)
    out.update(custom_figures(reader, rules, now, settle))
    rules = [rule for rule in rules if rule.input in ROLLUP_INPUTS]
    windows = {rule.name: window_of(rule, now, settle) for rule in rules}
    spans: dict[tuple[int, bool], tuple[int, int]] = {}
    for rule in rules:
        start, end = windows[rule.name]
        key = (rule.resolution, per_route(rule))
        known = spans.get(key)
        spans[key] = (start, end) if known is None else (min(known[0], start), max(known[1], end))
    reads: dict[tuple[int, bool], Rows | Exception] = {}
    for (resolution, by_route), (first, last) in spans.items():
        try:
            if recent is not None:
                rows = recent.read(reader, resolution, by_route, first, last, now)
            else:
                rows = {}
                for row in reader.read_rollups(resolution, first, last, by_route=by_route):
                    rows.setdefault(row.bucket, []).append(row)
            reads[(resolution, by_route)] = rows
        except Exception as exc:  # the store's problem, reported as the rule's health
            reads[(resolution, by_route)] = exc
    indexes: dict[tuple[int, bool, int, int], Index] = {}
    shared: dict[tuple[Any, ...], dict[Group, WindowFigures]] = {}
    for rule in rules:
        start, end = windows[rule.name]
        read = reads[(rule.resolution, per_route(rule))]
        if isinstance(read, Exception):
            out[rule.name] = read
            continue
        window = (rule.resolution, per_route(rule), start, end)
        index = indexes.get(window)
        if index is None:
            index = indexes[window] = _index(_rows_in(read, start, end), float(rule.window))
        kind = (window, rule.route, rule.method, rule.group_by)
        groups = shared.get(kind)
        if groups is None:
            groups = shared[kind] = _groups(rule, index)
        out[rule.name] = groups
    return out
