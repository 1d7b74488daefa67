"""Alert rules as Prometheus alerting rules over our own ``/metrics`` series.

Pure functions, standard library only: :func:`prometheus_rules` writes the
rules as a Prometheus rule file (one group, ``aegis_mw``) and
:func:`promtool_tests` a ``promtool test rules`` file for each rule's basic
lifecycle (pending, then firing with its labels and annotations)::

    text = prometheus_rules(settings.alert_rules, namespace=settings.metrics_namespace)

The expressions read ``<namespace>_http_requests_total{method,route,status}``
and ``<namespace>_http_request_duration_seconds_bucket{method,route,le}``
(see :mod:`aegis_mw.exposition.families`): ratios as
``sum(rate(bad[w])) / sum(rate(all[w]))``, percentiles by
``histogram_quantile`` over the duration buckets (in milliseconds, as our
rules count them), rates as ``sum(rate(...[w]))``. What PromQL cannot say the
way the evaluator does (no-data policies, hysteresis by value, our finer
latency histogram) is written as a comment beside the rule, never dropped
silently.

The YAML is written by hand (PyYAML is an optional extra): every text is a
JSON string, which is a valid YAML double-quoted scalar, with the characters
YAML does not allow unescaped escaped.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..core.labeled import DEFAULT_BUCKETS
from .rules import CUSTOM_INPUTS, LATENCY_INPUTS, RATE_INPUTS, RATIO_INPUTS, AlertRule

GROUP = "aegis_mw"
#: The inputs /metrics has the series of (others are read from aegis's own
#: state: they are named in a comment, not exported).
EXPORTED_INPUTS = RATIO_INPUTS + LATENCY_INPUTS + RATE_INPUTS
#: The evaluation interval of the generated promtool tests (longer when a
#: rule's ``for`` is long: a test of at most about TEST_EVALUATIONS evaluations).
TEST_EVALUATION = 15
TEST_EVALUATIONS = 1000
_QUANTILES = {"latency_p50_ms": 0.5, "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}
#: The status matcher of each ratio's and rate's numerator (None: every request).
_STATUS = {
    "error_ratio": "5..", "error_rate": "5..", "rate_limited_ratio": "429",
    "rate_limited_rate": "429", "request_rate": None,
    **{f"status_{n}xx_ratio": f"{n}.." for n in range(1, 6)},
}  # fmt: skip
# What YAML may not hold unescaped in a double-quoted scalar (JSON escapes the
# C0 controls already): DEL, C1 controls, the line and paragraph separators.
_UNPRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def requests_series(namespace: str = "aegis") -> str:
    return f"{namespace}_http_requests_total"


def duration_buckets_series(namespace: str = "aegis") -> str:
    return f"{namespace}_http_request_duration_seconds_bucket"


def yaml_text(text: str) -> str:
    """``text`` as a YAML double-quoted scalar."""
    quoted = json.dumps(text, ensure_ascii=False)
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", quoted)


def duration(seconds: float) -> str:
    """A Prometheus duration: ``5m``, ``1h``, ``90s``, ``1d``, ``500ms``."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _selector(name: str, rule: AlertRule, status: str | None = None) -> str:
    matchers = [f"{label}={json.dumps(value, ensure_ascii=False)}"
                for label, value in (("route", rule.route), ("method", rule.method))
                if value is not None]  # fmt: skip
    if status is not None:
        matchers.append(f"status={json.dumps(status)}" if status.isdigit() else
                        f"status=~{json.dumps(status)}")  # fmt: skip
    return f"{name}{{{','.join(matchers)}}}" if matchers else name


def _sum(rule: AlertRule, inner: str, extra: Sequence[str] = ()) -> str:
    labels = [*extra, *rule.group_by]
    return f"sum by ({', '.join(labels)}) ({inner})" if labels else f"sum({inner})"


def _rate(rule: AlertRule, series: str, status: str | None = None) -> str:
    return f"rate({_selector(series, rule, status)}[{duration(rule.window)}])"


def expression(rule: AlertRule, namespace: str = "aegis") -> str:
    """The rule's condition as PromQL over our ``/metrics`` series."""
    requests = requests_series(namespace)
    everything = _sum(rule, _rate(rule, requests))
    if rule.input in LATENCY_INPUTS:
        buckets = _sum(rule, _rate(rule, duration_buckets_series(namespace)), ("le",))
        value = f"histogram_quantile({_QUANTILES[rule.input]}, {buckets}) * 1000"
    else:
        status = _STATUS[rule.input]
        value = everything if status is None else _sum(rule, _rate(rule, requests, status))
        # No series of the numerator is a value of 0, which breaches a rule
        # such as "error_rate < 1": filled in for the groups (or the total).
        if rule.breaches(0.0) and status is not None:
            fill = (
                f"{everything} * 0" if rule.group_by or rule.input in RATIO_INPUTS else "vector(0)"
            )
            value = f"({value} or {fill})"
        elif rule.breaches(0.0) and not rule.group_by:
            value = f"({value} or vector(0))"
        if rule.input in RATIO_INPUTS:
            value = f"{value} / {everything}"
    condition = f"{value} {rule.operator} {float(rule.threshold)!r}"
    if rule.needs_requests and rule.min_requests > 0:
        window = round(rule.window)
        condition = f"({condition}) and ({everything} * {window} >= {rule.min_requests})"
    return condition


# -- annotations ------------------------------------------------------------------
# A template as segments: ("text", literal) or an action ("value" / "percent" /
# "label", name).
Segment = tuple[str, str]


def _segments(rule: AlertRule, text: str) -> list[Segment]:
    """Our ``string.Template`` text (see :func:`.evaluator.render`) as segments."""
    constants = {"threshold": f"{rule.threshold:g}", "rule": rule.name, "severity": rule.severity}
    out: list[Segment] = []
    position = 0
    for match in string.Template.pattern.finditer(text):
        out.append(("text", text[position : match.start()]))
        position = match.end()
        name = match.group("named") or match.group("braced")
        if match.group("escaped") is not None:
            out.append(("text", "$"))
        elif name == "value":
            out.append(("value", ""))
        elif name == "value_percent":
            out.append(("percent", ""))
        elif name in constants:
            out.append(("text", constants[name]))
        elif name in ("route", "method"):
            if name in rule.group_by:
                out.append(("label", name))
            else:  # the rule's own filter, as the evaluator fills it in
                out.append(("text", getattr(rule, name) or ""))
        else:  # unknown or invalid: left as written, as safe_substitute does
            out.append(("text", match.group(0)))
    out.append(("text", text[position:]))
    merged: list[Segment] = []
    for kind, payload in out:
        if kind == "text" and merged and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + payload)
        elif kind != "text" or payload:
            merged.append((kind, payload))
    return merged


_ACTIONS = {
    "value": '{{ $value | printf "%.4g" }}',
    "percent": "{{ $value | humanizePercentage }}",
}


def go_literal(text: str, action_follows: bool = False) -> str:
    """Literal text in a Go template: a ``{`` that would open an action is
    written as the action ``{{ "{" }}``."""
    if "{{" in text or (action_follows and text.endswith("{")):
        return text.replace("{", '{{ "{" }}')
    return text


def template(segments: Sequence[Segment]) -> str:
    """Segments as a Prometheus (Go text/template) annotation."""
    parts = []
    for index, (kind, payload) in enumerate(segments):
        if kind == "text":
            follows = index + 1 < len(segments)
            parts.append(go_literal(payload, follows))
        elif kind == "label":
            parts.append(f"{{{{ $labels.{payload} }}}}")
        else:
            parts.append(_ACTIONS[kind])
    return "".join(parts)


def rendered(segments: Sequence[Segment], value: float, labels: Mapping[str, str]) -> str:
    """What Prometheus renders the segments to, for an alert of ``value``."""
    parts = []
    for kind, payload in segments:
        if kind == "text":
            parts.append(payload)
        elif kind == "label":
            parts.append(labels.get(payload, ""))
        elif kind == "value":
            parts.append(f"{value:.4g}")
        else:
            parts.append(f"{value * 100:.4g}%")
    return "".join(parts)


def alert_annotations(rule: AlertRule) -> dict[str, str]:
    """The rule's annotations as Prometheus templates."""
    return {key: template(_segments(rule, text)) for key, text in rule.annotations.items()}


# -- notes --------------------------------------------------------------------------
def notes(rule: AlertRule, buckets: Sequence[float] = DEFAULT_BUCKETS) -> list[str]:
    """What the exported rule does differently from the evaluator."""
    out = []
    if rule.input in ("error_ratio", "error_rate"):
        out.append(
            "errors are 5xx responses here; aegis also counts a request whose app raised "
            "after a 2xx-4xx response started"
        )
    if rule.input in LATENCY_INPUTS:
        top = max(buckets) * 1000 if buckets else 0.0
        out.append(
            "the percentile is interpolated within the /metrics histogram buckets "
            "(metrics_buckets), coarser than aegis's 2 % buckets, and never above "
            f"the last finite bucket ({top:g} ms)"
        )
        if rule.operator[0] == ">" and rule.threshold >= top:
            out.append(f"the threshold is at or above {top:g} ms: this rule can never fire here")
    if rule.resolve_threshold is not None:
        out.append(
            f"resolve_threshold {rule.resolve_threshold:g} is not expressible: Prometheus "
            "resolves as soon as expr no longer holds (keep_firing_for holds by time)"
        )
    if rule.needs_requests and rule.no_data != "ok":
        out.append(
            f"no_data {rule.no_data!r} is not expressible: below min_requests "
            f"({rule.min_requests}) the expression is empty, so a firing alert resolves"
            " (as no_data 'ok' would)"
        )
    if rule.window < 60:
        out.append(
            f"rate() needs two scrapes within the {duration(rule.window)} window: "
            "scrape at least twice as often"
        )
    if rule.min_requests > 0 and rule.needs_requests:
        out.append("min_requests is compared with rate() times the window: an extrapolated count")
    return out


_HEADER = """\
# Prometheus alerting rules made by `aegis-mw alerts export --prometheus-rules`
# from {count} aegis_mw alert rule(s), over the series aegis_mw serves on /metrics:
#   {requests}{{method,route,status}}
#   {buckets}{{method,route,le}}
# Check it with: promtool check rules FILE
#
# Everywhere: Prometheus evaluates over scraped counters with rate() (which
# extrapolates), not over aegis's stored rollups; it has no flapping detection,
# no 10 s settle time, and pending timers that restart when Prometheus does.
# keep_firing_for needs Prometheus 2.42 or later.
"""


def prometheus_rules(
    rules: Iterable[AlertRule],
    *,
    namespace: str = "aegis",
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> str:
    """The rules as a Prometheus alerting-rules file (one group, ``aegis_mw``)."""
    rules = list(rules)
    lines = [
        _HEADER.format(
            count=len(rules),
            requests=requests_series(namespace),
            buckets=duration_buckets_series(namespace),
        ),
        "groups:",
        f"  - name: {GROUP}",
        "    rules:" if any(r.input in EXPORTED_INPUTS for r in rules) else "    rules: []",
    ]
    for rule in rules:
        if rule.input in CUSTOM_INPUTS:
            lines.append(
                f"      # {rule.name}: not exported: its input {rule.input!r} reads the stored "
                f"history of the app's metric {rule.metric}; its series are on /metrics"
            )
            continue
        if rule.input not in EXPORTED_INPUTS:
            lines.append(
                f"      # {rule.name}: not exported: its input {rule.input!r} is read from "
                "aegis's own state, not from the series of /metrics"
            )
            continue
        lines += [f"      # {rule.name}: {note}" for note in notes(rule, buckets)]
        lines.append(f"      - alert: {yaml_text(rule.name)}")
        lines.append(f"        expr: {yaml_text(expression(rule, namespace))}")
        if rule.for_ > 0:
            lines.append(f"        for: {duration(rule.for_)}")
        if rule.keep_firing_for > 0:
            lines.append(f"        keep_firing_for: {duration(rule.keep_firing_for)}")
        lines.append("        labels:")
        for key, value in _labels(rule).items():
            lines.append(f"          {key}: {yaml_text(go_literal(value))}")
        notes_of = alert_annotations(rule)
        if notes_of:
            lines.append("        annotations:")
            for key, value in notes_of.items():
                lines.append(f"          {key}: {yaml_text(value)}")
    return "\n".join(lines) + "\n"


def _labels(rule: AlertRule) -> dict[str, str]:
    return {"severity": rule.severity, **rule.labels}


# -- promtool tests -------------------------------------------------------------------
@dataclass(frozen=True)
class _Case:
    """Input series for one rule's test: each counter's increase per interval."""

    series: list[tuple[str, float]]
    interval: int
    kind: str  # ratio, latency or rate
    #: Requests per interval (what min_requests is compared with).
    total: float
    #: The ratio or the latency once two samples are in the window; for a
    #: rate, the numerator's increase per interval.
    value: float


def _interval(window: float) -> int:
    # A handful of samples per window: a day's window needs no 15 s samples.
    for step in (3600, 900, 300, 60, 15, 10, 6, 5, 3, 2, 1):
        if step * 4 <= window and round(window) % step == 0:
            return step
    return 1


def _series(name: str, labels: Mapping[str, str]) -> str:
    text = ",".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in sorted(labels.items()))
    return f"{name}{{{text}}}"


def _ratio_target(rule: AlertRule) -> float | None:
    low, high = 0.0, 1.0
    for candidate in (
        (rule.threshold + high) / 2 if rule.operator[0] == ">" else (rule.threshold + low) / 2,
        high if rule.operator[0] == ">" else low,
    ):
        if rule.breaches(candidate):
            return candidate
    return None


def _case(rule: AlertRule, namespace: str, buckets: Sequence[float]) -> _Case | None:
    """Series that breach the rule, or None when no input can."""
    window = rule.window
    step = _interval(window)
    base = {"route": rule.route or "/aegis-test", "method": rule.method or "GET"}
    requests = requests_series(namespace)
    enough = max(rule.min_requests, 1)
    if rule.input in RATIO_INPUTS:
        target = _ratio_target(rule)
        if target is None:
            return None
        total = max(1000, enough)
        bad = round(target * total)
        if not rule.breaches(bad / total):
            return None
        status = _STATUS[rule.input] or ""
        bad_status = "429" if status == "429" else status.replace("..", "00")
        good_status = "404" if bad_status.startswith("2") else "200"
        series = [
            (_series(requests, {**base, "status": bad_status}), float(bad)),
            (_series(requests, {**base, "status": good_status}), float(total - bad)),
        ]
        return _Case([s for s in series if s[1]], step, "ratio", float(total), bad / total)
    if rule.input in LATENCY_INPUTS:
        quantile = _QUANTILES[rule.input]
        bounds = sorted(float(b) for b in buckets)
        chosen = None
        for index, upper in enumerate(bounds):
            lower = bounds[index - 1] if index else 0.0
            value = (lower + (upper - lower) * quantile) * 1000
            if rule.breaches(value) and abs(value - rule.threshold) > 1e-6 * max(1.0, value):
                chosen = (index, value)
                break
        if chosen is None:
            return None
        count = float(max(100, enough))
        name = duration_buckets_series(namespace)
        series = [(_series(requests, {**base, "status": "200"}), count)]
        series += [(_series(name, {**base, "le": repr(bound)}), count if i >= chosen[0] else 0.0)
                   for i, bound in enumerate(bounds)]  # fmt: skip
        series.append((_series(name, {**base, "le": "+Inf"}), count))
        return _Case(series, step, "latency", count, chosen[1])
    numerator = _STATUS[rule.input]
    per_step = 0.0
    if not rule.breaches(0.0):
        if rule.operator[0] == "<":
            return None
        # Over the first interval the window holds one interval's increase.
        per_step = float(math.ceil(rule.threshold * window * 1.2) + 1)
    label = "500" if numerator == "5.." else numerator or "200"
    series = [(_series(requests, {**base, "status": label}), per_step)]
    return _Case(series, step, "rate", per_step, per_step)


def _value_at(rule: AlertRule, case: _Case, t: int) -> float | None:
    """The expression's value at ``t`` for the case's series (None: no value),
    as Prometheus computes it from a counter's samples from 0 on."""
    filled = not rule.group_by and case.kind == "rate" and rule.breaches(0.0)
    if t < case.interval:  # one sample: no rate yet
        return 0.0 if filled else None
    share = min(t, rule.window) / (case.interval * rule.window)
    counted = case.total * share * rule.window
    if rule.needs_requests and rule.min_requests > 0 and counted < rule.min_requests:
        return None
    return case.value * share if case.kind == "rate" else case.value


def _evaluation(rules: Sequence[AlertRule]) -> int:
    longest = max((rule.window + rule.for_ for rule in rules), default=0.0)
    return TEST_EVALUATION * max(1, math.ceil(longest / (TEST_EVALUATION * TEST_EVALUATIONS)))


def _timeline(rule: AlertRule, case: _Case, step: int) -> tuple[int, int] | None:
    """(when the alert becomes active, when it fires) at evaluations ``step`` apart."""
    active = None
    for t in range(0, round(rule.window) + 2 * step + case.interval, step):
        value = _value_at(rule, case, t)
        if value is not None and rule.breaches(value):
            active = t
            break
    if active is None:
        return None
    fires = active + math.ceil(rule.for_ / step) * step
    value = _value_at(rule, case, fires)
    if value is None or not rule.breaches(value):
        return None
    return active, fires


def promtool_tests(
    rules: Iterable[AlertRule],
    rule_file: str,
    *,
    namespace: str = "aegis",
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> str:
    """A ``promtool test rules`` file for the rules written by
    :func:`prometheus_rules` to ``rule_file`` (relative to this file): per
    rule, series that breach it, no alert before ``for`` has elapsed, and the
    alert with its labels and annotations once it has."""
    rules = [rule for rule in rules if rule.input in EXPORTED_INPUTS]  # those in the rule file
    step = _evaluation(rules)
    lines = [
        "# promtool tests made by `aegis-mw alerts export --prometheus-rules --tests`.",
        "# Run them with: promtool test rules FILE",
        f"rule_files: [{yaml_text(rule_file)}]",
        f"evaluation_interval: {step}s",
        "tests:",
    ]
    tested = 0
    for rule in rules:
        case = _case(rule, namespace, buckets)
        timeline = None if case is None else _timeline(rule, case, step)
        if case is None or timeline is None:
            lines.append(f"  # {rule.name}: no input series can breach this rule here; untested")
            continue
        tested += 1
        active, fires = timeline
        steps = fires // case.interval + 2
        lines += [f"  # {rule.name}", f"  - name: {yaml_text(rule.name)}",
                  f"    interval: {case.interval}s", "    input_series:"]  # fmt: skip
        for series, increase in case.series:
            lines.append(f"      - series: {yaml_text(series)}")
            lines.append(f"        values: {yaml_text(f'0+{increase:g}x{steps}')}")
        lines.append("    alert_rule_test:")
        before = fires - step if rule.for_ > 0 else active - step
        if before >= 0:
            lines += [f"      - eval_time: {before}s", f"        alertname: {yaml_text(rule.name)}",
                      "        exp_alerts: []"]  # fmt: skip
        base = {"route": rule.route or "/aegis-test", "method": rule.method or "GET"}
        group = {label: base[label] for label in rule.group_by}
        value = _value_at(rule, case, fires)
        assert value is not None  # checked by _timeline
        lines += [f"      - eval_time: {fires}s", f"        alertname: {yaml_text(rule.name)}",
                  "        exp_alerts:", "          - exp_labels:"]  # fmt: skip
        for key, text in sorted({**_labels(rule), **group}.items()):
            lines.append(f"              {key}: {yaml_text(text)}")
        if rule.annotations:
            lines.append("            exp_annotations:")
            for key, text in rule.annotations.items():
                shown = rendered(_segments(rule, text), value, group)
                lines.append(f"              {key}: {yaml_text(shown)}")
    if not tested:
        lines[lines.index("tests:")] = "tests: []"
    return "\n".join(lines) + "\n"
