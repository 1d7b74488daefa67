"""Timelines for the evaluator: rules fed made-up window figures at made-up
times, as ``promtool test rules`` feeds Prometheus rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aegis_mw.alerts import AlertRule, Instance, Transition, WindowFigures, evaluate
from aegis_mw.alerts.evaluator import Key
from aegis_mw.alerts.figures import Collected, Group
from aegis_mw.core import histogram

START = 1_800_000_000.0
INTERVAL = 10.0


def window(
    rule: AlertRule, requests: int = 0, errors: int = 0, slow_ms: float = 0.0
) -> WindowFigures:
    """A window of ``requests`` requests, ``errors`` of them failed, every one
    taking ``slow_ms`` (1 ms when not given)."""
    figures = WindowFigures(float(rule.window), requests=requests, errors=errors)
    figures.classes[1] = requests - errors
    figures.classes[4] = errors
    duration = slow_ms or 1.0
    if requests:
        figures.latency[histogram.bucket_index(duration)] = requests
        figures.duration_min = figures.duration_max = duration
    return figures


def ratio(rule: AlertRule, value: float | None, requests: int = 1000) -> dict[Group, WindowFigures]:
    """Figures whose error ratio is ``value``; None: a window with 1 request."""
    if value is None:
        return {(): window(rule, 1, 1)}
    return {(): window(rule, requests, round(value * requests))}


@dataclass
class Timeline:
    rules: Sequence[AlertRule]
    max_step: float = 2 * INTERVAL
    now: float = START
    instances: dict[Key, Instance] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    health: dict[str, str] = field(default_factory=dict)

    def step(
        self, figures: Collected | Mapping[str, Any], after: float = INTERVAL
    ) -> list[Transition]:
        self.now += after
        before = dict(self.instances)
        result = evaluate(self.rules, self.instances, dict(figures), self.now, self.max_step)
        assert self.instances == before, "evaluate changed its input"
        self.instances = result.instances
        self.transitions.extend(result.transitions)
        self.health = result.health
        return result.transitions

    def state(self, rule: str = "errors", group: Group = ()) -> str:
        instance = self.instances.get((rule, group))
        return "absent" if instance is None else instance.state

    def notices(self) -> list[tuple[str, str]]:
        return [(t.kind, t.to_state) for t in self.transitions if t.notify]
