"""Window figures kept as running sums from one evaluation to the next.

See :class:`SlidingFigures`: what :func:`.figures.collect` computes, at the
cost of the buckets that entered and left each window since the last call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..core.rollup import RollupRow
from .custom_inputs import RowBudget, custom_figures
from .figures import (
    SETTLE_SECONDS,
    Collected,
    Group,
    RecentRollups,
    RollupReader,
    Rows,
    WindowFigures,
    add_row,
    per_route,
    state_figures,
    window_of,
)
from .rules import ROLLUP_INPUTS, AlertRule


class SlidingFigures:
    """:func:`.figures.collect`'s figures at times that move forward, kept
    as running sums.

    ``collect`` sums every row of every window at each evaluation: right for
    the live service (a tick every few seconds), but a day replayed every
    10 s would sum each row of a 15-minute window 180 times. Here each
    window's groups are running sums: a row is added as its bucket enters
    the window and subtracted as it leaves (counts and histograms are
    integers: the sums are exact), and the fastest and slowest request of
    each group come from a monotonic queue per group. The figures equal
    ``collect``'s at every step (a test holds them to it). The rows come
    from ``recent`` (:class:`.figures.RecentRollups`): each step reads only
    the buckets that may have changed. A bucket read again with other rows
    than those summed (a worker that wrote late) starts its window's sums
    over: rare, and then as dear as ``collect``.

    The live service uses it (a tick sums the few buckets that entered and
    left its windows, not every row of them), and so does the dry run, with
    a ``recent`` that never reads a range again (its history is written).
    The figures returned are valid until the next call.
    """

    def __init__(
        self, reader: RollupReader, rules: Sequence[AlertRule], settle: float = SETTLE_SECONDS,
        recent: RecentRollups | None = None, custom_budget: RowBudget | None = None,
    ) -> None:  # fmt: skip
        self.reader = reader
        self.all_rules = tuple(rules)
        self.rules = tuple(rule for rule in rules if rule.input in ROLLUP_INPUTS)
        self.settle = settle
        self.recent = RecentRollups() if recent is None else recent
        #: Rows the custom rules may read in all (a dry run's), or no bound.
        self.custom_budget = custom_budget
        self._sums: dict[tuple[Any, ...], _Sums] = {}
        #: Per read (resolution, by route): its rows by bucket, and its end.
        self._seen: dict[tuple[int, bool], tuple[Rows, int]] = {}

    def with_rules(self, rules: Sequence[AlertRule]) -> SlidingFigures:
        """These figures for another set of rules (some added, changed or
        removed through the API): the running sums of the windows the new
        set still has are kept, with the rows read so far; a window new to
        it starts from a full read (as a range that starts earlier than the
        rows kept is read whole)."""
        made = SlidingFigures(self.reader, rules, self.settle, self.recent)
        kinds = {_kind(rule) for rule in made.rules}
        made._sums = {kind: sums for kind, sums in self._sums.items() if kind in kinds}
        made._seen = self._seen
        return made

    def collect(
        self, now: float, states: Mapping[str, Mapping[Group, float] | Exception] | None = None
    ) -> Collected:
        """Every rule's figures at ``now`` (not before the last call's); the
        state inputs' from ``states``, as :func:`.figures.collect` takes them."""
        out: Collected = state_figures(self.all_rules, states)
        out.update(
            custom_figures(self.reader, self.all_rules, now, self.settle, self.custom_budget)
        )
        windows = {rule.name: window_of(rule, now, self.settle) for rule in self.rules}
        spans: dict[tuple[int, bool], tuple[int, int]] = {}
        for rule in self.rules:
            start, end = windows[rule.name]
            key = (rule.resolution, per_route(rule))
            known = spans.get(key)
            spans[key] = (
                (start, end) if known is None else (min(known[0], start), max(known[1], end))
            )
        reads: dict[tuple[int, bool], Rows | Exception] = {}
        changed: dict[tuple[int, bool], set[int]] = {}
        for (resolution, by_route), (first, last) in spans.items():
            key = (resolution, by_route)
            try:
                rows = self.recent.read(self.reader, resolution, by_route, first, last, now)
            except Exception as exc:  # the store's problem, reported as the rule's health
                reads[key] = exc
                continue
            reads[key] = rows
            changed[key] = self._changed(key, rows, last)
        for rule in self.rules:
            read = reads[(rule.resolution, per_route(rule))]
            if isinstance(read, Exception):
                out[rule.name] = read
                continue
            kind = _kind(rule)
            sums = self._sums.get(kind)
            if sums is None:
                sums = self._sums[kind] = _Sums(rule)
            key = (rule.resolution, per_route(rule))
            out[rule.name] = sums.move(*windows[rule.name], read, changed.get(key, ()))
        return out

    def _changed(self, key: tuple[int, bool], read: Rows, through: int) -> set[int]:
        """The buckets of ``read`` whose rows differ from the last read's
        (RecentRollups reads the recent ones again each time: their lists
        are new, their rows mostly the same); a bucket that had no rows
        before the last read's end and has some now counts too."""
        changed: set[int] = set()
        last = self._seen.get(key)
        if last is not None:
            previous, end = last
            for bucket, rows in read.items():
                old = previous.get(bucket)
                if old is rows:
                    continue
                if (old is None and bucket < end) or (old is not None and old != rows):
                    changed.add(bucket)
        self._seen[key] = (dict(read), through)
        return changed


def _kind(rule: AlertRule) -> tuple[Any, ...]:
    """What a rule's running sums depend on: rules alike in it share them."""
    return (rule.resolution, per_route(rule), rule.window, rule.route, rule.method, rule.group_by)


class _Sums:
    """The running figures of one window's groups, shared by the rules of one
    resolution, window, filters and grouping."""

    def __init__(self, rule: AlertRule) -> None:
        self.seconds = float(rule.window)
        self.by_route = per_route(rule)
        self.route, self.method, self.group_by = rule.route, rule.method, rule.group_by
        self.start = self.end = 0
        self.rows: dict[int, list[tuple[Group, RollupRow]]] = {}
        self.groups: dict[Group, WindowFigures] = {}
        self.counts: dict[Group, int] = {}  # rows in the window, per group
        # Per group: (bucket, fastest) rising and (bucket, slowest) falling.
        self.lows: dict[Group, deque[tuple[int, float]]] = {}
        self.highs: dict[Group, deque[tuple[int, float]]] = {}
        self.figures: dict[Group, WindowFigures] = {}

    def move(
        self, start: int, end: int, read: Rows, changed: Iterable[int] = ()
    ) -> dict[Group, WindowFigures]:
        """The figures of ``[start, end)``; ``changed``: buckets read again
        with other rows than before."""
        if (
            start < self.start
            or end < self.end
            or any(self.start <= bucket < self.end for bucket in changed)
        ):
            # Back in time, or rows summed have changed since: start over.
            self.start = self.end = start
            self.rows, self.groups, self.counts, self.lows, self.highs = {}, {}, {}, {}, {}
        elif (start, end) == (self.start, self.end):
            return self.figures
        for bucket in sorted(b for b in self.rows if b < start):
            for group, row in self.rows.pop(bucket):
                add_row(self.groups[group], row, -1)
                self.counts[group] -= 1
                if not self.counts[group]:
                    del self.groups[group], self.counts[group]
        for group in list(self.lows):
            for queue in (self.lows[group], self.highs[group]):
                while queue and queue[0][0] < start:
                    queue.popleft()
            if not self.lows[group]:
                del self.lows[group], self.highs[group]
        for bucket in sorted(b for b in read if max(start, self.end) <= b < end):
            kept = self.rows[bucket] = []
            extremes: dict[Group, list[float]] = {}
            for row in read[bucket]:
                found = self._group(row)
                if found is None:
                    continue
                group = found
                kept.append((group, row))
                figures = self.groups.get(group)
                if figures is None:
                    figures = self.groups[group] = WindowFigures(self.seconds)
                    self.counts[group] = 0
                self.counts[group] += 1
                add_row(figures, row, 1)
                if row.requests:
                    known = extremes.get(group)
                    if known is None:
                        extremes[group] = [row.duration_min, row.duration_max]
                    else:
                        known[0] = min(known[0], row.duration_min)
                        known[1] = max(known[1], row.duration_max)
            for group, (low, high) in extremes.items():
                lows = self.lows.setdefault(group, deque())
                while lows and lows[-1][1] >= low:
                    lows.pop()
                lows.append((bucket, low))
                highs = self.highs.setdefault(group, deque())
                while highs and highs[-1][1] <= high:
                    highs.pop()
                highs.append((bucket, high))
        self.start, self.end = start, end
        for group, figures in self.groups.items():
            fastest = self.lows.get(group)
            if fastest:
                figures.duration_min = fastest[0][1]
                figures.duration_max = self.highs[group][0][1]
            else:
                figures.duration_min, figures.duration_max = float("inf"), float("-inf")
        self.figures = dict(self.groups)
        if not self.group_by and () not in self.figures:
            self.figures[()] = WindowFigures(self.seconds)
        return self.figures

    def _group(self, row: RollupRow) -> Group | None:
        """The group a row counts in (as :func:`.figures.figures_for` groups
        it); None for a row the rule's filters leave out."""
        if not self.by_route:
            return ()
        if (self.route is not None and row.route != self.route) or (
            self.method is not None and row.method != self.method
        ):
            return None
        labels = {"route": row.route, "method": row.method}
        return tuple((label, labels[label]) for label in self.group_by)
