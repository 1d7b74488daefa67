"""Alert rules: what is watched, over which window, and when it fires.

A rule is declared in code (:class:`AlertRule`) or as a mapping from a
settings file or the API (:func:`rule_from_mapping`); either way every field
is checked when the rule is made, and a bad one raises :class:`RuleError`
naming the rule, the field, the value and what is allowed, so a mistake
stops the app at start instead of silencing an alert later.

Inputs are read from the stored rollups (see :mod:`.figures`); ratios are
fractions (``0.05`` is 5 %), latencies milliseconds, rates per second.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..core.errors import ConfigError
from ..core.labels import STANDARD_METHODS
from ..core.record import OTHER_METHOD
from ..core.rollup import LEVELS

#: Inputs whose value is a fraction of the window's requests (0..1).
RATIO_INPUTS = (
    "error_ratio", "rate_limited_ratio", "status_1xx_ratio", "status_2xx_ratio",
    "status_3xx_ratio", "status_4xx_ratio", "status_5xx_ratio",
)  # fmt: skip
#: Inputs read from the window's latency histogram, in milliseconds.
LATENCY_INPUTS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms")
#: Inputs counted per second over the window.
RATE_INPUTS = ("request_rate", "error_rate", "rate_limited_rate")
#: Inputs read from the app's present state, not from the rollups (their
#: window is not used; see :mod:`.reports`):
#:
#: - ``channel_disabled``: 1 for each channel disabled after a failure every
#:   notice would meet, else 0;
#: - ``health_check_failing``: per health check, how many of the app's
#:   processes last saw it fail (or time out);
#: - ``readiness_failing``: the same for the critical checks only, those
#:   that make ``/health/ready`` answer 503;
#: - ``sink_failing``: per sink, how many processes fail to write to it now;
#: - ``records_dropped``: records the app's processes reported dropped (a
#:   full buffer, a sink's backlog) since the evaluating process's previous
#:   reading.
STATE_INPUTS = (
    "channel_disabled", "health_check_failing", "readiness_failing", "sink_failing",
    "records_dropped",
)  # fmt: skip
#: Inputs read from the app's own metric ``metric`` in the stored history
#: (see :mod:`aegis_mw.core.custom_history`), over the window:
#:
#: - ``custom_increase``: a counter's increase, a histogram's observations;
#: - ``custom_rate``: the same per second;
#: - ``custom_value``: a gauge's time average of the processes' sum (its
#:   ``multiprocess_mode`` "sum"), or its greatest ("max") or least ("min")
#:   sample;
#: - ``custom_avg``, ``custom_p50``, ``custom_p95``, ``custom_p99``: a
#:   histogram's average and percentiles, in its own unit.
CUSTOM_INPUTS = (
    "custom_increase", "custom_rate", "custom_value", "custom_avg", "custom_p50",
    "custom_p95", "custom_p99",
)  # fmt: skip
#: Inputs read from the stored rollups.
ROLLUP_INPUTS = RATIO_INPUTS + LATENCY_INPUTS + RATE_INPUTS
INPUTS = ROLLUP_INPUTS + STATE_INPUTS + CUSTOM_INPUTS

OPERATORS = (">", ">=", "<", "<=")
SEVERITIES = ("info", "warning", "error", "critical")
GROUP_LABELS = ("route", "method")
#: The labels a state input's alerts are grouped by.
STATE_GROUP_LABELS = {
    "channel_disabled": ("channel",), "health_check_failing": ("check",),
    "readiness_failing": ("check",), "sink_failing": ("sink",), "records_dropped": (),
}  # fmt: skip
#: Inputs whose firings an alert over ``readiness_failing`` holds back by
#: default while it fires (the errors and the latency of an app that says
#: it is not ready are its symptoms).
READINESS_INHIBITED = (
    "error_ratio", "error_rate", "status_5xx_ratio", *LATENCY_INPUTS,
)  # fmt: skip
#: What happens when a window holds fewer than ``min_requests`` requests.
NO_DATA_POLICIES = ("nodata", "ok", "alerting", "keep_last")

#: The finest stored resolution whose window holds at most this many
#: buckets is read (a 1 h window is read as 60 one-minute rows per route,
#: not 720 five-second ones).
MAX_BUCKETS = 360
#: The longest window: a day, read at five-minute resolution.
MAX_WINDOW = 86_400.0
#: The longest ``for``/``keep_firing_for``: a week.
MAX_HOLD = 7 * 86_400.0

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,127}")
#: A metric's name, as Prometheus allows it.
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,199}")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?")
_ANNOTATIONS = ("summary", "description", "runbook_url")
#: Labels every alert has (its name, severity, group): a rule cannot set them.
_RESERVED_LABELS = frozenset({"alertname", "severity", "channel", "check", "sink", *GROUP_LABELS})
#: Names a custom input's group labels cannot have: the alert's own labels,
#: ``channel`` (an alert about a channel is not sent to it), and the names
#: annotations fill in themselves.
_ALERT_LABELS = frozenset(
    {"alertname", "severity", "channel", "value", "value_percent", "threshold", "rule"}
)
_METHODS = (*sorted(STANDARD_METHODS), OTHER_METHOD)
_TEXT_LIMIT = 2048


class RuleError(ConfigError):
    """A rule field is invalid: names the rule, the field, the value and what
    is allowed."""

    def __init__(self, rule: str, field_name: str, value: Any, allowed: str) -> None:
        self.rule = rule
        self.field = field_name
        super().__init__(f"alert rule {rule!r} field {field_name!r}", value, allowed)
        self.args = (f"alert rule {rule!r}: {field_name} = {value!r} is invalid: {allowed}",)


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or a text such as ``'90s'``,
    ``'5m'``, ``'1h30m'``, ``'1d'``; raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("a duration, not a boolean")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("a number of seconds within a week") from None
    elif isinstance(value, str):
        text = value.strip()
        match = _DURATION.fullmatch(text)
        if not text or match is None:
            raise ValueError("a number of seconds or a text like '30s', '5m', '1h30m'")
        days, hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = float(days * 86400 + hours * 3600 + minutes * 60 + secs)
    else:
        raise ValueError("a number of seconds or a text like '30s', '5m', '1h30m'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a finite number of seconds, zero or more")
    return seconds


def resolution_for(window: float) -> int:
    """The stored resolution a window is read at: the finest whose window
    holds at most :data:`MAX_BUCKETS` buckets."""
    for level in LEVELS:
        if window / level <= MAX_BUCKETS:
            return level
    return LEVELS[-1]


@dataclass(frozen=True)
class AlertRule:
    """One alert rule.

    Example::

        AlertRule(
            name="checkout_errors", input="error_ratio", operator=">",
            threshold=0.05, window="5m", for_="2m", route="/checkout",
            severity="critical",
            annotations={"summary": "$route fails $value_percent of requests"},
        )

    ``group_by=("route",)`` gives one alert instance per route (and
    ``("route", "method")`` per route and method); without it, one instance
    for everything the filters keep. ``resolve_threshold`` (hysteresis by
    value) keeps a firing alert firing until the value is past it on the
    clear side; ``keep_firing_for`` (hysteresis by time) until it has been
    clear that long. Below ``min_requests`` requests a window is "no data"
    for ratio and latency inputs (rates are data at any count), handled as
    ``no_data`` says: ``nodata`` (the default: no notice; a firing alert
    stays firing, since silence is no proof of recovery; a pending one
    starts over), ``ok`` (as if clear), ``alerting`` (as if breaching) or
    ``keep_last`` (as the last window with data).
    """

    name: str
    input: str
    operator: str
    threshold: float
    window: Any = "5m"
    for_: Any = 0.0
    keep_firing_for: Any = 0.0
    resolve_threshold: float | None = None
    min_requests: int = 10
    no_data: str = "nodata"
    route: str | None = None
    method: str | None = None
    group_by: tuple[str, ...] = ()
    severity: str = "warning"
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: The app's own metric a custom input reads (a counter's name with or
    #: without ``_total``), and the label values its series must have.
    metric: str | None = None
    match: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise RuleError(
                str(name), "name", name,
                "letters, digits, '_', '.', ':' or '-', starting with a letter or '_', "
                "at most 128 characters",
            )  # fmt: skip
        self._check_choice("input", INPUTS)
        self._check_choice("operator", OPERATORS)
        self._check_choice("severity", SEVERITIES)
        self._check_choice("no_data", NO_DATA_POLICIES)
        threshold = self._number("threshold", self.threshold)
        resolve = self.resolve_threshold
        if resolve is not None:
            resolve = self._number("resolve_threshold", resolve)
            # The clear side of the threshold: a resolve threshold on the
            # breaching side would resolve an alert that still breaches.
            clear_side = resolve <= threshold if self.operator[0] == ">" else resolve >= threshold
            if not clear_side:
                side = "at or below" if self.operator[0] == ">" else "at or above"
                raise RuleError(
                    name, "resolve_threshold", resolve,
                    f"{side} the threshold ({threshold:g}) for operator {self.operator!r}",
                )  # fmt: skip
        if self.input in RATIO_INPUTS:
            for key, bound in (("threshold", threshold), ("resolve_threshold", resolve)):
                if bound is not None and not 0.0 <= bound <= 1.0:
                    raise RuleError(
                        name, key, bound, "a fraction from 0 to 1 for a ratio (0.05 is 5 %)"
                    )
        window = self._duration("window", self.window, 5.0, MAX_WINDOW)
        resolution = resolution_for(window)
        if window % resolution:
            raise RuleError(
                name, "window", self.window,
                f"a multiple of {resolution} s for a window this long "
                f"(the rollups it is read from are {resolution} s buckets)",
            )  # fmt: skip
        hold = self._duration("for", self.for_, 0.0, MAX_HOLD)
        keep = self._duration("keep_firing_for", self.keep_firing_for, 0.0, MAX_HOLD)
        if (
            isinstance(self.min_requests, bool)
            or not isinstance(self.min_requests, int)
            or not 0 <= self.min_requests <= 1_000_000_000
        ):
            raise RuleError(name, "min_requests", self.min_requests, "an integer from 0 to 10**9")
        route = self.route
        if route is not None and (not isinstance(route, str) or not route.startswith(("/", "<"))):
            raise RuleError(
                name, "route", route, "a route template as recorded, such as '/items/{id}'"
            )
        method = self.method
        if method is not None:
            method = method.upper() if isinstance(method, str) else method
            if method not in _METHODS:
                raise RuleError(name, "method", self.method, f"one of {', '.join(_METHODS)}")
        group_by: Any = self.group_by  # a text or a list from a settings file
        match = self._custom_metric()
        if self.input in CUSTOM_INPUTS:
            if not isinstance(group_by, (list, tuple)) or not all(
                isinstance(g, str) and _LABEL_NAME.fullmatch(g) and g not in _ALERT_LABELS
                for g in group_by
            ):
                raise RuleError(
                    name, "group_by", group_by,
                    "a list of the metric's label names (not "
                    f"{', '.join(sorted(_ALERT_LABELS))})",
                )  # fmt: skip
        else:
            allowed = STATE_GROUP_LABELS.get(self.input, GROUP_LABELS)
            if not isinstance(group_by, (list, tuple)) or not all(
                isinstance(g, str) and g in allowed for g in group_by
            ):
                raise RuleError(
                    name, "group_by", group_by, f"a list of {', '.join(allowed)} (or empty)"
                )
        if self.input in STATE_INPUTS or self.input in CUSTOM_INPUTS:
            for key in ("route", "method"):
                if getattr(self, key) is not None:
                    raise RuleError(
                        name, key, getattr(self, key), f"none: {self.input} is not per request"
                    )
        if len(set(group_by)) != len(tuple(group_by)):
            raise RuleError(name, "group_by", group_by, "each label once")
        labels = self._texts("labels", self.labels, None)
        annotations = self._texts("annotations", self.annotations, _ANNOTATIONS)
        set_ = object.__setattr__
        set_(self, "threshold", threshold)
        set_(self, "resolve_threshold", resolve)
        set_(self, "window", window)
        set_(self, "for_", hold)
        set_(self, "keep_firing_for", keep)
        set_(self, "group_by", tuple(group_by))
        set_(self, "method", method)
        set_(self, "labels", labels)
        set_(self, "annotations", annotations)
        set_(self, "match", match)

    @property
    def resolution(self) -> int:
        """The stored resolution the window is read at."""
        return resolution_for(self.window)

    @property
    def needs_requests(self) -> bool:
        """Whether fewer than ``min_requests`` requests make the window "no data"."""
        return self.input in RATIO_INPUTS or self.input in LATENCY_INPUTS

    def breaches(self, value: float) -> bool:
        """Whether ``value`` meets the firing condition."""
        return _compare(self.operator, value, self.threshold)

    def clears(self, value: float) -> bool:
        """Whether a firing alert's ``value`` is on the clear side: past the
        resolve threshold when there is one, else no longer breaching."""
        if self.resolve_threshold is None:
            return not self.breaches(value)
        return not _compare(self.operator, value, self.resolve_threshold)

    def to_mapping(self) -> dict[str, Any]:
        """The rule as :func:`rule_from_mapping` takes it (``for``, not ``for_``;
        ``metric`` and ``match`` only for a custom input)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            if item.name in ("metric", "match") and self.input not in CUSTOM_INPUTS:
                continue
            value = getattr(self, item.name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out["for" if item.name == "for_" else item.name] = value
        return out

    # -- checks -------------------------------------------------------------------
    def _custom_metric(self) -> Mapping[str, str]:
        """Check ``metric`` and ``match``: required and allowed for a custom
        input only. Returns ``match`` as a plain dict."""
        metric, match = self.metric, self.match
        if self.input not in CUSTOM_INPUTS:
            if metric is not None or match:
                key = "metric" if metric is not None else "match"
                raise RuleError(
                    self.name, key, getattr(self, key),
                    f"none: only the custom inputs ({', '.join(CUSTOM_INPUTS)}) read a metric",
                )  # fmt: skip
            return {}
        if not isinstance(metric, str) or not _METRIC.fullmatch(metric):
            raise RuleError(
                self.name, "metric", metric,
                "the name of one of the app's own metrics ([a-zA-Z_:][a-zA-Z0-9_:]*)",
            )  # fmt: skip
        if not isinstance(match, Mapping) or not all(
            isinstance(key, str)
            and _LABEL_NAME.fullmatch(key)
            and isinstance(value, str)
            and len(value) <= _TEXT_LIMIT
            for key, value in match.items()
        ):
            raise RuleError(
                self.name, "match", match,
                "a mapping of the metric's label names to the values its series must have",
            )  # fmt: skip
        return dict(match)

    def _check_choice(self, key: str, allowed: tuple[str, ...]) -> None:
        value = getattr(self, key)
        if value not in allowed:
            raise RuleError(self.name, key, value, f"one of {', '.join(allowed)}")

    def _number(self, key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RuleError(self.name, key, value, "a number")
        try:
            number = float(value)
        except OverflowError:
            raise RuleError(self.name, key, value, "a finite number") from None
        if not math.isfinite(number):
            raise RuleError(self.name, key, value, "a finite number")
        return number

    def _duration(self, key: str, value: Any, low: float, high: float) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise RuleError(self.name, key, value, str(exc)) from None
        if not low <= seconds <= high:
            raise RuleError(self.name, key, value, f"from {low:g} s to {high:g} s")
        return seconds

    def _texts(self, key: str, value: Any, names: tuple[str, ...] | None) -> Mapping[str, str]:
        if not isinstance(value, Mapping):
            raise RuleError(self.name, key, value, "a mapping of names to texts")
        for name, text in value.items():
            if names is not None and name not in names:
                raise RuleError(self.name, key, name, f"one of {', '.join(names)}")
            if names is None and (not isinstance(name, str) or not _LABEL_NAME.fullmatch(name)):
                raise RuleError(
                    self.name, key, name, "label names of letters, digits and '_' (64 at most)"
                )
            if names is None and name in _RESERVED_LABELS:
                raise RuleError(
                    self.name, key, name,
                    f"a name of your own: {', '.join(sorted(_RESERVED_LABELS))} are the alert's",
                )  # fmt: skip
            if not isinstance(text, str) or len(text) > _TEXT_LIMIT:
                raise RuleError(
                    self.name, f"{key}.{name}", text, f"a text of at most {_TEXT_LIMIT} characters"
                )
        return dict(value)


def _compare(operator: str, value: float, threshold: float) -> bool:
    if operator == ">":
        return value > threshold
    if operator == ">=":
        return value >= threshold
    if operator == "<":
        return value < threshold
    return value <= threshold


_FIELD_NAMES = {("for" if f.name == "for_" else f.name): f.name for f in fields(AlertRule)}


def rule_from_mapping(data: Any, where: str = "") -> AlertRule:
    """An :class:`AlertRule` from a mapping (a settings file's table, an API
    body): the same names as the class, ``for`` for ``for_``. Unknown keys
    are refused by name."""
    if not isinstance(data, Mapping):
        raise RuleError(where or "?", "(rule)", data, "a mapping of rule fields")
    name = data.get("name")
    label = name if isinstance(name, str) else (where or "?")
    unknown = sorted(str(key) for key in data if key not in _FIELD_NAMES)
    if unknown:
        raise RuleError(label, unknown[0], data[unknown[0]], f"one of {', '.join(_FIELD_NAMES)}")
    missing = [key for key in ("name", "input", "operator", "threshold") if key not in data]
    if missing:
        raise RuleError(label, missing[0], None, "required")
    arguments = {_FIELD_NAMES[key]: value for key, value in data.items()}
    group_by = arguments.get("group_by")
    if isinstance(group_by, list):
        arguments["group_by"] = tuple(group_by)
    return AlertRule(**arguments)


def rules_from_config(data: Any, where: str = "alert_rules") -> tuple[AlertRule, ...]:
    """Rules from a list of mappings (the ``alert_rules`` table of a settings
    file); names must be unique."""
    if isinstance(data, Mapping) or not isinstance(data, (list, tuple)):
        raise RuleError(where, "(rules)", data, "a list of rule mappings")
    rules = tuple(
        item if isinstance(item, AlertRule) else rule_from_mapping(item, f"{where}[{index}]")
        for index, item in enumerate(data)
    )
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise RuleError(rule.name, "name", rule.name, "a name no other rule has")
        seen.add(rule.name)
    return rules
