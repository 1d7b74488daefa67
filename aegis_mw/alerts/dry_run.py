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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .custom_inputs import RowBudget
from .evaluator import FIRING, NODATA, PENDING, RESOLVED, Instance, Key, Transition, evaluate
from .figures import (
    SETTLE_SECONDS,
    Group,
    RecentRollups,
    RollupReader,
)
from .rules import STATE_INPUTS, AlertRule
from .sliding import SlidingFigures

#: The longest span a replay covers.
MAX_SPAN = 7 * 86_400.0
#: The most evaluations one replay runs.
MAX_STEPS = 20_000
#: Stored rows the custom rules of one replay may read in all (each step
#: reads their windows again): a few seconds of work at most.
DRY_RUN_CUSTOM_ROWS = 300_000
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
    # The history replayed is already written: nothing comes late while it
    # is read, so no range is read again (refresh) but the last bucket.
    figures = SlidingFigures(
        reader, rules, settle, RecentRollups(recheck=0.0, refresh=math.inf),
        custom_budget=RowBudget(DRY_RUN_CUSTOM_ROWS),
    )  # fmt: skip
    # Every rule but those over the app's present state (see below).
    replayed = tuple(rule for rule in rules if rule.input not in STATE_INPUTS)
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
                f"not replayed: {rule.input} is read from the app's present state, "
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
