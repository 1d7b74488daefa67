"""Alert evaluation: a pure function of (rules, instances, figures, now).

Nothing here reads a clock, a store or a setting: :func:`evaluate` is given
the rules, the instances the last evaluation left, every rule's window
figures (see :mod:`.figures`) and the time, and returns the new instances,
the transitions between them and each rule's health. Timelines are then
tested with made-up times, as ``promtool test rules`` tests Prometheus
rules, and the state can be stored and restored as it is.

An instance (one per rule and group) is ``inactive``, ``pending`` (breaching
for less than ``for``), ``firing``, ``resolved`` (kept for
:data:`RESOLVED_RETENTION` so the notice can be delivered and shown) or
``nodata``. Its timers count the time between evaluations, each step at
most ``max_step`` seconds: a process that was down, or a clock stepped
forward, never makes an alert fire early; a clock stepped back counts as no
time.

A rule whose figures could not be read (the store unreachable) has health
``error`` and its instances stay exactly as they were: an evaluation error
never fires or resolves anything.

Fire/resolve changes are counted per instance over :data:`FLAP_WINDOW`;
at :data:`FLAP_START` changes the instance is flapping: one ``flapping``
notice is sent and its fire/resolve notices are held back until the changes
fall below :data:`FLAP_STOP`, when one notice tells where it settled. A
resolve is announced only for a firing that was announced.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .figures import Collected, Group, WindowFigures
from .rules import AlertRule

INACTIVE, PENDING, FIRING, RESOLVED, NODATA = "inactive", "pending", "firing", "resolved", "nodata"
STATES = (INACTIVE, PENDING, FIRING, RESOLVED, NODATA)
#: How long a resolved instance is kept before it is forgotten (as Prometheus
#: keeps resolved alerts).
RESOLVED_RETENTION = 900.0
#: Flapping: fire/resolve changes counted over this many seconds ...
FLAP_WINDOW = 3600.0
#: ... start it at this many changes (three fire-and-resolve cycles) ...
FLAP_START = 6
#: ... and end it when they fall below this many.
FLAP_STOP = 3
#: A grouped instance whose group has had no request for this long (or the
#: rule's window, if longer) is resolved and forgotten: the route is gone,
#: or the rule's grouping changed, and nothing else would ever resolve it.
ABSENT_LIMIT = 3600.0

Key = tuple[str, Group]


@dataclass(frozen=True)
class Instance:
    """One rule's state for one group."""

    rule: str
    group: Group
    state: str = INACTIVE
    value: float | None = None
    #: When it last became pending, and when it last fired or resolved.
    active_at: float | None = None
    fired_at: float | None = None
    resolved_at: float | None = None
    #: Breaching time counted towards ``for`` while pending.
    pending_for: float = 0.0
    #: Clear time counted towards ``keep_firing_for`` while firing; None
    #: while it breaches.
    clear_for: float | None = None
    #: The time of the evaluation that last saw this instance.
    seen_at: float = 0.0
    #: The last condition read from data (for the ``keep_last`` policy):
    #: breaching, and clear (past the resolve threshold).
    last_breach: bool | None = None
    last_clear: bool | None = None
    #: When a grouped instance's group last had requests in the window.
    data_at: float | None = None
    #: Times it fired or resolved within :data:`FLAP_WINDOW`.
    changes: tuple[float, ...] = ()
    flapping: bool = False
    #: What receivers were last told: ``firing``, ``resolved`` or None.
    announced: str | None = None
    #: The current fire-to-resolve episode's key (stable; a receiver's
    #: deduplication key).
    episode: str = ""
    #: The episode receivers were last told of (while flapping, episodes
    #: fire and resolve unannounced: the resolve receivers get is this one's).
    announced_episode: str = ""


def replace(instance: Instance, **changes: Any) -> Instance:
    """``dataclasses.replace`` without its checks, which cost more than the
    rest of an evaluation (an instance per group and rule, every tick)."""
    made = object.__new__(Instance)
    made.__dict__.update(instance.__dict__)
    made.__dict__.update(changes)
    return made


@dataclass(frozen=True)
class Transition:
    """A change of an instance, and whether receivers are told of it.

    ``kind`` is the new state, or ``flapping`` / ``flapping_ended`` for the
    notices about flapping (``to_state`` then says where the instance is).
    """

    rule: str
    group: Group
    kind: str
    from_state: str
    to_state: str
    at: float
    value: float | None
    severity: str
    episode: str
    notify: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    instances: dict[Key, Instance]
    transitions: list[Transition]
    #: Per rule: "" when it evaluated, else what went wrong.
    health: dict[str, str]


def evaluate(
    rules: Sequence[AlertRule],
    instances: Mapping[Key, Instance],
    figures: Collected,
    now: float,
    max_step: float,
) -> Evaluation:
    """One evaluation of every rule at ``now`` (seconds since the epoch).

    ``figures`` maps each rule's name to its window figures per group, or
    to the exception its read raised. ``max_step`` is the most time one
    step between evaluations may count (twice the interval, say).
    """
    by_rule: dict[str, list[Instance]] = {}
    for instance in instances.values():
        by_rule.setdefault(instance.rule, []).append(instance)
    out: dict[Key, Instance] = {}
    values: dict[tuple[int, str, Any], tuple[WindowFigures, float | None]] = {}
    transitions: list[Transition] = []
    health: dict[str, str] = {}
    for rule in rules:
        kept = by_rule.pop(rule.name, [])
        read = figures.get(rule.name)
        if read is None or isinstance(read, Exception):
            health[rule.name] = (
                "no figures were read" if read is None else f"{type(read).__name__}: {read}"
            )
            out.update(((i.rule, i.group), i) for i in kept)
            continue
        health[rule.name] = ""
        known = {i.group: i for i in kept}
        for group in sorted(set(known) | set(read)):
            window = read.get(group)
            before = known.get(group)
            if before is None:
                before = Instance(rule.name, group, seen_at=now, data_at=now)
            elif tuple(label for label, _ in group) != rule.group_by:
                # The rule's grouping changed: this instance can never be
                # evaluated again.
                _forget(before, now, "the rule's grouping changed", transitions, rule)
                continue
            if window is None:  # a group with no requests in the window
                absent = now - (before.data_at if before.data_at is not None else now)
                if before.state in (INACTIVE, NODATA):
                    # Forgotten: groups come and go with traffic.
                    _forget(before, now, "no requests in its group", transitions, rule)
                    continue
                if absent >= max(ABSENT_LIMIT, rule.window):
                    _forget(before, now, "no requests in its group for an hour", transitions, rule)
                    continue
                window = WindowFigures(float(rule.window))
                data_at = before.data_at
            else:
                data_at = now if rule.group_by else before.data_at
            # Rules of one window, filters and grouping share its figures:
            # a percentile is read from a histogram once per evaluation.
            # (The window is kept with its value: its id is not reused.)
            memo = (id(window), rule.input, rule.needs_requests and rule.min_requests)
            memoized = values.get(memo)
            if memoized is None:
                memoized = values[memo] = (window, window.value(rule))
            value = memoized[1]
            after = _advance(rule, before, value, now, max_step, transitions, data_at)
            if after is None:
                _forget(before, now, "resolved and kept long enough", transitions, rule)
            else:
                out[(rule.name, group)] = _settle_flapping(rule, after, now, transitions)
    # Instances of rules that are gone: one receivers hold as firing is
    # resolved as it goes, so none is left with an alert nothing will resolve.
    for gone in by_rule.values():
        for instance in gone:
            _forget(instance, now, "the rule was removed", transitions)
    return Evaluation(out, transitions, health)


def _forget(
    instance: Instance, now: float, reason: str, transitions: list[Transition],
    rule: AlertRule | None = None,
) -> None:  # fmt: skip
    """An instance is dropped: if receivers hold it as firing, they are told
    it resolved (its announced episode), with the reason. Its labels are
    its firing's (a channel groups the resolve with it) while its ``rule``
    is still there to say them."""
    if instance.announced != FIRING:
        return
    if rule is None:  # the rule removed: its name and group are all that is left
        labels = {"alertname": instance.rule, **dict(instance.group)}
    else:
        labels = alert_labels(rule, instance.group)
    transitions.append(
        Transition(
            rule=instance.rule,
            group=instance.group,
            kind=RESOLVED,
            from_state=instance.state,
            to_state=RESOLVED,
            at=now,
            value=None,
            severity="" if rule is None else rule.severity,
            episode=instance.announced_episode,
            notify=True,
            labels=labels,
            annotations={"summary": f"resolved: {reason}"},
        )
    )


def _advance(
    rule: AlertRule,
    before: Instance,
    value: float | None,
    now: float,
    max_step: float,
    transitions: list[Transition],
    data_at: float | None,
) -> Instance | None:
    """The instance after one evaluation that read ``value`` (None: no
    data); None when it is to be forgotten."""
    step = min(max(now - before.seen_at, 0.0), max_step)
    state = before.state
    changes = before.changes
    if changes and now - changes[0] >= FLAP_WINDOW:
        changes = tuple(t for t in changes if now - t < FLAP_WINDOW)
    breach: bool | None
    clear: bool | None
    if value is not None:
        breach = rule.breaches(value)
        if not breach and state == INACTIVE:
            # The common case, quiet and staying so: one new instance.
            return replace(
                before, value=value, seen_at=now, changes=changes, last_breach=False,
                last_clear=True, data_at=data_at,
            )  # fmt: skip
        clear = rule.clears(value)
        instance = replace(
            before, value=value, seen_at=now, changes=changes, last_breach=breach,
            last_clear=clear, data_at=data_at,
        )  # fmt: skip
    else:
        instance = replace(before, value=None, seen_at=now, changes=changes, data_at=data_at)
        breach, clear = _without_data(rule, before)

    if breach is None:
        # No data: a firing alert stays firing (silence is no proof of
        # recovery) with its clearing timer held; anything else waits in
        # nodata, a pending one starting over when data returns.
        if state == FIRING:
            return instance
        if state == RESOLVED and now - (before.resolved_at or now) < RESOLVED_RETENTION:
            return instance
        if state != NODATA:
            transitions.append(_transition(rule, instance, NODATA, state, now, notify=False))
        return replace(instance, state=NODATA, pending_for=0.0, active_at=None)

    if state == FIRING:
        if not clear:
            return replace(instance, clear_for=None)
        cleared = 0.0 if before.clear_for is None else before.clear_for + step
        if cleared < rule.keep_firing_for:
            return replace(instance, clear_for=cleared)
        return _resolve(rule, instance, state, now, transitions)

    if not breach:
        if state == PENDING:
            transitions.append(_transition(rule, instance, INACTIVE, state, now, notify=False))
        elif state == RESOLVED:
            if now - (before.resolved_at or now) < RESOLVED_RETENTION:
                return instance
            return None if rule.group_by else replace(instance, state=INACTIVE)
        elif state == NODATA:
            transitions.append(_transition(rule, instance, INACTIVE, state, now, notify=False))
        return replace(instance, state=INACTIVE, pending_for=0.0, active_at=None)

    # Breaching, not yet firing.
    if state == PENDING:
        pending_for = before.pending_for + step
        instance = replace(instance, pending_for=pending_for)
    else:
        pending_for = 0.0
        instance = replace(instance, state=PENDING, pending_for=0.0, active_at=now)
        if rule.for_ > 0:
            transitions.append(_transition(rule, instance, PENDING, state, now, notify=False))
            return instance
    if pending_for < rule.for_:
        return instance
    return _fire(rule, instance, state, now, transitions)


def _without_data(rule: AlertRule, before: Instance) -> tuple[bool | None, bool | None]:
    """(breach, clear) for a window without data, as the rule's policy
    says; (None, None) for the ``nodata`` state."""
    if rule.no_data == "ok":
        return False, True
    if rule.no_data == "alerting":
        return True, False
    if rule.no_data == "keep_last" and before.last_breach is not None:
        return before.last_breach, before.last_clear
    return None, None


def _fire(
    rule: AlertRule, instance: Instance, state: str, now: float, transitions: list[Transition]
) -> Instance:
    episode = _episode(rule.name, instance.group, now)
    changes = (*instance.changes, now)
    instance = replace(
        instance, state=FIRING, fired_at=now, resolved_at=None, clear_for=None,
        pending_for=0.0, changes=changes, episode=episode,
    )  # fmt: skip
    instance = _start_flapping(rule, instance, state, now, transitions)
    notify = not instance.flapping
    transitions.append(_transition(rule, instance, FIRING, state, now, notify=notify))
    if notify:
        return replace(instance, announced=FIRING, announced_episode=episode)
    return instance


def _resolve(
    rule: AlertRule, instance: Instance, state: str, now: float, transitions: list[Transition]
) -> Instance:
    changes = (*instance.changes, now)
    instance = replace(
        instance, state=RESOLVED, resolved_at=now, clear_for=None, active_at=None,
        changes=changes,
    )  # fmt: skip
    instance = _start_flapping(rule, instance, state, now, transitions)
    notify = not instance.flapping and instance.announced == FIRING
    transitions.append(
        _transition(
            rule, instance, RESOLVED, state, now, notify=notify,
            episode=instance.announced_episode if notify else None,
        )
    )  # fmt: skip
    return replace(instance, announced=RESOLVED) if notify else instance


def _start_flapping(
    rule: AlertRule, instance: Instance, state: str, now: float, transitions: list[Transition]
) -> Instance:
    if instance.flapping or len(instance.changes) < FLAP_START:
        return instance
    if instance.state == FIRING:
        # The notice fires, and receivers open its episode: announced, so
        # that ending the flapping (or forgetting the instance) resolves it.
        instance = replace(
            instance, flapping=True, announced=FIRING, announced_episode=instance.episode
        )
    else:
        instance = replace(instance, flapping=True)
    transitions.append(
        _transition(rule, instance, "flapping", state, now, notify=True, to_state=instance.state)
    )
    return instance


def _settle_flapping(
    rule: AlertRule, instance: Instance, now: float, transitions: list[Transition]
) -> Instance:
    """Ends flapping once the changes have thinned out; the notice then says
    where the instance settled, and receivers hold the truth again."""
    if not instance.flapping or len(instance.changes) >= FLAP_STOP:
        return instance
    instance = replace(instance, flapping=False)
    episode: str | None = None
    if instance.state == FIRING and instance.announced == FIRING:
        # Receivers hold it firing already: it goes on as that episode.
        instance = replace(instance, episode=instance.announced_episode)
    elif instance.state == FIRING:
        instance = replace(instance, announced=FIRING, announced_episode=instance.episode)
    elif instance.announced == FIRING:
        episode = instance.announced_episode  # the resolve receivers wait for
        instance = replace(instance, announced=RESOLVED)
    transitions.append(
        _transition(
            rule, instance, "flapping_ended", instance.state, now, notify=True,
            to_state=instance.state, episode=episode,
        )
    )  # fmt: skip
    return instance


def _episode(rule: str, group: Group, fired_at: float) -> str:
    text = repr((rule, group, round(fired_at, 3)))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def alert_labels(rule: AlertRule, group: Group) -> dict[str, str]:
    """An alert's labels: its name, severity, the rule's labels and its group."""
    labels = {"alertname": rule.name, "severity": rule.severity, **rule.labels}
    labels.update(group)
    return labels


def render(rule: AlertRule, group: Group, value: float | None) -> dict[str, str]:
    """The rule's annotations with ``$value``, ``$value_percent``,
    ``$threshold``, ``$rule``, ``$severity``, ``$route`` and ``$method`` (the
    group's, else the rule's filter) filled in (``string.Template``: no
    attribute or item access, so a rule from the API cannot reach into
    objects)."""
    names: dict[str, Any] = {
        "rule": rule.name,
        "severity": rule.severity,
        "threshold": f"{rule.threshold:g}",
        "value": "no data" if value is None else f"{value:.4g}",
        "value_percent": "no data" if value is None else f"{value * 100:.3g} %",
        # A rule's own filter, where no group label says more.
        "route": rule.route or "",
        "method": rule.method or "",
    }
    names.update(group)
    return {
        key: string.Template(text).safe_substitute(names) for key, text in rule.annotations.items()
    }


def _transition(
    rule: AlertRule,
    instance: Instance,
    kind: str,
    from_state: str,
    now: float,
    *,
    notify: bool,
    to_state: str | None = None,
    episode: str | None = None,
) -> Transition:
    return Transition(
        rule=rule.name, group=instance.group, kind=kind, from_state=from_state,
        to_state=kind if to_state is None else to_state, at=now, value=instance.value,
        severity=rule.severity, episode=instance.episode if episode is None else episode,
        notify=notify,
        labels=alert_labels(rule, instance.group),
        annotations=render(rule, instance.group, instance.value),
    )  # fmt: skip
