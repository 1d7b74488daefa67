"""Silences, mute windows and inhibition: Alertmanager's semantics, checked
fields, and daylight saving in real time zones."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_mw.alerts.matchers import REGEX_LIMIT, Matcher, PolicyError, matcher_from_text, matches
from aegis_mw.alerts.silences import (
    ACTIVE,
    EXPIRED,
    PENDING,
    InhibitRule,
    MuteWindow,
    NotificationPolicy,
    Silence,
    inhibit_rule_from_mapping,
    inhibited,
    inhibited_by,
    mute_window_from_mapping,
    muted_by,
    parse_time,
    silence_from_mapping,
    silenced_by,
)
from aegis_mw.core.errors import ConfigError

UTC = timezone.utc


def at(*parts: int, zone: str = "UTC") -> float:
    """Seconds since the epoch of a wall-clock time in a zone (fold 0)."""
    return datetime(*parts, tzinfo=ZoneInfo(zone)).timestamp()


# -- matchers -----------------------------------------------------------------------------

MATCHER_TABLE = [
    # text, labels, expected
    ('alertname="a"', {"alertname": "a"}, True),
    ('alertname="a"', {"alertname": "ab"}, False),
    ('alertname="a"', {}, False),
    ('team!="ops"', {}, True),  # a missing label is ""
    ('team!="ops"', {"team": "ops"}, False),
    ('team=""', {}, True),
    ('team=""', {"team": "x"}, False),
    ('team=~""', {}, True),  # Alertmanager: =~"" matches a missing label
    ('team=~""', {"team": "x"}, False),
    ('team!~""', {}, False),
    ('team!~""', {"team": "x"}, True),
    ('team=~".*"', {}, True),
    ('team=~".+"', {}, False),
    ('severity=~"crit"', {"severity": "critical"}, False),  # anchored at both ends
    ('severity=~"crit.*"', {"severity": "critical"}, True),
    ('severity=~"critical|error"', {"severity": "error"}, True),
    ('severity=~"critical|error"', {"severity": "xerror"}, False),  # ^(?:a|b)$, not ^a|b$
    ('severity=~"critical|error"', {"severity": "criticalx"}, False),
    ('code!~"5.."', {"code": "503"}, False),
    ('code!~"5.."', {"code": "404"}, True),
    ('code!~"5.."', {}, True),
    ('code=~"5\\d\\d"', {"code": "502"}, True),
    ('code=~"\\d+"', {"code": "\u0663"}, False),  # \d is ASCII, as in RE2
    ('route=~"x"', {"route": "x\n"}, False),  # no match before a final newline
    ('route=~".*"', {"route": "a\nb"}, False),  # '.' does not match a newline
    ('route=~"(?s).*"', {"route": "a\nb"}, True),
    ('severity=~"(?i)CRIT.*"', {"severity": "critical"}, True),
]


@pytest.mark.parametrize(("text", "labels", "expected"), MATCHER_TABLE)
def test_matchers_as_alertmanager(text: str, labels: dict[str, str], expected: bool) -> None:
    matcher = matcher_from_text(text)
    assert matches([matcher], labels) is expected
    assert matcher.matches(labels.get(matcher.name, "")) is expected


def test_no_matchers_match_everything_and_all_must_match() -> None:
    assert matches([], {"a": "b"})
    both = [matcher_from_text("a=b"), matcher_from_text("c!=d")]
    assert matches(both, {"a": "b"})
    assert not matches(both, {"a": "b", "c": "d"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alertname=checkout_errors", Matcher("alertname", "=", "checkout_errors")),
        ('alertname="checkout_errors"', Matcher("alertname", "=", "checkout_errors")),
        ('  route != "/items/{id}"  ', Matcher("route", "!=", "/items/{id}")),
        ('severity=~"critical|error"', Matcher("severity", "=~", "critical|error")),
        ("severity=~critical|error", Matcher("severity", "=~", "critical|error")),
        ('code!~"5.."', Matcher("code", "!~", "5..")),
        ("team=", Matcher("team", "=", "")),
        ('team=""', Matcher("team", "=", "")),
        (r'msg="say \"hi\""', Matcher("msg", "=", 'say "hi"')),
        (r'path="C:\\tmp"', Matcher("path", "=", "C:\\tmp")),
        (r'text="a\nb"', Matcher("text", "=", "a\nb")),
        (r'code=~"5\d\d"', Matcher("code", "=~", r"5\d\d")),  # other escapes are kept
        ('v="a=b, c"', Matcher("v", "=", "a=b, c")),
    ],
)
def test_matcher_text_form(text: str, expected: Matcher) -> None:
    matcher = matcher_from_text(text)
    assert matcher == expected
    assert matcher_from_text(str(matcher)) == matcher


@pytest.mark.parametrize(
    "text",
    [
        "alertname",  # no operator
        '1team="x"',  # not a label name
        'team="x',  # no closing quote
        'team="x"y"',  # an unescaped quote inside
        r'team="x\"',  # the closing quote is escaped
        "team=a b",  # unquoted with a space
        "team=a,b",
        "team==b",
        'team="x" extra',
        "",
        42,
    ],
)
def test_bad_matcher_texts_are_refused(text: Any) -> None:
    with pytest.raises(PolicyError, match=r"^matcher: text = .* is invalid: name=\"value\""):
        matcher_from_text(text)


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        ("(", "a valid regular expression"),
        ("a)|(b", "a valid regular expression"),  # cannot escape the anchoring group
        ("(a)\\1", "without backreferences"),
        ("(?P<x>a)(?P=x)", "without backreferences"),
        ("(?=a)a", "without lookahead"),
        ("a(?!b)", "without lookahead"),
        ("(?<=a)b", "without lookbehind"),
        ("(?<!a)b", "without lookbehind"),
        ("(a)?(?(1)b|c)", "without conditionals"),
        ("[[:alpha:]]+", "without nested sets"),
        ("a" * (REGEX_LIMIT + 1), f"at most {REGEX_LIMIT} characters"),
    ],
)
def test_bad_regular_expressions_are_refused(pattern: str, allowed: str) -> None:
    for op in ("=~", "!~"):
        with pytest.raises(PolicyError) as caught:
            Matcher("team", op, pattern)
        assert caught.value.field == "value"
        assert str(caught.value).startswith("matcher on 'team': value = ")
        assert allowed in str(caught.value)
    Matcher("team", "=", pattern)  # an equality's value is any text


@pytest.mark.parametrize("pattern", ["[]a]+", "[^]a]+", "\\\\1", "[\\[(?=]", "a" * REGEX_LIMIT])
def test_what_looks_unsupported_but_is_not(pattern: str) -> None:
    Matcher("team", "=~", pattern)


def test_a_regular_expression_is_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    matcher = Matcher("severity", "=~", "critical|error")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(re, "compile", refuse)
    monkeypatch.setattr(re, "fullmatch", refuse)
    assert matcher.matches("error") and not matcher.matches("warning")


@pytest.mark.parametrize(
    ("args", "field", "allowed"),
    [
        (("1x", "=", "a"), "name", "a label name"),
        (("a-b", "=", "a"), "name", "a label name"),
        (("x" * 65, "=", "a"), "name", "at most 64"),
        ((None, "=", "a"), "name", "a label name"),
        (("team", "==", "a"), "op", "one of =, !=, =~, !~"),
        (("team", "=", 5), "value", "a text"),
    ],
)
def test_matcher_fields_are_checked(args: tuple[Any, ...], field: str, allowed: str) -> None:
    with pytest.raises(PolicyError) as caught:
        Matcher(*args)
    assert caught.value.field == field
    assert f": {field} = {args[['name', 'op', 'value'].index(field)]!r} is invalid: " in str(
        caught.value
    )
    assert allowed in str(caught.value)
    assert isinstance(caught.value, (ConfigError, ValueError))


LABEL_NAMES = st.sampled_from(["alertname", "severity", "route", "team"])
VALUES = st.text(max_size=12)
SMALL_VALUES = st.sampled_from(["", "a", "b", "ab", "critical", "error", "5xx"])


@settings(max_examples=300)
@given(st.sampled_from(["=", "!=", "=~", "!~"]), LABEL_NAMES, VALUES)
def test_text_form_round_trips(op: str, name: str, value: str) -> None:
    if op in ("=~", "!~"):
        value = re.escape(value)
    matcher = Matcher(name, op, value)
    assert matcher_from_text(str(matcher)) == matcher


@settings(max_examples=300)
@given(LABEL_NAMES, VALUES, st.dictionaries(LABEL_NAMES, VALUES))
def test_negations(name: str, value: str, labels: dict[str, str]) -> None:
    assert matches([Matcher(name, "!=", value)], labels) != matches(
        [Matcher(name, "=", value)], labels
    )
    pattern = re.escape(value)
    assert matches([Matcher(name, "!~", pattern)], labels) != matches(
        [Matcher(name, "=~", pattern)], labels
    )
    # An escaped regular expression matches exactly its text.
    assert matches([Matcher(name, "=~", pattern)], labels) == (labels.get(name, "") == value)


def _reference(op: str, value: str, label: str) -> bool:
    """What a matcher means, written out apart from the module."""
    if op == "=":
        return label == value
    if op == "!=":
        return label != value
    found = re.search(f"^(?:{value})\\Z", label, re.ASCII) is not None
    return found if op == "=~" else not found


MATCHERS = st.lists(
    st.tuples(LABEL_NAMES, st.sampled_from(["=", "!=", "=~", "!~"]), SMALL_VALUES),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300)
@given(MATCHERS, st.dictionaries(LABEL_NAMES, SMALL_VALUES), st.integers(-5, 15))
def test_a_silence_matches_exactly_when_every_matcher_matches(
    parts: list[tuple[str, str, str]], labels: dict[str, str], now: int
) -> None:
    matchers = [Matcher(*part) for part in parts]
    if all(m.matches("") for m in matchers):
        with pytest.raises(PolicyError, match="does not match the empty string"):
            Silence("s", matchers, 0, 10, "ana", "why")
        return
    silence = Silence("s", matchers, 0, 10, "ana", "why")
    expected = all(_reference(op, v, labels.get(n, "")) for n, op, v in parts)
    assert silenced_by([silence], labels, now) == (["s"] if expected and 0 <= now < 10 else [])


# -- silences -----------------------------------------------------------------------------

SILENCE: dict[str, Any] = {
    "id": "deploy-42",
    "matchers": ['route="/checkout"', 'severity=~"critical|error"'],
    "starts_at": 1_000.0,
    "ends_at": 2_000.0,
    "created_by": "ana",
    "comment": "deploying the new checkout",
}


def test_silence_states_and_its_half_open_span() -> None:
    silence = silence_from_mapping(SILENCE)
    assert silence.matchers[0] == Matcher("route", "=", "/checkout")
    assert [silence.state(t) for t in (999.9, 1000.0, 1999.9, 2000.0)] == [
        PENDING, ACTIVE, ACTIVE, EXPIRED,
    ]  # fmt: skip
    assert [silence.active(t) for t in (999.9, 1000.0, 1999.9, 2000.0)] == [
        False, True, True, False,
    ]  # fmt: skip


def test_silenced_by_lists_the_active_matching_ones() -> None:
    labels = {"alertname": "x", "route": "/checkout", "severity": "error"}
    silences = [
        silence_from_mapping(SILENCE),
        silence_from_mapping({**SILENCE, "id": "later", "starts_at": 1500}),
        silence_from_mapping({**SILENCE, "id": "other", "matchers": ['route="/home"']}),
        silence_from_mapping({**SILENCE, "id": "all-errors", "matchers": ["severity=error"]}),
    ]
    assert silenced_by(silences, labels, 1200) == ["deploy-42", "all-errors"]
    assert silenced_by(silences, labels, 1500) == ["deploy-42", "later", "all-errors"]
    assert silenced_by(silences, {**labels, "severity": "warning"}, 1500) == []
    assert silenced_by(silences, labels, 2000) == []


def test_silence_round_trips_and_takes_matchers_in_code() -> None:
    silence = silence_from_mapping(SILENCE)
    assert silence.to_mapping() == {
        **SILENCE,
        "matchers": ['route="/checkout"', 'severity=~"critical|error"'],
    }
    assert silence_from_mapping(silence.to_mapping()) == silence
    made = Silence(
        "deploy-42",
        [Matcher("route", "=", "/checkout"), matcher_from_text('severity=~"critical|error"')],
        1000,
        2000,
        "ana",
        "deploying the new checkout",
    )
    assert made == silence and isinstance(made.starts_at, float)
    assert hash(made) == hash(silence)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-29T01:30:00Z", at(2026, 3, 29, 1, 30)),
        ("2026-03-29t01:30:00z", at(2026, 3, 29, 1, 30)),
        ("2026-03-29 03:30:00+02:00", at(2026, 3, 29, 1, 30)),
        ("2026-03-28T20:30:00-05:00", at(2026, 3, 29, 1, 30)),
        ("2026-03-29T01:30:00.25Z", at(2026, 3, 29, 1, 30) + 0.25),
        ("2026-03-29T01:30:00.123456789+00:00", at(2026, 3, 29, 1, 30) + 0.123456789),
        (1_774_747_800, 1_774_747_800.0),
        (1.5, 1.5),
    ],
)
def test_times_as_epoch_seconds_or_rfc3339(text: Any, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected, abs=1e-6)
    silence = silence_from_mapping({**SILENCE, "starts_at": text, "ends_at": 4e9})
    assert silence.starts_at == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-29T01:30:00",  # no offset
        "2026-03-29",
        "2026-02-30T00:00:00Z",  # no such day
        "2026-03-29T24:00:00Z",
        "2026-03-29T01:30:60Z",
        "2026-W13-7T01:30:00Z",
        "yesterday",
        True,
        None,
        float("nan"),
        float("inf"),
        10**400,
    ],
)
def test_bad_times_are_refused(text: Any) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time(text)
    with pytest.raises(PolicyError) as caught:
        silence_from_mapping({**SILENCE, "starts_at": text})
    assert caught.value.field == "starts_at"
    assert str(caught.value).startswith(f"silence 'deploy-42': starts_at = {text!r} is invalid")


SILENCE_ERRORS = [
    # changes, field named, what is allowed
    ({"id": ""}, "id", "1 to 128 letters"),
    ({"id": "a b"}, "id", "1 to 128 letters"),
    ({"id": "x" * 129}, "id", "1 to 128 letters"),
    ({"id": 42}, "id", "1 to 128 letters"),
    ({"matchers": []}, "matchers", "at least one matcher"),
    ({"matchers": 'route="/x"'}, "matchers", "a list of matchers"),
    ({"matchers": ["route=/x", "bad"]}, "matchers[1]", 'name="value"'),
    ({"matchers": ['team=~"("']}, "matchers[0]", "a valid regular expression"),
    ({"matchers": ['team=~".*"', 'route=""']}, "matchers", "does not match the empty string"),
    ({"matchers": ['team!="x"']}, "matchers", "does not match the empty string"),
    ({"starts_at": True}, "starts_at", "seconds since the epoch"),
    ({"starts_at": float("nan")}, "starts_at", "RFC 3339"),
    ({"ends_at": "soon"}, "ends_at", "RFC 3339"),
    ({"ends_at": 1000}, "ends_at", "after starts_at (1000.0)"),
    ({"ends_at": 999}, "ends_at", "after starts_at"),
    ({"created_by": ""}, "created_by", "a non-blank text of at most 256"),
    ({"created_by": "  "}, "created_by", "a non-blank text"),
    ({"created_by": "x" * 257}, "created_by", "at most 256"),
    ({"comment": None}, "comment", "a non-blank text of at most 2048"),
    ({"comment": "x" * 2049}, "comment", "at most 2048"),
    ({"reason": "x"}, "reason", "one of id, matchers, starts_at"),
]


@pytest.mark.parametrize(("changes", "field", "allowed"), SILENCE_ERRORS)
def test_silence_errors_name_the_field(changes: dict[str, Any], field: str, allowed: str) -> None:
    with pytest.raises(PolicyError) as caught:
        silence_from_mapping({**SILENCE, **changes}, where="silences[3]")
    error = caught.value
    assert error.field == field
    message = str(error)
    assert message.startswith(
        f"silence {({**SILENCE, **changes})['id']!r} (silences[3]): {field} = "
    )
    assert allowed in message


def test_missing_silence_fields_are_named() -> None:
    for key in SILENCE:
        data = {k: v for k, v in SILENCE.items() if k != key}
        with pytest.raises(PolicyError, match=f": {key} = None is invalid: required"):
            silence_from_mapping(data)
    with pytest.raises(PolicyError, match="a mapping of id, matchers"):
        silence_from_mapping(["not", "a", "mapping"])


def test_silence_made_in_code_is_checked_too() -> None:
    for bad in (float("nan"), float("-inf"), 10**400):
        with pytest.raises(PolicyError, match=r"starts_at = .* is invalid: a finite number"):
            Silence("x", ["a=b"], bad, 5, "ana", "why")  # type: ignore[list-item]
    with pytest.raises(PolicyError, match=r"^silence 'x': ends_at = 5 is invalid: after starts_at"):
        Silence("x", ["a=b"], 10, 5, "ana", "why")  # type: ignore[list-item]


# -- mute windows: fields -----------------------------------------------------------------

WINDOW: dict[str, Any] = {
    "name": "business-hours",
    "times": [("09:00", "17:00")],
    "weekdays": ["monday:friday"],
    "days_of_month": ["1:7", "-1"],
    "months": ["january:march", "12"],
    "years": ["2026:2027"],
    "location": "Europe/Berlin",
}


def test_window_round_trips_in_both_times_forms() -> None:
    window = MuteWindow(**WINDOW)
    mapping = window.to_mapping()
    assert mapping["times"] == [{"start_time": "09:00", "end_time": "17:00"}]
    assert mute_window_from_mapping(mapping) == window
    assert mute_window_from_mapping({**WINDOW, "times": [["09:00", "17:00"]]}) == window
    assert mute_window_from_mapping({"name": "always", "times": None}) == MuteWindow("always")
    assert MuteWindow("x", months=["JANUARY:March", 12]).months == ("january:march", "12")
    assert MuteWindow("x", days_of_month=[-1, 5]).days_of_month == ("-1", "5")


WINDOW_ERRORS = [
    ({"name": ""}, "name", "1 to 128 letters"),
    ({"name": "business hours"}, "name", "1 to 128 letters"),
    ({"times": "09:00-17:00"}, "times", "(start, end) pairs of 'HH:MM'"),
    ({"times": [("17:00", "09:00")]}, "times", "the start before the end"),
    ({"times": [("09:00", "09:00")]}, "times", "the start before the end"),
    ({"times": [("9:00", "17:00")]}, "times", "'HH:MM' from 00:00 to 24:00"),
    ({"times": [("09:00", "24:01")]}, "times", "'HH:MM'"),
    ({"times": [("24:00", "24:00")]}, "times", "'HH:MM'"),
    ({"times": [("09:60", "10:00")]}, "times", "'HH:MM'"),
    ({"times": [("09:00",)]}, "times", "pairs"),
    ({"times": [{"start_time": "09:00"}]}, "times", "pairs"),
    ({"weekdays": ["funday"]}, "weekdays", "weekday names"),
    ({"weekdays": [1]}, "weekdays", "weekday names"),
    ({"weekdays": ["saturday:sunday"]}, "weekdays", "'saturday', 'sunday'"),
    ({"weekdays": ["monday:sunday"]}, "weekdays", "counted from Sunday"),
    ({"weekdays": ["monday:tuesday:friday"]}, "weekdays", "weekday names"),
    ({"weekdays": "monday"}, "weekdays", "a list of weekday names"),
    ({"days_of_month": ["0"]}, "days_of_month", "days 1 to 31"),
    ({"days_of_month": ["32"]}, "days_of_month", "days 1 to 31"),
    ({"days_of_month": ["-32"]}, "days_of_month", "-31 to -1"),
    ({"days_of_month": ["-1:5"]}, "days_of_month", "a negative start needs a negative end"),
    ({"days_of_month": ["10:5"]}, "days_of_month", "the start not after the end"),
    ({"days_of_month": ["-1:-5"]}, "days_of_month", "the start not after the end"),
    ({"days_of_month": ["first"]}, "days_of_month", "days 1 to 31"),
    ({"days_of_month": [True]}, "days_of_month", "days 1 to 31"),
    ({"months": ["13"]}, "months", "numbers 1 to 12"),
    ({"months": ["march:january"]}, "months", "the start not after the end"),
    ({"months": ["jan"]}, "months", "month names"),
    ({"years": ["2027:2026"]}, "years", "the start not after the end"),
    ({"years": ["0"]}, "years", "years 1 to 9999"),
    ({"years": ["10000"]}, "years", "years 1 to 9999"),
    ({"location": "Local"}, "location", "'Local' is not taken"),
    ({"location": "localtime"}, "location", "an IANA time zone"),
    ({"location": "Mars/Olympus_Mons"}, "location", "an IANA time zone"),
    ({"location": "europe/berlin"}, "location", "an IANA time zone"),
    ({"location": "Europe"}, "location", "an IANA time zone"),  # a folder
    ({"location": "zone.tab"}, "location", "an IANA time zone"),  # not a zone file
    ({"location": "../zoneinfo/UTC"}, "location", "an IANA time zone"),
    ({"location": "/etc/localtime"}, "location", "an IANA time zone"),
    ({"location": ""}, "location", "an IANA time zone"),
    ({"location": 1}, "location", "an IANA time zone"),
    ({"start_time": "09:00"}, "start_time", "one of name, times, weekdays"),
]


@pytest.mark.parametrize(("changes", "field", "allowed"), WINDOW_ERRORS)
def test_window_errors_name_the_field(changes: dict[str, Any], field: str, allowed: str) -> None:
    data = {**WINDOW, **changes}
    with pytest.raises(PolicyError) as caught:
        mute_window_from_mapping(data, where="mute_windows[0]")
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"mute window {data['name']!r} (mute_windows[0]): {field} = ")
    assert allowed in message
    if field in {f for f in WINDOW if f != "name"}:
        with pytest.raises(PolicyError, match=f"^mute window {data['name']!r}: {field} = "):
            MuteWindow(**data)


def test_window_missing_name_is_named() -> None:
    with pytest.raises(PolicyError, match=r"^mute window None: name = None is invalid: required"):
        mute_window_from_mapping({"times": [("09:00", "17:00")]})


# -- mute windows: Alertmanager's semantics -------------------------------------------------


def test_an_empty_window_is_always_active() -> None:
    window = MuteWindow("always")
    assert all(window.active(t) for t in (0, at(2026, 3, 29, 2), at(2099, 12, 31, 23, 59)))


def test_times_are_half_open_minutes_of_the_day() -> None:
    window = MuteWindow("w", times=[("09:00", "17:00"), ("22:00", "24:00")])
    checks = {
        (8, 59, 59): False, (9, 0, 0): True, (16, 59, 59): True, (17, 0, 0): False,
        (21, 59, 0): False, (22, 0, 0): True, (23, 59, 59): True, (0, 0, 0): False,
    }  # fmt: skip
    for (hour, minute, second), expected in checks.items():
        assert window.active(at(2026, 5, 4, hour, minute, second)) is expected, (hour, minute)


def test_every_given_field_must_match() -> None:
    window = MuteWindow(**WINDOW)  # Mon-Fri 09-17 Berlin, days 1-7 or last, Jan-Mar or Dec
    berlin = "Europe/Berlin"
    assert window.active(at(2026, 3, 2, 9, 0, zone=berlin))  # Monday 2 March
    assert window.active(at(2026, 3, 31, 16, 59, zone=berlin))  # Tuesday, the last day
    assert not window.active(at(2026, 3, 2, 8, 59, zone=berlin))  # too early
    assert window.active(at(2026, 3, 2, 8, 0))  # 09:00 CET
    assert not window.active(at(2026, 3, 2, 7, 59))  # 08:59 CET
    assert not window.active(at(2026, 3, 2, 16, 0))  # 17:00 CET, 16:00 in UTC
    assert not window.active(at(2026, 3, 8, 10, zone=berlin))  # Sunday
    assert not window.active(at(2026, 3, 9, 10, zone=berlin))  # Monday the 9th
    assert not window.active(at(2026, 4, 1, 10, zone=berlin))  # April
    assert window.active(at(2026, 12, 1, 10, zone=berlin))  # December
    assert not window.active(at(2028, 3, 1, 10, zone=berlin))  # 2028
    assert not window.active(at(2025, 12, 1, 10, zone=berlin))  # 2025


@pytest.mark.parametrize(
    ("days", "month", "expected"),
    [
        # Alertmanager's day-of-month rules: negatives count back from the
        # month's last day; a span starting after the end is skipped; one
        # ending after it stops at it.
        (["-1"], (2026, 2), [28]),
        (["-1"], (2028, 2), [29]),
        (["-1"], (2026, 4), [30]),
        (["-3:-1"], (2026, 2), [26, 27, 28]),
        (["30:31"], (2026, 2), []),
        (["28:31"], (2026, 2), [28]),
        (["31"], (2026, 4), []),
        (["25:-3"], (2026, 2), [25, 26]),
        (["1:-1"], (2026, 2), list(range(1, 29))),
        (["-31:-30"], (2026, 4), [1]),  # days 0 and 1 of April
        (["-31:-30"], (2026, 2), []),  # days -2 and -1 of February: none
        (["1:2", "-2"], (2026, 1), [1, 2, 30]),
    ],
)
def test_days_of_month(days: list[str], month: tuple[int, int], expected: list[int]) -> None:
    window = MuteWindow("w", days_of_month=days)
    found = [
        day
        for day in range(1, 32)
        if _day_exists(*month, day) and window.active(at(*month, day, 12))
    ]
    assert found == expected


def _day_exists(year: int, month: int, day: int) -> bool:
    try:
        datetime(year, month, day)
    except ValueError:
        return False
    return True


def test_weekday_ranges_count_from_sunday() -> None:
    start = at(2026, 3, 1, 12)  # Sunday 1 March 2026
    days = [start + 86400 * n for n in range(7)]
    assert [MuteWindow("w", weekdays=["monday:friday"]).active(t) for t in days] == [
        False, True, True, True, True, True, False,
    ]  # fmt: skip
    assert [MuteWindow("w", weekdays=["saturday", "sunday"]).active(t) for t in days] == [
        True, False, False, False, False, False, True,
    ]  # fmt: skip
    assert all(MuteWindow("w", weekdays=["sunday:saturday"]).active(t) for t in days)


def test_local_midnight_decides_the_weekday_and_the_day() -> None:
    # 2026-03-01T15:00Z: Sunday 1 March in UTC, Monday 2 March 00:00 in Tokyo.
    edge = at(2026, 3, 1, 15)
    assert datetime.fromtimestamp(edge, UTC).weekday() == 6
    tokyo_monday = MuteWindow("w", weekdays=["monday"], location="Asia/Tokyo")
    utc_monday = MuteWindow("w", weekdays=["monday"])
    assert tokyo_monday.active(edge) and not tokyo_monday.active(edge - 1)
    assert not utc_monday.active(edge) and utc_monday.active(edge + 9 * 3600)
    # 2026-02-28T15:00Z: still the last day of February in UTC, 1 March in Tokyo.
    edge = at(2026, 2, 28, 15)
    tokyo_last = MuteWindow("w", days_of_month=["-1"], location="Asia/Tokyo")
    tokyo_first = MuteWindow("w", days_of_month=["1"], months=["march"], location="Asia/Tokyo")
    assert tokyo_last.active(edge - 1) and not tokyo_last.active(edge)
    assert tokyo_first.active(edge) and not tokyo_first.active(edge - 1)
    assert MuteWindow("w", days_of_month=["-1"]).active(edge)
    # New year in Tokyo comes nine hours before UTC's.
    new_year = at(2026, 12, 31, 15)
    in_2027 = MuteWindow("w", years=["2027"], months=["1"], location="Asia/Tokyo")
    assert in_2027.active(new_year) and not in_2027.active(new_year - 1)
    assert not MuteWindow("w", years=["2027"]).active(new_year)


# -- mute windows: daylight saving -------------------------------------------------------

# zone, local day, minutes matched by a 01:30-03:30 window that day, hours in the day
DST_DAYS = [
    ("Europe/Berlin", (2026, 3, 29), 60, 23),  # 02:00 -> 03:00: 02:00-02:59 never exists
    ("Europe/Berlin", (2026, 10, 25), 180, 25),  # 03:00 -> 02:00: 02:00-02:59 twice
    ("America/New_York", (2026, 3, 8), 60, 23),  # 02:00 -> 03:00
    ("America/New_York", (2026, 11, 1), 150, 25),  # 02:00 -> 01:00: 01:30-01:59 twice
    ("Australia/Lord_Howe", (2026, 4, 5), 150, 24.5),  # 02:00 -> 01:30: 01:30-01:59 twice
    ("Australia/Lord_Howe", (2026, 10, 4), 90, 23.5),  # 02:00 -> 02:30: 02:00-02:29 never
]


def _local_day(zone: str, day: tuple[int, int, int]) -> range:
    """Every minute of a local day, as seconds since the epoch."""
    start = datetime(*day, tzinfo=ZoneInfo(zone))
    following = (datetime(*day) + timedelta(days=1)).replace(tzinfo=ZoneInfo(zone))
    return range(int(start.timestamp()), int(following.timestamp()), 60)


@pytest.mark.parametrize(("zone", "day", "minutes", "hours"), DST_DAYS)
def test_a_window_across_daylight_saving_changes(
    zone: str, day: tuple[int, int, int], minutes: int, hours: float
) -> None:
    window = MuteWindow("night", times=[("01:30", "03:30")], location=zone)
    instants = _local_day(zone, day)
    assert len(instants) == hours * 60  # the day really has a change
    matched = 0
    for t in instants:
        for moment in (t, t + 59):  # the first and the last second of the minute
            local = datetime.fromtimestamp(moment, ZoneInfo(zone))
            expected = 90 <= local.hour * 60 + local.minute < 210
            assert window.active(moment) is expected, datetime.fromtimestamp(moment, UTC)
        matched += window.active(t)
    assert matched == minutes


def test_the_skipped_hour_never_matches_and_the_repeated_one_twice() -> None:
    window = MuteWindow("two", times=[("02:00", "03:00")], location="Europe/Berlin")
    spring = _local_day("Europe/Berlin", (2026, 3, 29))
    assert not any(window.active(t) for t in spring)
    autumn = _local_day("Europe/Berlin", (2026, 10, 25))
    matched = [t for t in autumn if window.active(t)]
    # 02:00-02:59 CEST (00:00-00:59Z), then 02:00-02:59 CET (01:00-01:59Z): two real hours.
    assert len(matched) == 120
    assert matched[0] == at(2026, 10, 25, 0, 0) and matched[-1] == at(2026, 10, 25, 1, 59)
    assert matched == list(range(matched[0], matched[-1] + 60, 60))
    # The hour before and after the change, in UTC, around the window.
    assert not window.active(at(2026, 10, 24, 23, 59, 59)) and not window.active(
        at(2026, 10, 25, 2)
    )


def test_the_berlin_window_in_utc_instants() -> None:
    window = MuteWindow("night", times=[("01:30", "03:30")], location="Europe/Berlin")
    autumn = [t for t in _local_day("Europe/Berlin", (2026, 10, 25)) if window.active(t)]
    assert (autumn[0], autumn[-1]) == (at(2026, 10, 24, 23, 30), at(2026, 10, 25, 2, 29))
    spring = [t for t in _local_day("Europe/Berlin", (2026, 3, 29)) if window.active(t)]
    # 01:30-01:59 CET (00:30-00:59Z), then 03:00-03:29 CEST (01:00-01:29Z).
    assert (spring[0], spring[-1]) == (at(2026, 3, 29, 0, 30), at(2026, 3, 29, 1, 29))


ZONES = st.sampled_from(
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata",
     "Asia/Tokyo", "Pacific/Chatham", "America/St_Johns", "Pacific/Kiritimati"]
)  # fmt: skip
INSTANTS = st.integers(0, 4_102_444_800)  # 1970 to 2100


@st.composite
def minute_spans(draw: st.DrawFn) -> list[tuple[int, int]]:
    spans = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, 1439))
        spans.append((start, draw(st.integers(start + 1, 1440))))
    return spans


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@settings(max_examples=300)
@given(ZONES, minute_spans(), INSTANTS)
def test_a_times_only_window_is_active_for_those_local_minutes(
    zone: str, spans: list[tuple[int, int]], now: int
) -> None:
    window = MuteWindow("w", times=[(_clock(b), _clock(e)) for b, e in spans], location=zone)
    local = datetime.fromtimestamp(now, ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    assert window.active(now) is any(b <= minute < e for b, e in spans)


WEEKDAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]


@settings(max_examples=300)
@given(ZONES, st.integers(0, 6), st.integers(0, 6), INSTANTS)
def test_a_weekdays_only_window_follows_the_local_day(
    zone: str, first: int, last: int, now: int
) -> None:
    first, last = min(first, last), max(first, last)
    window = MuteWindow("w", weekdays=[f"{WEEKDAYS[first]}:{WEEKDAYS[last]}"], location=zone)
    local_day = WEEKDAYS[(datetime.fromtimestamp(now, ZoneInfo(zone)).weekday() + 1) % 7]
    assert window.active(now) is (local_day in WEEKDAYS[first : last + 1])


def test_muted_by_names() -> None:
    windows = [
        MuteWindow("nights", times=[("00:00", "07:00")]),
        MuteWindow("nights", times=[("22:00", "24:00")]),  # the same name: alternatives
        MuteWindow("weekends", weekdays=["saturday", "sunday"]),
    ]
    saturday_night = at(2026, 3, 7, 23)
    assert muted_by(windows, None, saturday_night) == ["nights", "weekends"]
    assert muted_by(windows, ["weekends"], saturday_night) == ["weekends"]
    assert muted_by(windows, [], saturday_night) == []
    assert muted_by(windows, None, at(2026, 3, 9, 23)) == ["nights"]
    assert muted_by(windows, None, at(2026, 3, 9, 12)) == []
    with pytest.raises(PolicyError, match="name = 'night' is invalid: one of nights, weekends"):
        muted_by(windows, ["night"], saturday_night)
    with pytest.raises(PolicyError, match="none are set"):
        muted_by([], ["nights"], saturday_night)


# -- inhibition ---------------------------------------------------------------------------

CRITICAL = {"alertname": "checkout_down", "severity": "critical", "route": "/checkout"}
WARNING = {"alertname": "checkout_slow", "severity": "warning", "route": "/checkout"}
RULE = InhibitRule(['severity="critical"'], ['severity="warning"'], equal=["route"])  # type: ignore[list-item]


def test_a_firing_source_inhibits_targets_with_equal_labels() -> None:
    assert inhibited([RULE], [CRITICAL], WARNING)
    assert inhibited_by([RULE], [CRITICAL], WARNING) == CRITICAL
    assert not inhibited([RULE], [], WARNING)  # nothing firing
    assert not inhibited([RULE], [CRITICAL], {**WARNING, "route": "/home"})  # unequal route
    assert not inhibited([RULE], [WARNING], WARNING)  # not a source
    assert not inhibited([RULE], [CRITICAL], CRITICAL)  # not a target
    # A label both lack is equal ("" on both sides), as in Alertmanager.
    assert inhibited([RULE], [{"severity": "critical"}], {"severity": "warning"})
    assert not inhibited([RULE], [{"severity": "critical"}], WARNING)


def test_an_alert_never_inhibits_itself() -> None:
    rule = InhibitRule(['alertname="x"'], ['alertname="x"'], equal=["route"])  # type: ignore[list-item]
    alert = {"alertname": "x", "route": "/a"}
    assert not inhibited([rule], [alert], alert)
    # Alertmanager: a target the source side matches too is not inhibited by
    # a source the target side matches (two alerts matching both sides never
    # inhibit each other).
    assert not inhibited([rule], [{"alertname": "x", "route": "/a", "k": "1"}], alert)
    broad = InhibitRule(['team="ops"'], ['alertname=~".+"'])  # type: ignore[list-item]
    both = {"alertname": "b", "team": "ops"}
    assert not inhibited([broad], [both, {"alertname": "a", "team": "ops"}], both)
    assert inhibited([broad], [{"team": "ops"}], both)  # that source is no target


def test_inhibit_rules_from_mappings_and_their_errors() -> None:
    data = {
        "source_matchers": ['severity="critical"'],
        "target_matchers": ["severity=warning"],
        "equal": ["route"],
    }
    assert inhibit_rule_from_mapping(data) == RULE
    assert inhibit_rule_from_mapping(RULE.to_mapping()) == RULE
    assert inhibit_rule_from_mapping({**data, "equal": None}).equal == ()
    cases = [
        ({"source_matchers": []}, "source_matchers", "at least one matcher"),
        ({"target_matchers": "severity=warning"}, "target_matchers", "a list of matchers"),
        ({"target_matchers": ["severity=~("]}, "target_matchers[0]", "a valid regular"),
        ({"equal": "route"}, "equal", "a list of label names"),
        ({"equal": ["route", "bad-name"]}, "equal", "label names of letters"),
        ({"source": []}, "source", "one of source_matchers, target_matchers, equal"),
    ]
    for changes, field, allowed in cases:
        with pytest.raises(PolicyError) as caught:
            inhibit_rule_from_mapping({**data, **changes}, where="inhibit_rules[2]")
        assert caught.value.field == field
        assert str(caught.value).startswith(f"inhibit rule (inhibit_rules[2]): {field} = ")
        assert allowed in str(caught.value)
    with pytest.raises(PolicyError, match="target_matchers = None is invalid: required"):
        inhibit_rule_from_mapping({"source_matchers": ["a=b"]})


# -- the façade ---------------------------------------------------------------------------


def test_why_muted() -> None:
    policy = NotificationPolicy(
        silences=(silence_from_mapping(SILENCE),),
        mute_windows=(MuteWindow("nights", times=[("22:00", "24:00")]),),
        inhibit_rules=(RULE,),
    )
    labels = {**WARNING, "severity": "error"}
    assert policy.why_muted(labels, [], 1500) == "silenced by deploy-42"
    assert policy.why_muted(labels, [], 2000) is None
    night = at(2026, 3, 9, 23)
    assert policy.why_muted(labels, [], night) == "muted by window nights"
    assert policy.why_muted(labels, [], night, window_names=[]) is None
    assert policy.why_muted(WARNING, [CRITICAL], 0) == "inhibited by checkout_down"
    assert policy.why_muted(WARNING, [{"severity": "critical"}], 0) is None  # unequal route
    nameless = {"severity": "critical", "route": "/checkout"}
    assert policy.why_muted(WARNING, [nameless], 0) == (
        'inhibited by {route="/checkout",severity="critical"}'
    )
    assert NotificationPolicy().why_muted(WARNING, [CRITICAL], 0) is None


def test_policy_checks_its_parts() -> None:
    silence = silence_from_mapping(SILENCE)
    with pytest.raises(PolicyError, match="silences = 'deploy-42' is invalid: unique ids"):
        NotificationPolicy(silences=[silence, silence])  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match=r"mute_windows = .* is invalid: a list of MuteWindow"):
        NotificationPolicy(mute_windows=[{"name": "x"}])  # type: ignore[list-item]
    assert NotificationPolicy(silences=[silence]).silences == (silence,)  # type: ignore[arg-type]
