"""A dry run: would these rules fire now, and when would they have fired?

:func:`replay` runs the real evaluation (:func:`.figures.collect` and
:func:`.evaluator.evaluate`) at every ``step`` seconds from ``start`` to
``end`` over the rollups already stored, carrying the instances from one
step to the next as the alert service does, and tells per rule its
transitions, its firing periods per group, where each group stands at
``end``, and whether its figures could be read. Nothing is written and
nobody is notified::

    import time

    from aegis_mw.alerts import AlertRule
    from aegis_mw.alerts.dry_run import replay
    from aegis_mw.sinks import SQLiteSink

    sink = SQLiteSink("aegis.db")
    rule = AlertRule(name="errors", input="error_ratio", operator=">", threshold=0.05)
    now = time.time()
    [errors] = replay(sink, [rule], start=now - 86400, end=now, step=60)
    for period in errors.periods:
        print(period.group, period.start, period.end)

The replay starts from no instances at ``start``: an alert already firing
then fires again at ``start`` (after its ``for``). Rules over a state input
(``channel_disabled``) are read from the outbox's present state, which has
no history: they are not replayed, and their health says so.
"""

from __future__ import annotations

import math
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ..core.rollup import RollupRow
from .evaluator import FIRING, NODATA, PENDING, RESOLVED, Instance, Key, Transition, evaluate
from .figures import (
    SETTLE_SECONDS,
    Collected,
    Group,
    RecentRollups,
    RollupReader,
    Rows,
    WindowFigures,
    per_route,
    window_of,
)
from .rules import STATE_INPUTS, AlertRule

#: The longest span a replay covers.
MAX_SPAN = 7 * 86_400.0
#: The most evaluations one replay runs.
MAX_STEPS = 20_000
#: The order groups are listed in at ``end``: the alerts first.
_ORDER = {FIRING: 0, PENDING: 1, NODATA: 2, RESOLVED: 3}


@dataclass(frozen=True)
class Period:
    """One group firing from ``start`` to ``end`` (None: still firing at the
    replay's end)."""

    group: Group
    start: float
    end: float | None

    def to_mapping(self) -> dict[str, Any]:
        return {"group": dict(self.group), "from": self.start, "to": self.end}


@dataclass(frozen=True)
class GroupState:
    """Where one group stands at the replay's end."""

    group: Group
    state: str
    value: float | None
    #: When it fired (firing), or became pending (pending); else None.
    since: float | None

    def to_mapping(self) -> dict[str, Any]:
        return {
            "group": dict(self.group), "state": self.state, "value": self.value,
            "since": self.since,
        }  # fmt: skip


@dataclass(frozen=True)
class RuleReplay:
    """One rule's replay."""

    rule: AlertRule
    #: Every transition, in order (the evaluator's own: kind, states, value).
    transitions: tuple[Transition, ...]
    #: Firing periods, by start then group.
    periods: tuple[Period, ...]
    #: Every group at the end, the alerts first.
    now: tuple[GroupState, ...]
    #: "" when every evaluation read its figures, else the first problem.
    health: str
    #: Evaluations whose figures could not be read (they change nothing).
    failed: int

    @property
    def firing_now(self) -> tuple[GroupState, ...]:
        """The groups firing at the end."""
        return tuple(g for g in self.now if g.state == FIRING)

    def to_mapping(self) -> dict[str, Any]:
        """JSON-ready: times in seconds since the epoch."""
        return {
            "rule": self.rule.name,
            "would_fire_now": bool(self.firing_now),
            "now": [g.to_mapping() for g in self.now],
            "periods": [p.to_mapping() for p in self.periods],
            "transitions": [_transition(t) for t in self.transitions],
            "health": self.health,
            "failed_evaluations": self.failed,
        }


class ReplayFigures:
    """:func:`.figures.collect`'s figures at times that only move forward,
    kept as running sums.

    ``collect`` sums every row of every window at each evaluation: right for
    the live service (a tick every few seconds), but a day replayed every
    10 s would sum each row of a 15-minute window 180 times. Here each
    window's groups are running sums: a row is added as its bucket enters
    the window and subtracted as it leaves (counts and histograms are
    integers: the sums are exact), and the fastest and slowest request of
    each group come from a monotonic queue per group. The figures equal
    ``collect``'s at every step (a test holds them to it). The rows come
    from one :class:`.figures.RecentRollups`: each step reads only the
    buckets its windows newly reach.

    The figures returned are valid until the next call.
    """

    def __init__(
        self, reader: RollupReader, rules: Sequence[AlertRule], settle: float = SETTLE_SECONDS
    ) -> None:
        self.reader = reader
        self.rules = tuple(rule for rule in rules if rule.input not in STATE_INPUTS)
        self.settle = settle
        # The history replayed is already written: nothing comes late while
        # it is read, so no range is read again (refresh) but the last
        # bucket (recheck: at least one).
        self.recent = RecentRollups(recheck=0.0, refresh=math.inf)
        self._sums: dict[tuple[Any, ...], _Sums] = {}

    def collect(self, now: float) -> Collected:
        """Every rule's figures at ``now`` (not before the last call's)."""
        out: Collected = {}
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
        for (resolution, by_route), (first, last) in spans.items():
            try:
                reads[(resolution, by_route)] = self.recent.read(
                    self.reader, resolution, by_route, first, last, now
                )
            except Exception as exc:  # the store's problem, reported as the rule's health
                reads[(resolution, by_route)] = exc
        for rule in self.rules:
            read = reads[(rule.resolution, per_route(rule))]
            if isinstance(read, Exception):
                out[rule.name] = read
                continue
            kind = (rule.resolution, per_route(rule), rule.window, rule.route, rule.method,
                    rule.group_by)  # fmt: skip
            sums = self._sums.get(kind)
            if sums is None:
                sums = self._sums[kind] = _Sums(rule)
            out[rule.name] = sums.move(*windows[rule.name], read)
        return out


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

    def move(self, start: int, end: int, read: Rows) -> dict[Group, WindowFigures]:
        if (start, end) == (self.start, self.end):
            return self.figures
        if start < self.start or end < self.end:  # back in time: start over
            self.start = self.end = start
            self.rows, self.groups, self.counts, self.lows, self.highs = {}, {}, {}, {}, {}
        for bucket in sorted(b for b in self.rows if b < start):
            for group, row in self.rows.pop(bucket):
                _add(self.groups[group], row, -1)
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
                _add(figures, row, 1)
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


def _add(figures: WindowFigures, row: RollupRow, sign: int) -> None:
    """``WindowFigures.add`` (``sign`` 1) or its inverse (-1), but for the
    fastest and slowest request (see :class:`_Sums`)."""
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


def _since(instance: Instance) -> float | None:
    if instance.state == FIRING:
        return instance.fired_at
    return instance.active_at if instance.state == PENDING else None


def _transition(t: Transition) -> dict[str, Any]:
    return {
        "at": t.at, "group": dict(t.group), "kind": t.kind, "from_state": t.from_state,
        "to_state": t.to_state, "value": t.value,
    }  # fmt: skip


def evaluation_times(start: float, end: float, step: float) -> list[float]:
    """``start``, ``start + step``, ... up to ``end``, and ``end`` itself;
    ValueError for a span over :data:`MAX_SPAN` or more than
    :data:`MAX_STEPS` evaluations."""
    for name, value in (("start", start), ("end", end), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number of seconds, not {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, not {value!r}")
    if step <= 0:
        raise ValueError(f"step must be more than 0 seconds, not {step:g}")
    if end < start:
        raise ValueError("end must not be before start")
    if end - start > MAX_SPAN:
        raise ValueError(
            f"a dry run covers at most {MAX_SPAN / 86400:g} days, "
            f"not {(end - start) / 86400:.4g} days"
        )
    count = int((end - start) // step) + 1
    total = count + (start + (count - 1) * step < end)
    if total > MAX_STEPS:
        raise ValueError(
            f"a dry run runs at most {MAX_STEPS} evaluations, not {total} "
            f"({end - start:g} s every {step:g} s): take a longer step or a shorter span"
        )
    times = [min(start + index * step, end) for index in range(count)]
    if times[-1] < end:
        times.append(float(end))  # where it stands now is always evaluated
    return times


def replay(
    reader: RollupReader,
    rules: Sequence[AlertRule],
    *,
    start: float,
    end: float,
    step: float,
    settle: float = SETTLE_SECONDS,
) -> list[RuleReplay]:
    """Each rule's evaluation at every ``step`` seconds from ``start`` to
    ``end`` (see :func:`evaluation_times`) over ``reader``'s rollups, from no
    instances at ``start``, each step counting at most ``2 * step`` seconds
    (as the alert service counts twice its interval). One result per rule,
    in order; ValueError for bounds out of range or two rules of one name."""
    rules = tuple(rules)
    names = [rule.name for rule in rules]
    if len(set(names)) != len(names):
        raise ValueError("two rules have the same name")
    times = evaluation_times(start, end, step)
    figures = ReplayFigures(reader, rules, settle)
    replayed = figures.rules
    transitions: dict[str, list[Transition]] = {name: [] for name in names}
    periods: dict[str, list[Period]] = {name: [] for name in names}
    health: dict[str, str] = dict.fromkeys(names, "")
    failed: dict[str, int] = dict.fromkeys(names, 0)
    instances: dict[Key, Instance] = {}
    started: dict[Key, float] = {}  # the open firing periods
    for now in times:
        result = evaluate(replayed, instances, figures.collect(now), now, 2 * step)
        for transition in result.transitions:
            transitions[transition.rule].append(transition)
        for name, problem in result.health.items():
            if problem:
                failed[name] += 1
                health[name] = health[name] or problem
        # Periods from the states, not the transitions: an instance dropped
        # while firing unannounced (flapping) leaves no resolve behind.
        firing = {key for key, i in result.instances.items() if i.state == FIRING}
        for key in sorted(set(started) - firing):
            periods[key[0]].append(Period(key[1], started.pop(key), now))
        for key in sorted(firing - set(started)):
            started[key] = now
        instances = result.instances
    for (name, group), since in started.items():
        periods[name].append(Period(group, since, None))
    for rule in rules:
        if rule.input in STATE_INPUTS:
            health[rule.name] = (
                f"not replayed: {rule.input} is read from the channels' present state, "
                "which keeps no history"
            )
    out = []
    for rule in rules:
        states = sorted(
            (i for (name, _), i in instances.items() if name == rule.name),
            key=lambda i: (_ORDER.get(i.state, len(_ORDER)), i.group),
        )
        now_states = tuple(GroupState(i.group, i.state, i.value, _since(i)) for i in states)
        out.append(
            RuleReplay(
                rule=rule,
                transitions=tuple(transitions[rule.name]),
                periods=tuple(sorted(periods[rule.name], key=lambda p: (p.start, p.group))),
                now=now_states,
                health=health[rule.name],
                failed=failed[rule.name],
            )
        )
    return out
