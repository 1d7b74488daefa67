"""Alert rules: every field checked when the rule is made, errors that name
the rule, the field, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aegis_mw.alerts import AlertRule, RuleError, parse_duration, rule_from_mapping
from aegis_mw.alerts.rules import resolution_for, rules_from_config
from aegis_mw.core.config_file import load_config_file
from aegis_mw.core.errors import ConfigError

BASE: dict[str, Any] = {
    "name": "errors",
    "input": "error_ratio",
    "operator": ">",
    "threshold": 0.05,
}


def test_durations_are_normalised_to_seconds() -> None:
    rule = AlertRule(**BASE, window="1h30m", for_="2m", keep_firing_for=45)
    assert (rule.window, rule.for_, rule.keep_firing_for) == (5400.0, 120.0, 45.0)
    assert rule.resolution == 60


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2m15s", 135),
        ("1d", 86400),
        (90, 90),
        (0, 0),
    ],
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "5", "5ms", "1.5m", "m", "-5s", "1h1d", True, None, float("nan"), -1]
)
def test_parse_duration_refuses(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"name": "has space"}, "name", "letters, digits"),
        ({"input": "error_rate_percent"}, "input", "one of error_ratio"),
        ({"operator": "=="}, "operator", "one of >, >=, <, <="),
        ({"threshold": "5"}, "threshold", "a number"),
        ({"threshold": float("inf")}, "threshold", "a finite number"),
        ({"threshold": 5}, "threshold", "a fraction from 0 to 1"),
        ({"threshold": True}, "threshold", "a number"),
        ({"resolve_threshold": 0.1}, "resolve_threshold", "at or below the threshold"),
        ({"window": "2s"}, "window", "from 5 s"),
        ({"window": "2d"}, "window", "from 5 s to 86400 s"),
        ({"window": "7s"}, "window", "a multiple of 5 s"),
        ({"window": "45m30s"}, "window", "a multiple of 60 s"),
        ({"for": "-1s"}, "for", "a number of seconds"),
        ({"for": 8 * 86400}, "for", "from 0 s to 604800 s"),
        ({"keep_firing_for": "soon"}, "keep_firing_for", "a number of seconds"),
        ({"min_requests": -1}, "min_requests", "an integer"),
        ({"min_requests": 2.5}, "min_requests", "an integer"),
        ({"no_data": "ignore"}, "no_data", "one of nodata, ok, alerting, keep_last"),
        ({"severity": "page"}, "severity", "one of info, warning, error, critical"),
        ({"route": ""}, "route", "a route template"),
        ({"route": "items"}, "route", "a route template"),
        ({"method": "FETCH"}, "method", "one of CONNECT, DELETE"),
        ({"method": 3}, "method", "one of CONNECT"),
        ({"resolve_threshold": 5.0, "operator": "<"}, "resolve_threshold", "a fraction"),
        ({"threshold": 10**400}, "threshold", "a finite number"),
        ({"window": 10**400}, "window", "within a week"),
        ({"group_by": {"route": 1}}, "group_by", "a list of route, method"),
        ({"group_by": None}, "group_by", "a list of route, method"),
        ({"group_by": 3}, "group_by", "a list of route, method"),
        ({"labels": {"alertname": "other"}}, "labels", "a name of your own"),
        ({"labels": {"route": "/x"}}, "labels", "a name of your own"),
        ({"group_by": ["path"]}, "group_by", "a list of route, method"),
        ({"group_by": "route"}, "group_by", "a list of route, method"),
        ({"group_by": ["route", "route"]}, "group_by", "each label once"),
        ({"labels": {"team-name": "x"}}, "labels", "label names"),
        ({"labels": {"team": 3}}, "labels.team", "a text"),
        ({"annotations": {"title": "x"}}, "annotations", "one of summary"),
        ({"annotations": {"summary": "x" * 3000}}, "annotations.summary", "at most 2048"),
        ({"colour": "red"}, "colour", "one of name, input"),
        ({"labels": {"channel": "x"}}, "labels", "a name of your own"),
        ({"group_by": ["channel"]}, "group_by", "a list of route, method"),
        (
            {"input": "channel_disabled", "threshold": 0, "group_by": ["route"]},
            "group_by",
            "a list of channel",
        ),
        (
            {"input": "channel_disabled", "threshold": 0, "route": "/x"},
            "route",
            "none: channel_disabled is not per request",
        ),
    ],
)
def test_a_bad_field_is_named_with_its_value_and_what_is_allowed(
    changes: dict[str, Any], field: str, allowed: str
) -> None:
    with pytest.raises(RuleError) as caught:
        rule_from_mapping({**BASE, **changes})
    error = caught.value
    assert isinstance(error, ConfigError)  # what the app's start-up reports
    assert (error.rule, error.field) == (changes.get("name", "errors"), field)
    assert allowed in str(error)
    assert f"alert rule {changes.get('name', 'errors')!r}: {field} = " in str(error)


def test_methods_are_read_as_recorded() -> None:
    assert AlertRule(**BASE, method="get").method == "GET"
    assert AlertRule(**BASE, method="_OTHER").method == "_OTHER"


def test_a_resolve_threshold_must_be_on_the_clear_side() -> None:
    above = AlertRule(**{**BASE, "resolve_threshold": 0.02})
    assert above.breaches(0.06) and not above.clears(0.03) and above.clears(0.02)
    with pytest.raises(RuleError, match="at or above the threshold"):
        AlertRule(name="slow", input="request_rate", operator="<", threshold=5, resolve_threshold=4)
    below = AlertRule(
        name="quiet", input="request_rate", operator="<", threshold=5, resolve_threshold=8
    )
    assert below.breaches(4.9) and not below.clears(7.9) and below.clears(8.0)


def test_a_mapping_round_trips() -> None:
    rule = AlertRule(
        **BASE, window="15m", for_="1m", group_by=("route", "method"), route="/a",
        labels={"team": "web"}, annotations={"summary": "$route at $value"},
    )  # fmt: skip
    assert rule_from_mapping(rule.to_mapping()) == rule


def test_missing_fields_and_duplicate_names_are_refused() -> None:
    with pytest.raises(RuleError, match="threshold = None is invalid: required"):
        rule_from_mapping({"name": "x", "input": "request_rate", "operator": ">"})
    with pytest.raises(RuleError, match="a name no other rule has"):
        rules_from_config([BASE, BASE])
    with pytest.raises(RuleError, match="a list of rule mappings"):
        rules_from_config(BASE)
    with pytest.raises(RuleError, match=r"alert_rules\[1\]"):
        rules_from_config([BASE, "not a rule"])


def test_rules_from_a_toml_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "aegis.toml"
    path.write_text(
        """
[[aegis.alert_rules]]
name = "checkout_errors"
input = "error_ratio"
operator = ">"
threshold = 0.05
window = "5m"
for = "2m"
route = "/checkout"
severity = "critical"
annotations = { summary = "$route fails $value_percent of requests" }

[[aegis.alert_rules]]
name = "slow"
input = "latency_p99_ms"
operator = ">"
threshold = 800
group_by = ["route"]
""",
        encoding="utf-8",
    )
    rules = rules_from_config(load_config_file(str(path))["alert_rules"])
    assert [r.name for r in rules] == ["checkout_errors", "slow"]
    assert rules[0].for_ == 120.0 and rules[0].severity == "critical"
    assert rules[1].group_by == ("route",) and rules[1].window == 300.0


def test_long_windows_read_coarser_rollups() -> None:
    assert [resolution_for(w) for w in (5, 1800, 1860, 21600, 21900, 86400)] == [
        5, 5, 60, 60, 300, 300,
    ]  # fmt: skip
