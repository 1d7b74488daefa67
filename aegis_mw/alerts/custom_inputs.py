"""The figures of rules over the app's own metrics (``rules.CUSTOM_INPUTS``).

A rule names a metric (``metric``), the label values its series must have
(``match``) and the labels its alerts are grouped by (``group_by``); its
window is read from the metric's stored changes (see
:mod:`aegis_mw.core.custom_history`), which every process of the app adds
to the same store, at the rule's resolution, with the same settling as the
request rollups. The arithmetic is the chart's
(:mod:`aegis_mw.history.custom_series`), so a rule fires on what the
dashboard and ``custom-metric-history`` show.

A metric not stored yet is "no data" (it may not have changed since the app
started); an input that does not fit the metric's kind, or a label it does
not have, is an error in the rule's health, named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..core.custom_history import CustomRow
from ..core.custom_metrics import MetricSnapshot
from ..history.custom_series import Point, figures, find_metric, fits
from ..history.ranges import QueryError
from .figures import Collected, Group, WindowFigures, window_of
from .rules import CUSTOM_INPUTS, AlertRule

#: The metric kinds each input reads.
KINDS = {
    "custom_increase": ("counter", "histogram"),
    "custom_rate": ("counter", "histogram"),
    "custom_value": ("gauge",),
    **dict.fromkeys(("custom_avg", "custom_p50", "custom_p95", "custom_p99"), ("histogram",)),
}


#: Stored rows one rule's window may read in one evaluation, and all the
#: custom rules of one evaluation together.
MAX_RULE_ROWS = 100_000
MAX_EVALUATION_ROWS = 300_000


class CustomInputError(ValueError):
    """The rule cannot read its metric as it is declared."""


class RowBudget:
    """Rows the custom rules may read in all, across evaluations (a dry
    run's replay: each of its steps reads every window again)."""

    def __init__(self, rows: int) -> None:
        self.left = rows


def custom_figures(
    reader: Any,
    rules: Sequence[AlertRule],
    now: float,
    settle: float,
    budget: RowBudget | None = None,
) -> Collected:
    """The figures of every rule over a custom input, by rule name: per
    group, a window whose value is the rule's input (None: no data). Each
    rule reads at most :data:`MAX_RULE_ROWS` rows, and all of them together
    at most what ``budget`` has left (:data:`MAX_EVALUATION_ROWS` without
    one)."""
    rules = [rule for rule in rules if rule.input in CUSTOM_INPUTS]
    out: Collected = {}
    if not rules:
        return out
    if budget is None:  # one evaluation's: every rule reads its whole window each time
        budget = RowBudget(MAX_EVALUATION_ROWS)
    read_metrics = getattr(reader, "read_custom_metrics", None)
    read_rows = getattr(reader, "read_custom_rollups", None)
    if read_metrics is None or read_rows is None:
        missing = CustomInputError("the history store keeps none of the app's own metrics")
        return dict.fromkeys((rule.name for rule in rules), missing)
    try:
        stored = read_metrics()
    except Exception as exc:  # the store's problem, reported as the rules' health
        return dict.fromkeys((rule.name for rule in rules), exc)
    for rule in rules:
        try:
            out[rule.name] = _rule_figures(read_rows, rule, stored, now, settle, budget)
        except Exception as exc:
            out[rule.name] = exc
    return out


def _rule_figures(
    read: Any,
    rule: AlertRule,
    stored: Sequence[MetricSnapshot],
    now: float,
    settle: float,
    budget: RowBudget | None,
) -> dict[Group, WindowFigures]:
    seconds = float(rule.window)
    assert rule.metric is not None  # a custom input's rule has one
    try:
        metric = find_metric(rule.metric, stored, ())
    except QueryError:  # nothing stored of it yet
        return {} if rule.group_by else {(): WindowFigures(seconds, custom=None, custom_read=True)}
    if metric.kind not in KINDS[rule.input]:
        raise CustomInputError(
            f"{rule.input} reads a {' or a '.join(KINDS[rule.input])}; "
            f"{metric.name} is a {metric.kind}"
        )
    for label in (*rule.group_by, *rule.match):
        if label not in metric.labels:
            known = ", ".join(metric.labels) or "none"
            raise CustomInputError(f"{metric.name} has no label {label!r} (its labels: {known})")
    start, end = window_of(rule, now, settle)
    spent = (
        "the rows this evaluation (or replay) may read were all read by the rules before it: "
        "fewer custom rules, or shorter windows (or replay less time)"
    )
    cap = MAX_RULE_ROWS if budget is None else min(MAX_RULE_ROWS, budget.left)
    if cap <= 0:
        raise CustomInputError(spent)
    rows: list[CustomRow] = read(metric.name, rule.resolution, start, end, cap + 1)
    if budget is not None:
        budget.left -= len(rows)
    if len(rows) > cap:
        if cap < MAX_RULE_ROWS:  # the replay's budget ran out, not the rule's bound
            raise CustomInputError(spent)
        # Every label set's rows are read (``match`` is applied to them), so
        # only a shorter window reads fewer.
        raise CustomInputError(
            f"its window holds more than {cap:,} stored changes of {metric.name} "
            "(every label set's): a shorter window reads fewer"
        )
    points: dict[Group, Point] = {} if rule.group_by else {(): Point()}
    for row in rows:
        values = json.loads(row.labels)
        if len(values) != len(metric.labels) or not fits(metric, row):
            continue  # stored under another declaration of the name
        labels = dict(zip(metric.labels, map(str, values), strict=True))
        if any(labels[key] != value for key, value in rule.match.items()):
            continue
        group: Group = tuple((label, labels[label]) for label in rule.group_by)
        point = points.get(group)
        if point is None:
            point = points[group] = Point()
        point.add(row, rule.resolution)
    return {
        group: WindowFigures(seconds, custom=_value(rule, metric, point, seconds), custom_read=True)
        for group, point in points.items()
    }


def _value(rule: AlertRule, metric: MetricSnapshot, point: Point, seconds: float) -> float | None:
    name = rule.input
    if name in ("custom_increase", "custom_rate"):
        increase = float(point.count) if metric.kind == "histogram" else point.total
        value: float | None = increase if name == "custom_increase" else increase / seconds
    else:
        found = figures(metric, point, seconds)
        value = found[{"custom_value": "value", "custom_avg": "avg"}.get(name, name[7:])]
    # Past a float's range is no figure to compare (nor to show as JSON).
    return value if value is None or math.isfinite(value) else None
